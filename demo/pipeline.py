"""``diehard demo``: a complete simulated beam campaign on one machine, in minutes, without a beam.

The whole product chain, each step the real command a user would run, in its own process:

1. train a baseline and a DieHardNet model on the embedded dataset (scikit-learn's digits);
2. measure their regret under injected block errors (``diehard evaluate``);
3. generate their goldens (``diehard golden``);
4. write a campaign file: two simulated DUTs on the local transport, one per model, a simulated power
   switch;
5. serve it (``diehard serve``): each DUT runs ``diehard run --simulate-beam``, whose particles strike inside
   the network (a feature-map value or block, a weight bit: both models see the same strikes, and how many
   become critical SDCs is what hardening changes), write NaNs, really crash and really hang, until the
   watchdog has restarted an app, recovered a hang and power-cycled a board;
6. analyse the server copies and the DUTs' own logs with the campaign's facility log (``diehard fit``);
7. write the report, with the true simulated rates beside the measured ones (``diehard report``): the
   critical-SDC FIT of DieHardNet against the baseline's, each with its interval and the simulator's truth.

Every step records its state in ``OUT/demo.json``; a second run into the same folder resumes after the
last finished step (redoing an interrupted one from scratch, so outputs never mix) or, when the demo
finished, refuses. Every output says it comes from a simulated beam.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from diehardlab import __version__
from diehardlab.cli import make_parser
from diehardlab.errors import DataError, DiehardError
from diehardlab.outfiles import write_text_atomic

STATE = "demo.json"
LABEL = "SIMULATED BEAM (diehard demo): no neutron beam was used; rates are known by construction."


@dataclass(frozen=True)
class Budget:
    """How much work each step does; ``--quick`` fits in a minute on 2 cores, the full demo in five."""

    mode: str
    epochs: int
    eval_campaigns: int
    golden_samples: int
    serve_s: float  # the simulated beam runs at least this long...
    serve_max_s: float  # ...and until the watchdog has shown each of its actions, at most this long
    beam_spec: str

    @staticmethod
    def for_mode(quick: bool) -> Budget:
        if quick:
            return Budget("quick", epochs=3, eval_campaigns=2, golden_samples=32, serve_s=10.0, serve_max_s=60.0,
                          beam_spec="demo-quick")  # fmt: skip
        return Budget("full", epochs=12, eval_campaigns=5, golden_samples=64, serve_s=150.0, serve_max_s=240.0,
                      beam_spec="demo-full")  # fmt: skip


def repo_root() -> Path:
    """Where ``setups/`` lives: the source tree this package runs from (``pip install -e .``)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "setups").is_dir():
        raise DataError(
            f"{root / 'setups'}: not found. The demo uses the model and beam configurations in setups/; "
            "run it from a clone of the repository installed with 'pip install -e .'"
        )
    return root


