"""``diehard run``: the inference loop that runs on the device under test, in the beam, for days.

Each iteration: forward every golden batch, synchronize (KerTime = forward + sync), compare with the golden
outputs on the device (one bool crosses to the host), write ``#IT`` every ``interval`` iterations. A faulty
iteration is explained on the host (``#ERR`` lines in the diehardnet form, one ``#SDC``), then the weights
and the inputs are reloaded from disk so a corrupted parameter cannot turn one upset into an endless run of
SDCs. Every line is streamed to the server when ``--server`` is given, and an extended heartbeat datagram
goes out when nothing was sent for ``--heartbeat`` seconds. SIGTERM (or SIGINT) ends the run cleanly:
``#INF STOP reason:...``, ``#END``, exit 0.

With ``--simulate-beam SPEC`` the beam simulator (``diehardlab.harness.beam``) injects events; with ``--once`` one
iteration runs and a deterministic summary is printed for NVBitFI (``diehardlab.harness.nvbitfi``).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from diehardlab.harness.compare import GoldenCompare, Mismatch
from diehardlab.harness.device import detect_ecc, device_name, parse_ecc_flag, pick_device, synchronize
from diehardlab.harness.golden import check_golden_matches, forward_batches, load_golden, split_batches
from diehardlab.harness.options import RunOptions, check_options

from diehardlab.errors import ConfigError, DiehardError
from diehardlab.formats.datagram import DatagramSender, decode_key
from diehardlab.formats.filename import HOSTNAME, PLAIN_NAME, name_problem
from diehardlab.formats.writer import BenchmarkAborted, LogWriteError, LogWriter
from diehardlab.outfiles import cannot_write, check_out_dir

_NAME_OK = re.compile(r"^[A-Za-z0-9.-][A-Za-z0-9._-]{0,63}$")


def read_key(path: Path) -> bytes:
    """A datagram key file written for this DUT: hex (as the server writes it) or raw bytes; owner-only."""
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--key-file {path}: cannot read it ({exc.strerror})") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"--key-file {path}: readable by others (mode {stat.S_IMODE(st.st_mode):o}); chmod 600 {path}"
        )
    try:
        return decode_key(data)
    except ValueError as exc:
        raise ConfigError(f"--key-file {path}: {exc}") from exc


def parse_server(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--server {value!r}: expected HOST:PORT, e.g. 192.168.1.10:1024")
    return host.strip("[]"), int(port)


class BeamHook(Protocol):
    """What the loop calls on a beam that acts on it (the simulator, ``diehardlab.harness.simulator``).

    The runner owns the loop and is handed a hook; the hook never sees the runner, only what each call gives it.
    """

    label: str  # goes into the log's #HEADER, so every log of a simulated run says so

    def bind(
        self, network: Callable[[], tuple[torch.nn.Module, list[torch.Tensor], GoldenCompare]], log_dir: Path
    ) -> None:
        """Called at the end of ``prepare``, before the first log line: the network as it is at each call
        (model, golden input batches, comparison), for a beam that strikes inside it, and the log folder."""

    def start(self, writer: LogWriter, benchmark: str, hostname: str) -> None: ...

    def inject(self, outs: list[torch.Tensor], kt: float, iteration: int) -> list[torch.Tensor]: ...

    def observed(self, iteration: int, mm: Mismatch | None, compare: GoldenCompare) -> None: ...

    def tick(self) -> None: ...

    def finish(self, stop_reason: str | None) -> None: ...


class Runner:
    """One run of the loop. ``prepare()`` loads everything; ``run()`` opens the log and iterates.

    ``beam`` (optional) acts on each iteration's outputs: the beam simulator, handed in by ``diehard run``.
    """

    def __init__(self, opts: RunOptions, beam: BeamHook | None = None):
        self.o = opts
        self.stop_reason: str | None = None
        self.writer: LogWriter | None = None
        self.sender: DatagramSender | None = None
        self.sim = beam
        self.reloads = 0
        self.sdc_iterations = 0
        self.last_mismatch: Mismatch | None = None
        self.last_outputs: list[torch.Tensor] = []

    # -- setup ----------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        from diehardlab.hardening.checkpoint import load_model

        o = self.o
        # Names that become path components (here and in the server's folders) are checked before anything runs.
        for option, value, pattern in (("--hostname", o.hostname, HOSTNAME), ("--dut", o.dut, PLAIN_NAME)):
            problem = name_problem(value, pattern) if value is not None else None
            if problem:
                raise ConfigError(f"{option} {value!r}: {problem}")
        check_options(o)
        if o.threads:
            torch.set_num_threads(o.threads)
        parse_ecc_flag(o.ecc)
        self.dev = pick_device(o.device)
        self.golden_rec = load_golden(o.golden)
        self.loaded = load_model(o.ckpt_dir, self.dev)
        check_golden_matches(self.golden_rec, o.golden, self.loaded.model_hash, o.ckpt_dir)
        self.numerics = self._apply_numerics()
        shape = tuple(self.golden_rec["inputs"].shape)
        if shape[1] != self.loaded.in_channels or self.golden_rec["outputs"].shape[1] != self.loaded.num_classes:
            raise ConfigError(f"{o.golden}: inputs {shape} / outputs do not fit the model in {o.ckpt_dir}")
        self.model = self.loaded.model
        # Both checked already: --threshold by check_options, the golden file's by load_golden.
        self.threshold = float(self.golden_rec["threshold"] if o.threshold is None else o.threshold)
        self._load_tensors(self.golden_rec)
        # One untimed forward: lazy initialisation (kernel selection, JIT, allocator) must not be KerTime.
        forward_batches(self.model, self.batches)
        synchronize(self.dev)
        self.ecc = detect_ecc(o.ecc, self.dev)
        self.hostname = o.hostname or socket.gethostname().split(".")[0]
        self.benchmark = o.benchmark or _default_benchmark(self.loaded, Path(o.ckpt_dir))
        for what, value in (("--hostname", self.hostname), ("--benchmark", self.benchmark)):
            if not _NAME_OK.match(value) or "_ECC_" in value:
                raise ConfigError(
                    f"{what} {value!r}: use letters, digits, '.', '-' and '_' (it goes in the log file name)"
                )
        if "_" in self.hostname:
            raise ConfigError(f"--hostname {self.hostname!r}: no '_' (log file names split the host on it)")
        if o.server:
            host, port = parse_server(o.server)
            key = read_key(Path(o.key_file)) if o.key_file else None
            dut = o.dut or self.hostname
            extended = key is not None or o.extended
            try:
                self.sender = DatagramSender(host, port, self.ecc.enabled, dut if extended else None, key)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"--server {o.server}: {exc}") from exc
        if self.sim is not None:  # before the first line: a slow hook set-up is start-up time, not a hang
            self.sim.bind(self.network, Path(o.log_dir))

    def _apply_numerics(self):
        """Compute in the golden file's arithmetic; another --numerics would turn every iteration into an SDC."""
        from diehardlab.hardening.numerics import apply_numerics, parse_numerics

        rec = self.golden_rec.get("numerics")
        made_in = rec.get("policy", "fp32") if isinstance(rec, dict) else "fp32"
        policy = parse_numerics(self.o.numerics or made_in)
        if policy.spec() != parse_numerics(made_in).spec():
            raise ConfigError(
                f"--numerics {self.o.numerics}: the golden file {self.o.golden} was made in numerics {made_in}; "
                f"run with --numerics {made_in!r} or make a golden with "
                f"'diehard golden ... --numerics {self.o.numerics}'"
            )
        return apply_numerics(self.loaded.model, policy, self.dev)

    def _load_tensors(self, rec: dict[str, Any]) -> None:
        bs = int(rec["batch_size"])
        self.batches = [b.to(self.dev) for b in split_batches(rec["inputs"].float(), bs)]
        golden = [g.to(self.dev) for g in split_batches(rec["outputs"].float(), bs)]
        top1 = split_batches(rec["topk"][:, 0], bs)
        labels = split_batches(rec["labels"], bs)
        self.compare = GoldenCompare(golden, top1, labels, self.threshold)

    def reload(self) -> float:
        """Weights from model.pt and inputs/golden outputs from the golden file: device memory may be corrupted."""
        from diehardlab.hardening.checkpoint import MODEL, load_state_into

        t0 = time.perf_counter()
        load_state_into(self.model, Path(self.o.ckpt_dir) / MODEL, self.dev)
        self._load_tensors(load_golden(self.o.golden))
        synchronize(self.dev)
        self.reloads += 1
        return time.perf_counter() - t0

    def header(self) -> str:
        rec, cfg = self.golden_rec, self.loaded.config
        model = cfg.get("model", {})
        parts = [
            f"checkpoint:{Path(self.o.ckpt_dir).resolve().name}",
            f"arch:{model.get('arch', '?')}",
            f"activation:{model.get('activation', '?')}",
            f"order:{model.get('order', '?')}",
            *([f"hardening:{cfg['hardening']['recipe']['name']}"] if cfg.get("hardening") else []),
            f"dataset:{rec.get('dataset', self.loaded.dataset)}",
            f"images:{rec['inputs'].shape[0]}",
            f"batch_size:{rec['batch_size']}",
            f"threshold:{self.threshold:g}",
            f"model_sha256:{self.loaded.model_hash[:16]}",
            f"device:{device_name(self.dev).replace(' ', '-')}",
            f"torch:{torch.__version__}",
            f"numerics:{self.numerics.policy.spec()}",
        ]
        if self.sim is not None:
            parts.append(f"SIMULATED-BEAM:{self.sim.label}")
        return " ".join(parts)

    # -- the loop -------------------------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stop_reason = signal.Signals(signum).name

    def open_log(self) -> LogWriter:
        o = self.o
        check_out_dir(o.log_dir, "--log-dir")
        try:
            self.writer = LogWriter(
                o.log_dir,
                self.benchmark,
                self.header(),
                ecc=self.ecc.enabled,
                hostname=self.hostname,
                interval=o.interval,
                max_errors_per_iter=o.max_errors_per_iter,
                double_error_kill=o.double_error_kill,
                sinks=[self.sender] if self.sender else [],
            )
        except LogWriteError as exc:
            raise ConfigError(f"--log-dir {o.log_dir}: {exc}") from None
        except OSError as exc:
            raise cannot_write("--log-dir", o.log_dir, exc) from None
        w = self.writer
        try:
            w.log_info_detail(
                f"device:{self.dev} name:{device_name(self.dev)} ecc:{'ON' if self.ecc.enabled else 'OFF'} "
                f"ecc_source:{self.ecc.source} {self.ecc.detail}".rstrip()
            )
            w.log_info_detail(
                f"golden:{Path(o.golden).resolve()} made_on:{self.golden_rec.get('device_name', '?')} "
                f"torch:{self.golden_rec.get('torch_version', '?')} reload_after_sdc:{'on' if o.reload else 'off'}"
            )
            if self.sim is not None:
                self.sim.start(w, self.benchmark, self.hostname)
        except LogWriteError as exc:
            raise ConfigError(f"--log-dir {o.log_dir}: {exc}") from None
        except OSError as exc:  # the simulator's truth and facility files beside the log
            raise cannot_write("--log-dir", exc.filename or o.log_dir, exc) from None
        return w

    def network(self) -> tuple[torch.nn.Module, list[torch.Tensor], GoldenCompare]:
        """The model, the golden input batches and the comparison as they are now (a reload replaces them)."""
        return self.model, self.batches, self.compare

    def run(self) -> int:
        """Open the log, iterate, end the log.

        A failure during the loop that is not the device's (the log's disk full or its file gone, the beam
        simulator refusing its spec, ``model.pt`` unreadable at a reload) stops the run cleanly: the file keeps
        its whole lines, ``#INF STOP reason:...`` and ``#END`` follow (in the server's copy at least), and a
        ``ConfigError`` says why (exit 2). A libLogHelper ``#ABORT`` propagates as before.
        """
        handlers = {}
        if threading_main():
            for sig in (signal.SIGTERM, signal.SIGINT):
                handlers[sig] = signal.signal(sig, self._on_signal)
        failure: DiehardError | None = None
        stop_detail = ""
        try:
            w = self.open_log()
            try:
                self.loop(w)
            except BenchmarkAborted:
                raise
            except LogWriteError as exc:
                failure, self.stop_reason = exc, "log-write-failed"
                stop_detail = os.strerror(exc.errno) if exc.errno else ""
            except OSError as exc:  # the beam simulator's files beside the log: the same disk, the same fault
                failure, self.stop_reason = (
                    cannot_write("--log-dir", exc.filename or self.o.log_dir, exc),
                    "log-write-failed",
                )
                stop_detail = exc.strerror or ""
            except DiehardError as exc:
                failure, self.stop_reason, stop_detail = exc, "error", str(exc)
            finally:  # also after a libLogHelper #ABORT: the truth file says how the run ended
                if self.sim is not None:
                    try:
                        self.sim.finish(self.stop_reason)
                    except OSError as exc:
                        failure = failure or cannot_write("--log-dir", exc.filename or self.o.log_dir, exc)
            try:
                self._summary(w)
                if self.stop_reason and self.stop_reason not in ("iterations", "duration", "once"):
                    w.log_stop(f"{self.stop_reason} ({stop_detail})" if stop_detail else self.stop_reason)
                else:
                    w.end_log_file()
            except LogWriteError as exc:
                failure = failure or exc
            self._report_notices(w)
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
            if self.writer is not None:
                self.writer.close()
            if self.sender is not None:
                self.sender.close()
        if failure is not None:
            what = "the run stopped" + (" (the server's copy has the rest and #END)" if self.sender else "")
            if isinstance(failure, LogWriteError):
                raise ConfigError(
                    f"--log-dir {self.o.log_dir}: {failure}; {what}. Free space there or choose another --log-dir"
                )
            raise ConfigError(f"{failure}; {what}")
        return 0

    def _report_notices(self, w: LogWriter) -> None:
        while w.notices:
            print(f"diehard run: warning: {w.notices.pop(0)}", file=sys.stderr, flush=True)

    def _summary(self, w: LogWriter) -> None:
        wall = time.monotonic() - self._t_start
        w.log_info_detail(
            f"summary iterations:{w.iteration} kernel_s:{w.acc_time:.6f} wall_s:{wall:.6f} "
            f"sdc_iterations:{self.sdc_iterations} reloads:{self.reloads} stop:{self.stop_reason or 'end'}"
        )

    def loop(self, w: LogWriter) -> None:
        """Iterate until a stop condition (signal, --iterations, --duration, --once); the log stays open."""
        o = self.o
        model, batches, compare, dev = self.model, self.batches, self.compare, self.dev
        sender = self.sender if self.sender is not None and self.sender.dut is not None else None
        sim = self.sim
        max_iters = 1 if o.once else o.iterations
        deadline = None if o.duration_s is None else time.monotonic() + o.duration_s
        hb = o.heartbeat_s
        self._t_start = next_status = time.monotonic()
        next_status += o.status_every_s
        cuda = dev.type == "cuda"
        with torch.inference_mode():
            while True:
                if self.stop_reason is not None:
                    break
                if max_iters is not None and w.iteration >= max_iters:
                    self.stop_reason = "once" if o.once else "iterations"
                    break
                t0 = time.perf_counter()
                outs = [model(x) for x in batches]
                if cuda:
                    torch.cuda.synchronize(dev)
                kt = time.perf_counter() - t0
                if sim is not None:
                    outs = sim.inject(outs, kt, w.iteration)
                ok = compare.matches(outs)
                it = w.iteration
                w.end_iteration(kt)
                if o.once:
                    self.last_outputs = outs
                if not ok:
                    self._faulty(w, outs, it)
                    model, batches, compare = self.model, self.batches, self.compare
                elif sim is not None:
                    sim.observed(it, None, compare)
                now = time.monotonic()
                if sender is not None and now - sender.last_sent >= hb:
                    try:
                        sender.heartbeat()
                    except OSError:
                        w.sink_failures += 1
                if deadline is not None and now >= deadline:
                    self.stop_reason = "duration"
                if now >= next_status:
                    next_status = now + o.status_every_s
                    w.log_info_detail(
                        f"status Ite:{w.iteration} AccTime:{w.acc_time:.7f} WallTime:{now - self._t_start:.3f}"
                    )
                if sim is not None:
                    sim.tick()
                if w.notices:
                    self._report_notices(w)

    def _faulty(self, w: LogWriter, outs: list[torch.Tensor], it: int) -> None:
        mm = self.compare.explain(outs)
        self.last_mismatch = mm
        if self.sim is not None:
            self.sim.observed(it, mm, self.compare)
        if mm.errors == 0:  # the outputs changed back between the two reads: say so, count nothing
            w.log_info_detail(f"transient mismatch Ite:{it} not reproducible on the host")
            return
        self.sdc_iterations += 1
        for d in mm.images:
            if d.critical:
                w.log_critical(d.batch, d.img, 0, d.golden_label, d.output_label, d.ground_truth)
            for i, g, out in d.elements:
                w.log_element(d.batch, d.img, i, g, out)
        try:
            w.log_error_count(mm.errors)
        finally:
            if self.o.reload and not self.o.once:
                took = self.reload()
                if not w.ended:
                    w.log_info_detail(f"reload weights and inputs after Ite:{it} took_s:{took:.4f}")


def threading_main() -> bool:
    return threading.current_thread() is threading.main_thread()


def _default_benchmark(loaded: Any, ckpt_dir: Path) -> str:
    model = loaded.config.get("model", {})
    name = f"diehard-{model.get('arch', 'model')}-{loaded.dataset}-{ckpt_dir.resolve().name}"
    return re.sub(r"[^A-Za-z0-9.-]", "-", name)[:64]
