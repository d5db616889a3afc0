"""``diehard serve`` (as a real process, killed and restarted), ``--check``, ``status`` and ``power``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

from tests.conftest import run_diehard
from tests.watchdog.conftest import ServerThread, app_argv, events, local_campaign, wait_for
from tests.watchdog.emulators import DeadSwitch
from tests.watchdog.test_watchdog_local import SWITCH, dut

ROOT = Path(__file__).resolve().parents[2]


def _serve(path: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "diehardlab.watchdog", "serve", str(path), *extra], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_server_killed_and_restarted_resumes_the_same_counters(tmp_path):
    path = local_campaign(tmp_path, SWITCH + dut("d1", app_argv(), extra='switch = "sim"\noutlet = 1'))
    j = tmp_path / "journal.jsonl"
    srv = _serve(path)
    try:
        pid = wait_for(lambda: events(j, "benchmark-start", "d1"), timeout=20)[-1]["pid"]
        wait_for(lambda: Path(tmp_path / "journal.status.json").exists())
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: events(j, "app-restart", "d1"), timeout=10)
        pid2 = wait_for(lambda: events(j, "benchmark-start", "d1")[1:], timeout=10)[-1]["pid"]
    finally:
        srv.kill()  # kill -9 of the server: no server-stop, the benchmark is left running
        srv.wait()
    assert not events(j, "server-stop")
    snap = events(j, "benchmark-start", "d1")[-1]["snap"]
    assert snap["total_app_restarts"] == 1 and snap["due"] == 1
    out = _serve(path)
    wait_for(lambda: events(j, "resume", "d1"), timeout=20)
    pid3 = wait_for(lambda: events(j, "benchmark-start", "d1")[2:], timeout=20)[-1]["pid"]
    out.send_signal(signal.SIGINT)  # the operator's Ctrl-C: the benchmarks are stopped, not left running
    text, _ = out.communicate(timeout=60)
    assert out.returncode == 0, text
    assert events(j, "benchmark-stop", "d1")[-1]["reason"] == "server-stop"
    assert not Path(f"/proc/{pid3}").exists() or Path(f"/proc/{pid3}/stat").read_text().split()[2] == "Z"
    resume = events(j, "resume", "d1")
    assert resume and resume[0]["snap"]["total_app_restarts"] == 1 and resume[0]["snap"]["due"] == 1
    assert events(j, "server-stop")
    # the benchmark the killed server left behind was stopped by its PID file before the new start
    assert not Path(f"/proc/{pid2}").exists() or Path(f"/proc/{pid2}/stat").read_text().split()[2] == "Z"
    status = run_diehard("status", str(path))
    assert status.returncode == 0, status.stderr
    assert "server stopped" in status.stdout.splitlines()[0]
    line = next(x for x in status.stdout.splitlines() if x.startswith("d1 "))
    assert line.split()[:3] == ["d1", "off", "app"]  # the server stopped its benchmark on the way out
    assert line.split()[-3:] == ["1", "0", "0"]  # restarts, reboots, power cycles


def test_dead_switch_times_out_is_journaled_and_escalation_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("SW_PW", "x")
    with DeadSwitch() as dead:
        sw = f"""
