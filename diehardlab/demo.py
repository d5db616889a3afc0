"""``diehard demo``: a complete simulated beam campaign on one machine, in minutes, without a beam.

The whole product chain, each step the real command a user would run, in its own process:

1. train a baseline and a DieHardNet model on the embedded dataset (scikit-learn's digits);
2. measure their regret under injected block errors (``diehard evaluate``);
3. generate their goldens (``diehard golden``);
4. write a campaign file (two simulated DUTs on the local transport, one per model, a simulated power
   switch) and serve it (``diehard serve``): each DUT runs ``diehard run --simulate-beam``, whose beam
   corrupts outputs, writes NaNs, really crashes and really hangs, so the watchdog restarts apps,
   recovers hangs and power-cycles;
5. analyse the server copies and the DUTs' own logs with the simulated facility log (``diehard fit``)
   and write the report, with the true simulated rates beside the measured ones (``diehard report``).

Every step records its state in ``OUT/demo.json``; a second run into the same folder resumes after the
last finished step (redoing an interrupted one from scratch, so outputs never mix) or, when the demo
finished, refuses. Every output says it comes from a simulated beam.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from diehardlab import __version__
from diehardlab.cli import make_parser
from diehardlab.errors import DataError, DiehardError

STATE = "demo.json"
LABEL = "SIMULATED BEAM (diehard demo): no neutron beam was used; rates are known by construction."


@dataclass(frozen=True)
class Budget:
    """How much work each step does; ``--quick`` fits in a minute on 2 cores, the full demo in five."""

    mode: str
    epochs: int
    eval_campaigns: int
    golden_samples: int
    serve_s: float
    beam_spec: str

    @staticmethod
    def for_mode(quick: bool) -> Budget:
        if quick:
            return Budget("quick", epochs=3, eval_campaigns=2, golden_samples=32, serve_s=22.0, beam_spec="demo-quick")
        return Budget("full", epochs=15, eval_campaigns=5, golden_samples=64, serve_s=150.0, beam_spec="demo-full")


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
    def __init__(self, out: Path, budget: Budget, seed: int, echo: Callable[[str], None] = print):
        self.out = out
        self.budget = budget
        self.seed = seed
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
        tmp = self.out / (STATE + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=2, default=str) + "\n")
        os.replace(tmp, self.out / STATE)

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

    def diehard(self, name: str, args: Sequence[str], log: str, timeout: float) -> str:
        """Run ``diehard ARGS`` as a real subprocess, keeping its output in ``OUT/logs/LOG``."""
        logs = self.out / "logs"
        logs.mkdir(exist_ok=True)
        path = logs / log
        cmd = [sys.executable, "-m", "diehardlab", *args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(path, "w") as f:
            f.write("$ diehard " + " ".join(args) + "\n")
            f.flush()
            try:
                rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
            except subprocess.TimeoutExpired as exc:
                raise DiehardError(f"step {name!r}: 'diehard {args[0]}' ran past {timeout:.0f} s; see {path}") from exc
        text = path.read_text(errors="replace")
        if rc != 0:
            tail = "\n".join(text.splitlines()[-15:])
            raise DiehardError(f"step {name!r}: 'diehard {args[0]}' failed (exit {rc}); see {path}:\n{tail}")
        return text


def main(argv: Sequence[str] | None = None) -> int:
    p = make_parser("demo", __doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("diehard-demo"), help="output folder (default ./diehard-demo)")
    p.add_argument("--quick", action="store_true", help="seconds of beam instead of minutes (under 60 s in all)")
    p.add_argument("--seed", type=int, default=1, help="seed of training, fault injection and the beam (default 1)")
    a = p.parse_args(argv)
    return run_demo(Demo(a.out.resolve(), Budget.for_mode(a.quick), a.seed))


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
    spec = demo.root / "setups" / "beam" / f"{demo.budget.beam_spec}.toml"
    flux_factor = _spec_flux_factor(spec)
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
        "# The simulator writes a ChipIR-format count log beside each DUT log, with this counts-to-flux factor.",
        "[facility]",
        'kind = "simulated"',
        f"flux_factor = {flux_factor!r}",
        'timezone = "UTC"',
        "",
        "[analysis]",
        'group_by = ["board", "benchmark", "ecc"]',
        "confidence = 0.95",
        "# The simulator draws its events in beam-on kernel time, so the fluence that matches its truth is the",
        "# mean flux times the accumulated kernel time (the reference parsers' definition), not the flux",
        "# integrated over each run's wall-clock window (which includes start-up and comparison time).",
        'fluence = "mean-flux-x-acc-time"',
    ]
    path = folder / "campaign.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_facility_log(demo: Demo, stem: Path, start: float, end: float) -> Path:
    """One ChipIR-format count log for the whole campaign, as a facility keeps it (``STEM.chipir.txt``).

    The simulated beam is a function of UTC time alone (the same beam trips for every DUT), so the log the
    facility would have written for the campaign's period is the simulator's, extended over that period.
    """
    from harness.beam import ChipirLog, load_spec

    spec = load_spec(demo.root / "setups" / "beam" / f"{demo.budget.beam_spec}.toml")
    log = ChipirLog(stem, spec.beam, start)
    log.close(end)
    return log.path


def _spec_flux_factor(spec: Path) -> float:
    from diehardlab.config import read_toml

    data = read_toml(spec)
    try:
        return float(data["beam"]["flux_factor"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{spec}: [beam] flux_factor missing or not a number") from exc


def run_demo(demo: Demo) -> int:
    b = demo.budget
    demo.open()
    demo.echo(LABEL)
    demo.echo(f"output: {demo.out}  (mode {b.mode}, seed {demo.seed})")
    models = demo.out / "models"
    models.mkdir(exist_ok=True)
    total = 8

    def train(m: str) -> Callable[[], str]:
        def body() -> str:
            cfg = demo.root / "setups" / "models" / f"digits_{m}.toml"
            demo.diehard(f"train {m}", ["train", "--config", str(cfg), "--epochs", str(b.epochs), "--seed",
                                        str(demo.seed), "--out", str(models / m), "--no-progress"],
                         f"train-{m}.log", timeout=600)  # fmt: skip
            return _last_metrics(models / m)

        return body

    for i, m in enumerate(MODELS, start=1):
        demo.step(i, total, f"train {m}", [models / m], train(m))

    def evaluate() -> str:
        out = []
        for m in MODELS:
            js = demo.out / "evaluate" / f"{m}.json"
            js.parent.mkdir(exist_ok=True)
            demo.diehard("evaluate", ["evaluate", str(models / m), "--fault-model", "block", "--campaigns",
                                      str(b.eval_campaigns), "--seed", str(demo.seed), "--json", str(js)],
                         f"evaluate-{m}.log", timeout=600)  # fmt: skip
            r = json.loads(js.read_text())
            out.append(f"{m} regret {100 * r['regret_mean']:.1f} %")
        return ", ".join(out)

    demo.step(3, total, "evaluate regret", [demo.out / "evaluate"], evaluate)

    def golden() -> str:
        for m in MODELS:
            demo.diehard("golden", ["golden", str(models / m), "--out", str(models / f"{m}.golden.pt"),
                                    "--samples", str(b.golden_samples), "--batch-size", str(b.golden_samples)],
                         f"golden-{m}.log", timeout=300)  # fmt: skip
        return f"{len(MODELS)} goldens of {b.golden_samples} images"

    demo.step(4, total, "goldens", [models / f"{m}.golden.pt" for m in MODELS], golden)

    campaign_dir = demo.out / "campaign"

    def campaign() -> str:
        path = write_campaign(demo, campaign_dir)
        demo.diehard("check", ["serve", "--check", str(path)], "serve-check.log", timeout=60)
        return f"wrote {path.relative_to(demo.out)}"

    demo.step(5, total, "campaign file", [campaign_dir], campaign)

    def serve() -> str:
        path = campaign_dir / "campaign.toml"
        demo.echo(
            f"      serving for {b.serve_s:.0f} s under the simulated beam (journal: {campaign_dir / 'journal.jsonl'})"
        )
        started = time.time()
        demo.diehard("serve", ["serve", str(path), "--duration", str(b.serve_s)], "serve.log",
                     timeout=b.serve_s + 120)  # fmt: skip
        write_facility_log(demo, campaign_dir / "facility", started - 5.0, time.time() + 5.0)
        counts = journal_counts(campaign_dir / "journal.jsonl")
        keys = ("crash-detected", "hang-detected", "app-restart", "power-cycle")
        return ", ".join(f"{k} {counts.get(k, 0)}" for k in keys)

    # A served campaign cannot be resumed half-way into the same folders: redo it (and what follows) whole.
    demo.step(6, total, "simulated beam campaign", [campaign_dir / "server-logs", campaign_dir / "local-duts",
                                                    campaign_dir / "journal.jsonl",
                                                    campaign_dir / "facility.chipir.txt"], serve)  # fmt: skip

    analysis_dir = demo.out / "analysis"

    def fit() -> str:
        logs = [campaign_dir / "server-logs", campaign_dir / "local-duts"]
        args = ["fit", "--campaign", str(campaign_dir / "campaign.toml")]
        for d in logs:
            args += ["--logs", str(d)]
        args += ["--flux", str(campaign_dir / "facility.chipir.txt"), "--out", str(analysis_dir)]
        demo.diehard("fit", args, "fit.log", timeout=300)
        return f"tables in {analysis_dir.relative_to(demo.out)}"

    demo.step(7, total, "analysis", [analysis_dir], fit)

    report = demo.out / "report.html"

    def build_report() -> str:
        args = ["report", "--fit", str(analysis_dir), "--out", str(report), "--evaluate"]
        args += [str(demo.out / "evaluate" / f"{m}.json") for m in MODELS]
        args += ["--truth", str(campaign_dir / "local-duts")]
        demo.diehard("report", args, "report.log", timeout=300)
        return f"report {report.relative_to(demo.out)}"

    demo.step(8, total, "report", [report], build_report)

    demo.state["finished"] = True
    demo.state["report"] = str(report)
    demo.state["total_s"] = round(time.monotonic() - demo.t0, 1)
    demo.save()
    demo.echo("")
    demo.echo(summary(demo, campaign_dir, analysis_dir, report))
    return 0


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
    counts: dict[str, int] = {}
    if not path.exists():
        return counts
    for line in path.read_text().splitlines():
        try:
            ev = json.loads(line).get("event", "")
        except json.JSONDecodeError:
            continue
        counts[ev] = counts.get(ev, 0) + 1
    return counts


def summary(demo: Demo, campaign_dir: Path, analysis_dir: Path, report: Path) -> str:
    counts = journal_counts(campaign_dir / "journal.jsonl")
    lines = [
        "=" * 78,
        LABEL,
        f"watchdog: {counts.get('crash-detected', 0)} crashes and {counts.get('hang-detected', 0)} hangs detected; "
        f"{counts.get('app-restart', 0)} app restarts, {counts.get('power-cycle', 0)} power cycles",
    ]
    lines += truth_lines(analysis_dir)
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