class Demo:
    def __init__(
        self, out: Path, budget: Budget, seed: int, echo: Callable[[str], None] = print, dashboard: str = "127.0.0.1:0"
    ):
        self.out = out
        self.budget = budget
        self.seed = seed
        self.dashboard = dashboard
        self.echo = echo
        self.root = repo_root()
        self.state: dict = {}
        self.t0 = time.monotonic()

    # --- state: refuse or resume, never mix -------------------------------------------------------------

    def open(self) -> None:
        state_file = self.out / STATE
        if state_file.exists():
            try:
                state = json.loads(state_file.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise DiehardError(f"{state_file}: unreadable ({exc}); choose another --out folder") from exc
            if state.get("finished"):
                raise DiehardError(
                    f"{self.out} already holds a finished demo (report: {state.get('report')}). "
                    "Choose another --out folder, or delete this one to run it again."
                )
            if state.get("budget", {}).get("mode") != self.budget.mode or state.get("seed") != self.seed:
                raise DiehardError(
                    f"{self.out} holds an unfinished demo run with other settings "
                    f"(mode {state.get('budget', {}).get('mode')}, seed {state.get('seed')}); resume it with the "
                    "same options, or choose another --out folder"
                )
            self.state = state
            done = [s for s, v in state["steps"].items() if v.get("done")]
            self.echo(f"resuming the demo in {self.out}: done already: {', '.join(done) or 'nothing'}")
        else:
            if self.out.exists() and any(self.out.iterdir()):
                raise DiehardError(
                    f"{self.out} exists and is not a demo folder (no {STATE}); choose an empty or new --out folder"
                )
            self.out.mkdir(parents=True, exist_ok=True)
            self.state = {
                "diehardlab_version": __version__,
                "python": sys.version.split()[0],
                "budget": asdict(self.budget),
                "seed": self.seed,
                "steps": {},
                "finished": False,
                "simulated": True,
            }
            self.save()

    def save(self) -> None:
        write_text_atomic(self.out / STATE, json.dumps(self.state, indent=2, default=str) + "\n", "--out")

    # --- steps --------------------------------------------------------------------------------------------

    def step(self, index: int, total: int, name: str, outputs: Sequence[Path], body: Callable[[], str]) -> None:
        info = self.state["steps"].get(name, {})
        if info.get("done"):
            self.echo(f"[{index}/{total}] {name}: done in an earlier run ({info.get('summary', '')})")
            return
        for p in outputs:  # an interrupted step is redone from scratch: its partial outputs go
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        self.echo(f"[{index}/{total}] {name} ...")
        self.state["steps"][name] = {"done": False, "started_s": round(time.monotonic() - self.t0, 2)}
        self.save()
        t = time.monotonic()
        summary = body()
        secs = time.monotonic() - t
        self.state["steps"][name] = {"done": True, "seconds": round(secs, 2), "summary": summary}
        self.save()
        self.echo(f"[{index}/{total}] {name}: {summary} ({secs:.1f} s; {time.monotonic() - self.t0:.0f} s so far)")

    def diehard_many(self, name: str, jobs: Sequence[tuple[Sequence[str], str]], timeout: float) -> None:
        """Run several ``diehard`` commands side by side (one per model), each logging to its own file."""
        logs = self.out / "logs"
        logs.mkdir(exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        procs = []
        try:
            for args, log in jobs:
                f = open(logs / log, "w")  # noqa: SIM115 - closed below, after the process ends
                f.write("$ diehard " + " ".join(args) + "\n")
                f.flush()
                cmd = [sys.executable, "-m", "diehardlab", *args]
                procs.append((args, logs / log, f, subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)))
            deadline = time.monotonic() + timeout
            for args, path, _f, p in procs:
                try:
                    rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired as exc:
                    raise DiehardError(
                        f"step {name!r}: 'diehard {args[0]}' ran past {timeout:.0f} s; see {path}"
                    ) from exc
                if rc != 0:
                    tail = "\n".join(path.read_text(errors="replace").splitlines()[-15:])
                    raise DiehardError(f"step {name!r}: 'diehard {args[0]}' failed (exit {rc}); see {path}:\n{tail}")
        finally:
            for _args, _path, f, p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                f.close()

    def diehard(self, name: str, args: Sequence[str], log: str, timeout: float) -> None:
        """Run one ``diehard ARGS`` as a real subprocess, keeping its output in ``OUT/logs/LOG``."""
        self.diehard_many(name, [(args, log)], timeout)


def main(argv: Sequence[str] | None = None) -> int:
    p = make_parser("demo", __doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("diehard-demo"), help="output folder (default ./diehard-demo)")
    p.add_argument("--quick", action="store_true", help="seconds of beam instead of minutes (under 60 s in all)")
    p.add_argument("--seed", type=int, default=1, help="seed of training, fault injection and the beam (default 1)")
    p.add_argument("--dashboard", default="127.0.0.1:0", metavar="ADDR",
                   help="where the campaign's live dashboard is served while it runs (default 127.0.0.1:0: a free "
                   "port on this machine, printed when it serves)")  # fmt: skip
    a = p.parse_args(argv)
    return run_demo(Demo(a.out.resolve(), Budget.for_mode(a.quick), a.seed, dashboard=a.dashboard))


MODELS = ("baseline", "diehardnet")


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_campaign(demo: Demo, folder: Path) -> Path:
    """The campaign the demo serves: two local DUTs, one per model, a simulated switch, a loopback server."""
    folder.mkdir(parents=True)
    models = demo.out / "models"
    from diehardlab.harness.beam import load_spec

    spec = beam_spec_path(demo)
    flux_factor = load_spec(spec).beam.flux_factor
    lines = [
        "# Written by 'diehard demo'. " + LABEL,
        "[campaign]",
        'name = "diehard-demo"',
        f'description = "{LABEL}"',
        "",
        "[server]",
        'bind = "127.0.0.1"',
        f"udp_port = {_free_udp_port()}",
        'log_dir = "server-logs"',
        'journal = "journal.jsonl"',
        "status_interval_s = 2.0",
        "poll_s = 0.25",
        "",
        "# A short leash, so the watchdog acts within the seconds the demo runs.",
        "[escalation]",
        "max_app_restarts = 3",
        "max_os_reboots = 0",
        "power_off_s = 0.5",
        "max_power_cycles = 3",
        "cool_down_s = 1.0",
        "max_cool_downs = 1",
        "",
        "[[switch]]",
        'name = "bench-switch"',
        'model = "simulated"',
        "outlets = 4",
    ]
    for i, m in enumerate(MODELS, start=1):
        argv = [
            sys.executable, "-m", "diehardlab", "run", str(models / m),
            "--golden", str(models / f"{m}.golden.pt"),
            "--log-dir", "{log_dir}", "--hostname", "{hostname}", "--benchmark", "{benchmark}",
            "--server", "{server_host}:{server_port}", "--dut", "{dut}", "--key-file", "{key_file}",
            "--simulate-beam", str(spec), "--interval", "5", "--heartbeat", "0.5", "--threads", "1",
            # A weight-bit strike can change every output of the iteration (images x 10 classes): one SDC, not
            # libLogHelper's "too many errors" abort (its default 500 is below the golden's output count).
            "--max-errors-per-iter", str(demo.budget.golden_samples * 10),
        ]  # fmt: skip
        lines += [
            "",
            "[[dut]]",
            f'name = "dut-{m}"',
            f'hostname = "sim-{m}"',
            'transport = "local"',
            'switch = "bench-switch"',
            f"outlet = {i}",
            "boot_timeout_s = 30",
            "liveness_timeout_s = 3",
            'ecc = "off"',
            # Signed datagrams; the server draws a fresh key at start and hands it to the local DUT (0600).
            'datagram = "extended"',
            'datagram_key = "generate"',
            "local_boot_s = 0.5",
            'timezone = "UTC"',
        ]
        if m == "diehardnet":
            # This board goes straight to the hardware watchdog, so a short demo shows a power cycle too.
            lines += ["", "[dut.escalation]", "max_app_restarts = 0", "max_os_reboots = 0", "power_off_s = 0.5",
                      "max_power_cycles = 3", "cool_down_s = 1.0", "max_cool_downs = 1"]  # fmt: skip
        lines += [
            "",
            "[[dut.benchmark]]",
            f'name = "DieHardNet{m.capitalize()}"',
            f'model = "{m}"',
            "argv = [" + ", ".join(json.dumps(a) for a in argv) + "]",
            "window_s = 3600",
            "start_timeout_s = 60  # python + torch start-up and model loading, before the first line",
        ]
    lines += [
        "",
        "# The demo writes the campaign's ChipIR-format count log (facility.chipir.txt) as the campaign runs, a row",
        "# every few seconds as a facility does, with the beam spec's factor; the dashboard follows it as it grows.",
        "[facility]",
        'kind = "simulated"',
        f"flux_factor = {flux_factor!r}",
        'timezone = "UTC"',
        'flux_logs = ["facility.chipir.txt"]',
        "",
        "# The live dashboard (diehard serve --dashboard): beam time still needed until each configuration's",
        "# interval lies within +-20 %; the cross sections are recomputed every 10 s.",
        "[dashboard]",
        "target_relative_width = 0.2",
        "refresh_s = 10",
        "",
        "[analysis]",
        'group_by = ["board", "benchmark", "ecc"]',
        "confidence = 0.95",
        "# The simulator draws its events in beam-on kernel time, so the fluence that matches its truth is the",
        "# mean flux times the accumulated kernel time (the reference parsers' definition), not the flux",
        "# integrated over each run's wall-clock window (which includes start-up and comparison time).",
        'fluence = "mean-flux-x-acc-time"',
        "# Each board runs one model here: Fig. 7 normalises both to the DieHardNet board's critical-SDC FIT.",
        "fig7_per = []",
        'fig7_reference = "model=diehardnet"',
    ]
    path = folder / "campaign.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def beam_spec_path(demo: Demo) -> Path:
    return demo.root / "setups" / "beam" / f"{demo.budget.beam_spec}.toml"


def facility_log(demo: Demo, stem: Path, start: float):
    """One ChipIR-format count log for the whole campaign, as a facility keeps it (``STEM.chipir.txt``): rows up
    to now, then the caller ``advance``s it while the campaign runs and ``close``s it at the end.

    The simulated beam is a function of UTC time alone (the same beam trips for every DUT), so the log the
    facility writes during the campaign is the simulator's, extended over that period.
    """
    from diehardlab.harness.beam import ChipirLog, load_spec

    return ChipirLog(stem, load_spec(beam_spec_path(demo)).beam, start)


def run_demo(demo: Demo) -> int:
    b = demo.budget
    demo.open()
    demo.echo(LABEL)
    demo.echo(f"output: {demo.out}  (mode {b.mode}, seed {demo.seed})")
    models = demo.out / "models"
    models.mkdir(exist_ok=True)
    total = 7
    # The two models' steps run side by side, one core each: the demo's budget is the 2-core laptop's.
    one = ["--threads", "1"]

    def train() -> str:
        jobs = []
        for m in MODELS:
            cfg = demo.root / "setups" / "models" / f"digits_{m}.toml"
            jobs.append((["train", "--config", str(cfg), "--epochs", str(b.epochs), "--seed", str(demo.seed),
                          "--out", str(models / m), "--no-progress", *one], f"train-{m}.log"))  # fmt: skip
        demo.diehard_many("train", jobs, timeout=900)
        return "; ".join(f"{m}: {_last_metrics(models / m)}" for m in MODELS)

    demo.step(1, total, "train baseline and DieHardNet", [models / m for m in MODELS], train)

    def evaluate() -> str:
        (demo.out / "evaluate").mkdir()
        jobs = [(["evaluate", str(models / m), "--fault-model", "block", "--campaigns", str(b.eval_campaigns),
                  "--seed", str(demo.seed), "--json", str(demo.out / "evaluate" / f"{m}.json"), *one],
                 f"evaluate-{m}.log") for m in MODELS]  # fmt: skip
        demo.diehard_many("evaluate", jobs, timeout=600)
        out = []
        for m in MODELS:
            r = json.loads((demo.out / "evaluate" / f"{m}.json").read_text())
            out.append(f"{m}: clean {100 * r['clean_accuracy']:.1f} %, regret {100 * r['regret_mean']:.1f} %")
        return "; ".join(out)

    demo.step(2, total, "regret under injected block errors", [demo.out / "evaluate"], evaluate)

    def golden() -> str:
        jobs = [(["golden", str(models / m), "--out", str(models / f"{m}.golden.pt"), "--samples",
                  str(b.golden_samples), "--batch-size", str(b.golden_samples), *one], f"golden-{m}.log")
                for m in MODELS]  # fmt: skip
        demo.diehard_many("golden", jobs, timeout=300)
        return f"{len(MODELS)} goldens of {b.golden_samples} images"

    demo.step(3, total, "goldens", [models / f"{m}.golden.pt" for m in MODELS], golden)

    campaign_dir = demo.out / "campaign"

    def campaign() -> str:
        path = write_campaign(demo, campaign_dir)
        demo.diehard("check", ["serve", "--check", str(path)], "serve-check.log", timeout=60)
        return f"wrote {path.relative_to(demo.out)}"

    demo.step(4, total, "campaign file", [campaign_dir], campaign)

    def serve() -> str:
        facility = facility_log(demo, campaign_dir / "facility", time.time() - 5.0)
        try:
            counts = serve_until_shown(demo, campaign_dir / "campaign.toml", campaign_dir / "journal.jsonl", facility)
        finally:
            facility.close(time.time() + 5.0)
        keys = ("crash-detected", "hang-detected", "app-restart", "power-cycle")
        return ", ".join(f"{k} {counts.get(k, 0)}" for k in keys)

    # A served campaign cannot be resumed half-way into the same folders: redo it (and what follows) whole.
    served = ["server-logs", "local-duts", "journal.jsonl", "journal.status.json", "facility.chipir.txt",
              "simulated-switch-bench-switch.json"]  # fmt: skip
    demo.step(5, total, "simulated beam campaign", [campaign_dir / p for p in served], serve)

    analysis_dir = demo.out / "analysis"

    def fit() -> str:
        args = ["fit", "--campaign", str(campaign_dir / "campaign.toml")]
        for d in (campaign_dir / "server-logs", campaign_dir / "local-duts"):
            args += ["--logs", str(d)]
        args += ["--flux", str(campaign_dir / "facility.chipir.txt"), "--out", str(analysis_dir)]
        demo.diehard("fit", args, "fit.log", timeout=300)
        return f"tables in {analysis_dir.relative_to(demo.out)}"

    demo.step(6, total, "analysis", [analysis_dir], fit)

    report = demo.out / "report.html"

    def build_report() -> str:
        args = ["report", "--fit", str(analysis_dir), "--out", str(report), "--evaluate"]
        args += [str(demo.out / "evaluate" / f"{m}.json") for m in MODELS]
        args += ["--truth", str(campaign_dir / "local-duts")]
        demo.diehard("report", args, "report.log", timeout=300)
        return f"report {report.relative_to(demo.out)}"

    demo.step(7, total, "report", [report], build_report)

    demo.state["finished"] = True
    demo.state["report"] = str(report)
    demo.state["total_s"] = round(time.monotonic() - demo.t0, 1)
    demo.save()
    demo.echo("")
    demo.echo(summary(demo, campaign_dir, analysis_dir, report))
    return 0


def recovered_hang(evs: list[dict]) -> bool:
    hung = set()
    for e in evs:
        if e.get("event") == "hang-detected":
            hung.add(e.get("dut"))
        elif e.get("event") == "benchmark-start" and e.get("dut") in hung:
            return True
    return False


# What the watchdog must have shown before a demo campaign may stop early.
SHOWN = {
    "an app restart": lambda evs: any(e.get("event") == "app-restart" for e in evs),
    "a hang recovered": recovered_hang,
    "a power cycle": lambda evs: any(e.get("event") == "power-cycle" for e in evs),
}


def serve_until_shown(demo: Demo, campaign: Path, journal: Path, facility=None) -> dict[str, int]:
    """Serve the campaign at least ``serve_s`` seconds and until the watchdog has restarted an app,
    recovered a hang and power-cycled a board (at most ``serve_max_s``); then stop it as a user would
    (SIGINT: the server stops the benchmarks, closes the server copies and journals it). The server serves
    the live dashboard too (``--dashboard``): its address is printed as soon as the server says it serves.
    ``facility``: the facility log, written as the campaign runs."""
    from diehardlab.watchdog.journal import read_journal

    b = demo.budget
    logs = demo.out / "logs"
    logs.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "diehardlab", "serve", str(campaign), "--duration", str(b.serve_max_s)]
    if demo.dashboard:
        cmd += ["--dashboard", demo.dashboard]
    announced = False
    demo.echo(f"      serving {campaign.name} (at least {b.serve_s:.0f} s, at most {b.serve_max_s:.0f} s): {journal}")
    t0 = time.monotonic()
    shown: set[str] = set()
    with open(logs / "serve.log", "w") as f:
        f.write("$ diehard " + " ".join(cmd[3:]) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            while proc.poll() is None:
                time.sleep(0.5)
                if facility is not None:
                    facility.advance(time.time())
                if demo.dashboard and not announced:
                    announced = _announce_dashboard(demo, logs / "serve.log")
                evs = read_journal(journal)  # the watchdog's reader: a torn last line is skipped
                for what, seen in SHOWN.items():
                    if what not in shown and seen(evs):
                        shown.add(what)
                        demo.echo(f"      {time.monotonic() - t0:5.1f} s: the watchdog has shown {what}")
                if len(shown) == len(SHOWN) and time.monotonic() - t0 >= b.serve_s:
                    proc.send_signal(signal.SIGINT)
                    break
            proc.wait(timeout=120)
        except BaseException:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
            raise
    if proc.returncode not in (0, -signal.SIGINT, 130):
        raise DiehardError(f"'diehard serve' failed (exit {proc.returncode}); see {logs / 'serve.log'}")
    missing = [w for w in SHOWN if w not in shown]
    if missing:
        demo.echo(f"      note: within {b.serve_max_s:.0f} s the watchdog did not show {', '.join(missing)}")
    return journal_counts(journal)


def _announce_dashboard(demo: Demo, serve_log: Path) -> bool:
    """Echo the dashboard's address once the server has printed it (``dashboard: URL``) in its log."""
    try:
        text = serve_log.read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("dashboard: http"):
            demo.echo(f"      {line}  (live while the campaign serves; read-only; open it in a browser)")
            return True
    return False


def _last_metrics(ckpt: Path) -> str:
    import csv

    path = ckpt / "metrics.csv"
    try:
        rows = list(csv.DictReader(path.open()))
    except OSError:
        return "trained"
    if not rows:
        return "trained"
    last = rows[-1]
    parts = [f"epoch {last.get('epoch', '?')}"]
    for key, label in (("val_accuracy", "clean acc"), ("val_injected_accuracy", "injected acc")):
        if last.get(key):
            parts.append(f"{label} {100 * float(last[key]):.1f} %")
    return ", ".join(parts)


def journal_counts(path: Path) -> dict[str, int]:
    from diehardlab.watchdog.journal import read_journal

    return dict(Counter(e.get("event", "") for e in read_journal(path)))


def summary(demo: Demo, campaign_dir: Path, analysis_dir: Path, report: Path) -> str:
    counts = journal_counts(campaign_dir / "journal.jsonl")
    lines = [
        "=" * 78,
        LABEL,
        f"watchdog: {counts.get('crash-detected', 0)} crashes and {counts.get('hang-detected', 0)} hangs detected; "
        f"{counts.get('app-restart', 0)} app restarts, {counts.get('power-cycle', 0)} power cycles",
    ]
    lines += truth_lines(analysis_dir)
    lines += critical_fit_lines(analysis_dir)
    lines += [f"report: {report}", f"took {time.monotonic() - demo.t0:.0f} s", "=" * 78]
    return "\n".join(lines)


def truth_lines(analysis_dir: Path) -> list[str]:
    """Measured cross sections beside the simulated truth, read from the analysis' truth table."""
    import csv

    path = analysis_dir / "truth.csv"
    if not path.exists():
        return []
    out = ["measured cross section [95 % interval] vs the true simulated one:"]
    for r in csv.DictReader(path.open()):
        out.append(
            f"  {r.get('group', ''):<28} {r.get('error_class', ''):<4} "
            f"{float(r['sigma_cm2']):.3g} [{float(r['sigma_lo_cm2']):.3g}, {float(r['sigma_hi_cm2']):.3g}] cm^2"
            f"  true {float(r['true_sigma_cm2']):.3g}  {'inside' if r.get('contains_true') == 'True' else 'OUTSIDE'}"
        )
    return out


def critical_fit_lines(analysis_dir: Path) -> list[str]:
    """Critical-SDC FIT per model with its interval and the true FIT of the simulated beam (the paper's beam
    experiment in miniature: the same strikes, fewer of them critical in DieHardNet)."""
    import csv

    fit_path, truth_path = analysis_dir / "fit.csv", analysis_dir / "truth.csv"
    if not fit_path.exists():
        return []
    fits = [r for r in csv.DictReader(fit_path.open()) if r.get("error_class") == "sdc_critical"]
    truth = {}
    if truth_path.exists():
        truth = {r["group"]: r for r in csv.DictReader(truth_path.open()) if r.get("error_class") == "sdc_critical"}
    if not fits:
        return []
    out = ["critical-SDC FIT [95 % interval] against the simulator's true one:"]
    measured: dict[str, tuple[float, float]] = {}
    for r in fits:
        fit, lo, hi, sigma = (float(r[k]) for k in ("fit", "fit_lo", "fit_hi", "sigma_hi_cm2"))
        line = f"  {r['group']:<28} FIT {fit:.3g} [{lo:.3g}, {hi:.3g}]"
        t = truth.get(r["group"])
        if t is not None and sigma > 0:
            true_fit = float(t["true_sigma_cm2"]) * hi / sigma  # FIT per cm^2 of this row
            line += f"  true {true_fit:.3g}  {'inside' if lo <= true_fit <= hi else 'OUTSIDE'}"
            measured[r["group"].split("/")[0]] = (fit, true_fit)
        out.append(line)
    base, dhn = measured.get("dut-baseline"), measured.get("dut-diehardnet")
    if base and dhn and base[0] > 0 and base[1] > 0:
        out.append(
            f"  DieHardNet / baseline critical-SDC FIT: {dhn[0] / base[0]:.3g} measured, {dhn[1] / base[1]:.3g} true"
        )
    return out