[[switch]]
name = "dead"
model = "netio"
host = "127.0.0.1"
port = {dead.port}
password_env = "SW_PW"
timeout_s = 0.3
"""
        body = sw + dut("d1", app_argv("--crash-after", "0"), extra='switch = "dead"\noutlet = 1')
        path = local_campaign(tmp_path, body)
        with ServerThread(path) as srv:
            j = srv.c.server.journal
            wait_for(lambda: events(j, "broken", "d1"), timeout=30)
    errors = events(j, "switch-error", "d1")
    assert errors and "no answer" in errors[0]["error"] and "0.3 s" in errors[0]["error"]
    assert events(j, "power-cycle", "d1") and events(j, "cool-down", "d1")


def test_check_prints_the_plan_and_refuses_passwords(tmp_path):
    path = local_campaign(tmp_path, SWITCH + dut("d1", app_argv(), extra='switch = "sim"\noutlet = 1'))
    r = run_diehard("serve", "--check", str(path))
    assert r.returncode == 0, r.stderr
    assert "dut d1" in r.stdout and "switch sim: simulated" in r.stdout
    assert "--server 127.0.0.1:" in r.stdout and "local-duts/d1 " in r.stdout
    assert "2 app restarts -> 1 OS reboots -> 1 power cycles" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(path.read_text().replace('model = "simulated"', 'model = "simulated"\npassword = "1234"'))
    r = run_diehard("serve", "--check", str(bad))
    assert r.returncode == 2 and "password_env" in r.stderr and "switch" in r.stderr


def test_per_dut_escalation_override(tmp_path):
    body = SWITCH + dut("d1", app_argv("--crash-after", "0"), extra='switch = "sim"\noutlet = 1').replace(
        "[[dut.benchmark]]",
        "[dut.escalation]\nmax_app_restarts = 0\nmax_os_reboots = 0\nmax_power_cycles = 1\nmax_cool_downs = 0\n"
        "power_off_s = 0.1\n\n[[dut.benchmark]]",
    )
    path = local_campaign(tmp_path, body)
    with ServerThread(path) as srv:
        j = srv.c.server.journal
        wait_for(lambda: events(j, "broken", "d1"), timeout=20)
    assert not events(j, "app-restart") and not events(j, "os-reboot")
    assert len(events(j, "power-cycle")) == 1
    # a restarted server keeps it broken; --reset (the board was repaired) starts its escalation afresh
    starts = len(events(j, "benchmark-start"))
    r = run_diehard("serve", str(path), "--duration", "1")
    assert r.returncode == 0, r.stderr
    assert len(events(j, "benchmark-start")) == starts and events(j, "resume", "d1")
    r = run_diehard("serve", str(path), "--duration", "1.5", "--reset", "d1")
    assert r.returncode == 0, r.stderr
    assert events(j, "reset", "d1") and len(events(j, "benchmark-start")) > starts


def test_power_command_with_the_simulated_switch(tmp_path):
    path = local_campaign(tmp_path, SWITCH + dut("d1", app_argv(), extra='switch = "sim"\noutlet = 2'))
    r = run_diehard("power", str(path), "d1", "off")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("outlet 2: off")
    r = run_diehard("power", str(path), "d1", "state")
    assert r.stdout.strip().endswith("off")
    r = run_diehard("power", "d1", "cycle", "--campaign", str(path), "--off-time", "0")
    assert r.stdout.strip().endswith("on")
    r = run_diehard("power", str(path), "nope", "on")
    assert r.returncode == 2 and "no DUT named 'nope'" in r.stderr


def test_webhook_on_power_cycle_never_blocks(tmp_path):
    got: list[dict] = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    Thread(target=httpd.serve_forever, daemon=True).start()
    body = SWITCH + dut("d1", app_argv("--crash-after", "0"), extra='switch = "sim"\noutlet = 1')
    path = local_campaign(tmp_path, body)
    text = path.read_text() + f'\n[notify]\nwebhook_url = "http://127.0.0.1:{httpd.server_address[1]}/hook"\n'
    path.write_text(text)
    try:
        with ServerThread(path) as srv:
            j = srv.c.server.journal
            wait_for(lambda: events(j, "broken", "d1"), timeout=25)
            wait_for(lambda: len(got) >= 3)
    finally:
        httpd.shutdown()
    assert [g["event"] for g in got] == ["power-cycle", "cool-down", "broken"]
    assert all(g["dut"] == "d1" and g["campaign"] == "test" for g in got)
    assert len(events(j, "notified", "d1")) == 3


def test_example_campaigns_are_valid():
    files = sorted((ROOT / "setups" / "campaigns").glob("*.toml"))
    assert {f.name for f in files} >= {"chipir-lindy.toml", "lab-netio.toml", "local-demo.toml"}
    for f in files:
        r = run_diehard("serve", "--check", str(f))
        assert r.returncode == 0, (f, r.stderr)
        assert "the file is valid" in r.stdout


def test_local_demo_campaign_matches_its_beam_and_the_demo_models():
    """The simulated facility's counts-to-flux factor is the beam spec's, and the benchmarks run the models
    and goldens where 'diehard demo' writes them (./diehard-demo/models)."""
    from diehardlab.demo.pipeline import MODELS
    from diehardlab.harness.beam import load_spec

    from diehardlab.campaign import load_campaign

    c = load_campaign(ROOT / "setups" / "campaigns" / "local-demo.toml")
    models = (ROOT / "diehard-demo" / "models").resolve()
    for d in c.duts:
        argv = [a.replace("{campaign_dir}", str(ROOT / "setups" / "campaigns")) for a in d.benchmarks[0].argv]
        spec = Path(argv[argv.index("--simulate-beam") + 1]).resolve()
        assert c.facility is not None and c.facility.flux_factor == load_spec(spec).beam.flux_factor
        model = Path(argv[4]).resolve()
        assert model.parent == models and model.name in MODELS
        assert Path(argv[argv.index("--golden") + 1]).resolve() == models / f"{model.name}.golden.pt"


def test_server_commands_never_import_torch(tmp_path):
    path = local_campaign(tmp_path, SWITCH + dut("d1", app_argv(), extra='switch = "sim"\noutlet = 1'))
    for args in (("serve", "--check", str(path)), ("status", str(path)), ("power", str(path), "d1", "state")):
        r = run_diehard(*args, block=("torch", "numpy", "pandas", "scipy"))
        assert r.returncode == 0, (args, r.stderr)
    r = run_diehard("serve", str(path), "--duration", "1.5", block=("torch", "numpy"))
    assert r.returncode == 0, r.stderr
    assert events(tmp_path / "journal.jsonl", "server-stop")


def test_journal_survives_a_torn_last_line(tmp_path):
    from diehardlab.watchdog.journal import Journal, last_snapshots, read_journal

    j = Journal(tmp_path / "j.jsonl")
    j.write("benchmark-start", "d1", snap={"due": 2})
    j.close()
    with open(tmp_path / "j.jsonl", "a") as f:
        f.write('{"time": "2026-11-30T10:00:00Z", "event": "app-rest')  # the server died mid-write
    assert last_snapshots(read_journal(tmp_path / "j.jsonl")) == {"d1": {"due": 2}}
    j = Journal(tmp_path / "j.jsonl")  # a new server terminates the torn line and appends after it
    j.write("resume", "d1", snap={"due": 3})
    j.close()
    recs = read_journal(tmp_path / "j.jsonl")
    assert [r["event"] for r in recs] == ["benchmark-start", "resume"]
    assert last_snapshots(recs)["d1"] == {"due": 3}
