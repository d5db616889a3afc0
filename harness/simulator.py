"""The runner's side of the beam simulator: draws events, applies them, records the truth.

See ``diehardlab.harness.beam`` for the physics (Poisson times in beam-on kernel time) and the files it writes. Here the
events meet the real loop: ``corrupt``/``nan`` change one image's outputs of the iteration through
``diehardlab.hardening.faults.corrupt`` before the comparison (which must catch them), ``strike`` reruns the
iteration's affected batches with a fault inside the network (``diehardlab.harness.strike``; the runner hands the
simulator its network through ``bind``), ``crash`` kills the process with SIGKILL and ``hang`` stops the loop for
good, deaf to SIGTERM. Nothing is written to the DUT log about an
event: the log must show only what a real beam would leave in it. The truth file says what happened.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diehardlab.harness.beam import (
    BeamSpec,
    ChipirLog,
    PoissonSchedule,
    TruthFile,
    beam_on,
    iso_utc,
    load_spec,
    run_seed,
)
from diehardlab.harness.compare import GoldenCompare, Mismatch

from diehardlab.errors import ConfigError
from diehardlab.formats.writer import LogWriter

# The runner's network as it is now: the model, the golden input batches, the comparison (golden, threshold).
Network = Callable[[], tuple[torch.nn.Module, list[torch.Tensor], GoldenCompare]]
# At most this many events act on one iteration. More means the spec saturates the device (every iteration is
# hit many times over); the rest of such an iteration's events are skipped, counted in the truth file, so that
# a huge cross section costs bounded time and memory per iteration and SIGTERM is still seen.
MAX_EVENTS_PER_ITERATION = 64
# A spec that keeps saturating measures nothing (one #SDC per iteration, whatever the cross section): after this
# many saturated iterations the run stops with an error naming the spec, before the truth file grows without end.
MAX_SATURATED_ITERATIONS = 10


@dataclass
class _Pending:
    rec: dict[str, Any]
    batch: int
    img: int
    out: torch.Tensor
    mask: torch.Tensor


class BeamSimulation:
    """The runner's beam hook (``diehardlab.harness.runner.BeamHook``) for a simulated beam."""

    def __init__(self, spec: BeamSpec, spec_path: Path):
        from diehardlab.hardening.faults import FaultSpec

        self.spec = spec
        self.spec_path = spec_path
        self.label = spec.beam.name
        c, n = spec.corrupt, spec.nan
        self.corrupt_spec = FaultSpec(kind=c.kind, value="magnitude", magnitude=tuple(c.magnitude), p=c.p)
        self.nan_spec = FaultSpec(kind=n.kind, value=n.value)
        self.pending: list[_Pending] = []
        self.beam_on_kt = 0.0
        self.kt = 0.0
        self.network: Network | None = None
        self.strikes: Any = None  # diehardlab.harness.strike.NetworkStrikes, when the spec has strike events
        self.pending_strikes: list[list[Any]] = []  # [record, Strike, the iteration's outputs (once applied)]
        self.calibration: dict[str, Any] = {}  # P(sdc), P(critical) per strike, measured in bind()

    @classmethod
    def from_file(cls, path: str | Path) -> BeamSimulation:
        return cls(load_spec(path), Path(path))

    def bind(self, network: Network, log_dir: Path) -> None:
        """The runner's network, for strikes inside it. Called before the first log line is written: the
        strike calibration runs here, inside the watchdog's start-up allowance, not its liveness timeout."""
        self.network = network
        if self.spec.cross_section_cm2.strike > 0:
            self._calibrate_strikes(Path(log_dir))

    def start(self, writer: LogWriter, benchmark: str, hostname: str) -> None:
        self.writer = writer
        self.t_start = time.time()
        log_dir = writer.path.parent
        pattern = f"*_{benchmark}_ECC_*_{hostname}.log.truth.json"
        self.run_index = len([p for p in log_dir.glob(pattern) if p.name != writer.path.name + ".truth.json"])
        self.seed = run_seed(self.spec, self.run_index, hostname, benchmark)
        self.schedule = PoissonSchedule(self.spec.rates(), self.seed)
        self.gen = torch.Generator().manual_seed(self.seed)
        self.truth = TruthFile(writer.path, self.spec, str(self.spec_path), self.seed, self.run_index)
        self.truth.doc.update(event_cap_per_iteration=MAX_EVENTS_PER_ITERATION, saturated_iterations=0,
                              events_skipped_expected=0.0)  # fmt: skip
        self.facility = ChipirLog(writer.path, self.spec.beam, self.t_start)
        writer.log_info_detail(
            f"SIMULATED BEAM (not a real beam) spec:{self.spec_path.name} name:{self.label} "
            f"flux:{self.spec.beam.flux_n_cm2_s:g} seed:{self.seed} run:{self.run_index} "
            f"truth:{self.truth.path.name} facility:{self.facility.path.name}"
        )
        if self.spec.cross_section_cm2.strike > 0:
            if self.strikes is None:
                raise ConfigError(f"{self.spec_path}: strike events need the runner's network (diehard run binds it)")
            self.strikes.gen = self.gen  # the run's strikes draw from the run's seed
            cs = self.spec.cross_section_cm2
            doc = self.calibration
            true = self.truth.doc["true_sigma_cm2"]
            true["sdc"] = cs.corrupt + cs.nan + cs.strike * doc["p_sdc"]
            if cs.corrupt == 0:
                # A NaN or Inf output is always a critical SDC (a non-finite row); a strike's share was measured.
                # Output corruption by magnitude has no known critical share, so with it the split is not given.
                true["sdc_critical"] = cs.nan + cs.strike * doc["p_critical"]
                true["sdc_tolerable"] = cs.strike * (doc["p_sdc"] - doc["p_critical"])
            self.truth.doc["strike_calibration"] = doc
            self.truth.save()

    def _calibrate_strikes(self, folder: Path) -> None:
        """Measure P(SDC | strike) and P(critical | strike) on this model and golden, or reuse the measurement of
        an earlier run of the same model (cached in the log folder)."""
        from diehardlab.harness.strike import NetworkStrikes, cached_calibration, calibration_key, save_calibration

        model, batches, compare = self.network()
        # One calibration per model and spec, whatever the run: the truth is the same for every run of a model.
        cal_seed = self.spec.seed if self.spec.seed is not None else int.from_bytes(os.urandom(8), "big") >> 1
        self.strikes = NetworkStrikes(self.spec.strike, model, batches[0], torch.Generator().manual_seed(cal_seed))
        key = calibration_key(model, batches, compare.threshold, self.spec.strike, cal_seed)
        doc = cached_calibration(folder, key)
        if doc is None:
            t0 = time.perf_counter()
            cal = self.strikes.calibrate(
                model, batches, compare.golden, compare.threshold, torch.Generator().manual_seed(cal_seed)
            )
            cal.key, cal.seconds = key, round(time.perf_counter() - t0, 3)
            doc = cal.to_dict()
            try:  # only a cache: an unwritable log folder is the runner's to report, with its own message
                folder.mkdir(parents=True, exist_ok=True)
                save_calibration(folder, doc)
            except OSError:
                pass
        self.calibration = doc

    # -- per iteration ------------------------------------------------------------------------------------

    def inject(self, outs: list[torch.Tensor], kt: float, iteration: int) -> list[torch.Tensor]:
        now = time.time()
        self.kt += kt
        if not beam_on(self.spec.beam, now - kt):  # the beam state when the iteration started
            return outs
        self.beam_on_kt += kt
        events = self.schedule.pop_until(self.beam_on_kt, MAX_EVENTS_PER_ITERATION)
        if not events:
            return outs
        if self.schedule.saturated != self.truth.doc["saturated_iterations"]:
            self._saturated(kt)
        outs = list(outs)
        acc = self.writer.acc_time + kt  # the AccTime of this iteration's #IT/#SDC line
        for ev in events:
            rec: dict[str, Any] = {
                "time_utc": iso_utc(now),
                "kernel_time_s": round(ev.kernel_time_s, 9),
                "acc_time_s": round(acc, 9),
                "iteration": iteration,
                "sdc_ite": iteration + 1,  # libLogHelper numbers an #SDC with the next iteration
                "kind": ev.kind,
            }
            if ev.kind in ("corrupt", "nan"):
                b = int(torch.randint(len(outs), (1,), generator=self.gen))
                n = outs[b].shape[0]
                img = int(torch.randint(n, (1,), generator=self.gen))
                select = torch.zeros(n, dtype=torch.bool)
                select[img] = True
                spec = self.corrupt_spec if ev.kind == "corrupt" else self.nan_spec
                from diehardlab.hardening.faults import corrupt

                new, mask = corrupt(outs[b], spec, self.gen, select)
                outs[b] = new
                rec.update(batch=b, img=img, elements=int(mask.sum()))
                self.pending.append(_Pending(rec, b, img, new, mask))
            elif ev.kind == "strike":
                self.pending_strikes.append([rec, self.strikes.draw([len(o) for o in outs]), None])
            else:
                self._due(rec, now)
        fresh = [p for p in self.pending_strikes if p[2] is None]
        if fresh:
            model, batches, _ = self.network()
            outs = self.strikes.apply([p[1] for p in fresh], model, batches, outs)
            for p in fresh:
                p[0]["strike"] = p[1].record()
                p[2] = outs
        return outs

    def observed(self, iteration: int, mm: Mismatch | None, compare: GoldenCompare) -> None:
        """After the comparison: what the runner saw of this iteration's corrupt/nan events, and what this
        iteration's strikes did to the outputs (the simulator's own comparison with the golden: the truth)."""
        if self.pending_strikes:
            from diehardlab.harness.strike import judge

            for rec, strike, outs in self.pending_strikes:
                rows = None if strike.target == "weight_bit" else {strike.batch: [strike.img]}
                o = judge(outs, compare.golden, compare.threshold, rows)
                rec.update(observed="sdc" if o.differs else "masked", critical=o.critical, images=o.images)
                self.truth.events.append(rec)
            self.pending_strikes = []
            if not self.pending:
                self.truth.save(self.beam_on_kt, self.kt)
        if not self.pending:
            return
        golden, thr = compare.golden, compare.threshold
        critical = {(d.batch, d.img) for d in mm.images if d.critical} if mm is not None else set()
        for p in self.pending:
            bad = ~(torch.abs(p.out - golden[p.batch]) <= thr) & p.mask
            changed = bool(bad.any())
            p.rec["observed"] = "sdc" if changed else "masked"
            p.rec["critical"] = changed and (p.batch, p.img) in critical
            self.truth.events.append(p.rec)
        self.pending = []
        self.truth.save(self.beam_on_kt, self.kt)

    def tick(self) -> None:
        if self.facility.advance(time.time()):
            self.truth.save(self.beam_on_kt, self.kt)

    def finish(self, stop_reason: str | None) -> None:
        self.facility.close(time.time())
        self.truth.doc["ended"] = stop_reason or "abort"
        self.truth.save(self.beam_on_kt, self.kt)

    def _saturated(self, kt: float) -> None:
        # In the truth file: the DUT log shows only what a real beam would leave in it, and stderr is what NVBitFI
        # compares (one saturated iteration is how its test makes an iteration certain to be hit).
        self.truth.doc["saturated_iterations"] = self.schedule.saturated
        self.truth.doc["events_skipped_expected"] = self.schedule.skipped_expected
        if self.schedule.saturated >= MAX_SATURATED_ITERATIONS:
            per_iteration = sum(self.spec.rates().values()) * kt
            raise ConfigError(
                f"--simulate-beam {self.spec_path}: {self.schedule.saturated} iterations had more than "
                f"{MAX_EVENTS_PER_ITERATION} events each (about {per_iteration:.3g} per iteration): the spec "
                "saturates the device and measures nothing; lower the cross sections or the flux"
            )

    # -- crash and hang -----------------------------------------------------------------------------------

    def _due(self, rec: dict[str, Any], now: float) -> None:
        rec["observed"] = "due"
        for p in self.pending:  # outputs of this iteration that nobody will ever compare
            p.rec["observed"] = "due"
            p.rec["critical"] = False
            self.truth.events.append(p.rec)
        self.pending = []
        for p in self.pending_strikes:
            p[0].update(observed="due", critical=False)
            self.truth.events.append(p[0])
        self.pending_strikes = []
        self.truth.events.append(rec)
        self.truth.doc["ended"] = rec["kind"]
        self.truth.save(self.beam_on_kt, self.kt)
        self.facility.close(now)
        if rec["kind"] == "crash":
            # A real crash: no #END, no flush beyond what the kernel already has, exit by signal.
            os.kill(os.getpid(), signal.SIGKILL)
        # A real hang: no more iterations, lines or heartbeats, and SIGTERM does nothing (the watchdog must
        # kill the process group).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while True:
            time.sleep(3600)
