"""``diehard nvbitfi setup``: everything an NVBitFI campaign needs to inject into this model's inference.

NVBitFI (FORMATS.md section 5) runs an application many times under its injector, from a per-injection folder,
and judges each run by four files its ``sdc_check.sh`` writes there. This command writes, into ``--out``:

    run.sh             runs 'diehard run CKPT --golden G --once' (stdout.txt, stderr.txt, output.bin in the cwd);
                       NVBitFI sets PRELOAD_FLAG to its injector; extra arguments go to 'diehard run'
    sdc_check.sh       diff.log (outputs beyond the threshold), stdout_diff.log, stderr_diff.log and
                       special_check.log (the runner's own verdict is not MASKED)
    golden_stdout.txt, golden_stderr.txt, golden_output.bin   from a fault-free run made here
    params_entry.py    the app entry for NVBitFI's scripts/params.py (with the measured runtime)
    dut-logs/          the DUT log of every run; each stdout.txt names its log ("Log file path ..."), so an
                       injection's outcome can be joined with the #SDC/#ERR lines it produced

A second fault-free run is then judged by the generated sdc_check.sh and must come out masked (all four files
empty); otherwise the setup refuses, since every injection would read as an SDC.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from diehardlab.cli import make_parser
from diehardlab.errors import ConfigError
from diehardlab.outfiles import cannot_write, check_out_dir

CHECK_FILES = ("diff.log", "stdout_diff.log", "stderr_diff.log", "special_check.log")
_APP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VOLATILE = re.compile(r":::Injecting.*?:::")


def clean_stdout(text: str) -> str:
    """What sdc_check.sh compares: no injector banners, no log path (it differs run to run)."""
    lines = [_VOLATILE.sub("", line) for line in text.splitlines(keepends=True)]
    return "".join(line for line in lines if not line.startswith("Log file path "))


def run_script(py: str, ckpt: Path, golden: Path, out: Path, app: str, device: str, threads: int | None) -> str:
    q = shlex.quote
    argv = [
        py, "-m", "diehardlab", "run", str(ckpt), "--golden", str(golden), "--log-dir", str(out / "dut-logs"),
        "--hostname", "nvbitfi", "--benchmark", app, "--once", "--output", "output.bin", "--device", device,
    ]  # fmt: skip
    if threads:
        argv += ["--threads", str(threads)]
    env = ""
    if os.environ.get("PYTHONPATH"):
        env = f"export PYTHONPATH={q(os.environ['PYTHONPATH'])}\n"
    return (
        "#!/bin/bash\n"
        f"# NVBitFI run script of app {app} (diehard nvbitfi setup). NVBitFI runs it in the injection's folder\n"
        "# with PRELOAD_FLAG=LD_PRELOAD=<injector>; arguments given to this script go to 'diehard run'.\n"
        f"{env}"
        f'env ${{PRELOAD_FLAG}} {" ".join(q(a) for a in argv)} "$@" > stdout.txt 2> stderr.txt\n'
        "exit 0\n"
    )


def check_script(py: str, out: Path, threshold: float) -> str:
    q = shlex.quote
    return f"""#!/bin/bash
# NVBitFI SDC check (diehard nvbitfi setup). Runs in the injection's folder and writes the four files NVBitFI's
# run_one_injection.py reads; an empty file means "no difference".
#   diff.log           output.bin vs golden_output.bin, elements off by more than {threshold:g} (or NaN/Inf)
#   stdout_diff.log    stdout.txt vs golden_stdout.txt, without ':::Injecting...:::' and 'Log file path' lines
#   stderr_diff.log    stderr.txt vs golden_stderr.txt
#   special_check.log  the runner's own verdict when it is not "result: MASKED"
APP_DIR="${{APP_DIR:-{q(str(out))}}}"
PY={q(py)}
if [ -f output.bin ]; then
  "$PY" -m diehardlab.harness.outdiff output.bin "$APP_DIR/golden_output.bin" --threshold {threshold!r} > diff.log 2>&1
else
  echo "no output.bin" > diff.log
fi
touch stdout.txt stderr.txt
sed -e 's/:::Injecting.*::://g' -e '/^Log file path /d' stdout.txt \\
  | diff - "$APP_DIR/golden_stdout.txt" > stdout_diff.log
diff stderr.txt "$APP_DIR/golden_stderr.txt" > stderr_diff.log
if grep -q '^result: MASKED ' stdout.txt; then
  : > special_check.log
elif grep '^result:' stdout.txt > special_check.log; then
  :
else
  echo "no result line in stdout.txt" > special_check.log
fi
exit 0
"""


def params_entry(app: str, out: Path, runtime_s: float) -> str:
    return f"""# Add this app to NVBITFI_HOME/scripts/params.py (diehard nvbitfi setup), after the `apps` dict:
apps[{app!r}] = [
    {str(out)!r},  # workload directory: run.sh, sdc_check.sh and the golden files
    {app!r},  # binary name (the runner is Python: NVBitFI instruments the CUDA kernels it launches)
    {str(out) + "/"!r},  # path to the binary
    {max(1, round(runtime_s))},  # expected runtime in seconds on this machine ({runtime_s:.1f} s measured)
    "",  # additional parameters to run.sh
]
"""


def _run_once(script: Path, workdir: Path, extra: list[str] | None = None, timeout: float = 600) -> float:
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PRELOAD_FLAG="")
    t0 = time.monotonic()
    try:
        subprocess.run(["bash", str(script), *(extra or [])], cwd=workdir, env=env, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"the fault-free run in {workdir} took more than {timeout:g} s; see its stderr.txt") from None
    return time.monotonic() - t0


def judge(workdir: Path, check: Path, app_dir: Path) -> dict[str, str]:
    """Run sdc_check.sh in ``workdir``; the content of each of the four files."""
    env = dict(os.environ, APP_DIR=str(app_dir))
    subprocess.run(["bash", str(check)], cwd=workdir, env=env, timeout=120, check=True)
    return {name: (workdir / name).read_text() for name in CHECK_FILES}


def _last_line(*paths: Path) -> str:
    """The last non-empty line of the first file that has one (what went wrong, in one line)."""
    for p in paths:
        try:
            lines = [ln.strip() for ln in p.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            continue
        if lines:
            return lines[-1]
    return "no output"


# Published in this order, the params.py entry last: it is what says the workload is complete.
PUBLISHED = ("run.sh", "sdc_check.sh", "golden_stdout.txt", "golden_stderr.txt", "golden_output.bin",
             "params_entry.py")  # fmt: skip


def setup(ckpt: Path, golden: Path, out: Path, app: str, device: str = "auto", threads: int | None = None,
          verify: bool = True) -> Path:  # fmt: skip
    """Build the workload in a staging folder inside ``out`` and rename its files into place only when the
    fault-free runs passed: a failure (a full disk, a non-deterministic device) never leaves a workload that looks
    complete, nor mixes new files with an older workload's."""
    if not _APP.match(app):
        raise ConfigError(f"--app {app!r}: letters, digits, '_', '.', '-' (it names NVBitFI's log folders)")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1 (got {threads}); leave it out for torch's default")
    out = out.resolve()
    check_out_dir(out, "--out")  # before torch is even imported: a read-only or full folder costs nothing

    from diehardlab.harness.golden import load_golden

    rec = load_golden(golden)
    threshold = float(rec["threshold"])
    py = sys.executable
    stage = out / f".staging-{os.getpid()}"
    try:
        stage.mkdir(parents=True)
        run_sh, check_sh = stage / "run.sh", stage / "sdc_check.sh"
        run_sh.write_text(run_script(py, ckpt.resolve(), golden.resolve(), out, app, device, threads))
        check_sh.write_text(check_script(py, out, threshold))
        for f in (run_sh, check_sh):
            f.chmod(0o755)

        ref = out / "golden-run"
        shutil.rmtree(ref, ignore_errors=True)
        runtime = _run_once(run_sh, ref)
        stdout = (ref / "stdout.txt").read_text()
        if "result: MASKED " not in stdout or not (ref / "output.bin").is_file():
            raise ConfigError(
                f"the fault-free run in {ref} did not pass its own check "
                f"({_last_line(ref / 'stderr.txt', ref / 'stdout.txt')}); see stdout.txt and stderr.txt there"
            )
        (stage / "golden_stdout.txt").write_text(clean_stdout(stdout))
        shutil.copyfile(ref / "stderr.txt", stage / "golden_stderr.txt")
        shutil.copyfile(ref / "output.bin", stage / "golden_output.bin")
        (stage / "params_entry.py").write_text(params_entry(app, out, runtime))
        if verify:
            again = out / "verify-run"
            shutil.rmtree(again, ignore_errors=True)
            _run_once(run_sh, again)
            found = {k: v for k, v in judge(again, check_sh, stage).items() if v}
            if found:
                first = next(iter(found))
                raise ConfigError(
                    f"a second fault-free run in {again} is not judged masked ({first}: "
                    f"{found[first].strip().splitlines()[0]}); NVBitFI would see SDCs. See the *.log files there"
                )
        for name in PUBLISHED:
            os.replace(stage / name, out / name)
    except OSError as exc:
        raise cannot_write("--out", out, exc) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


def main(argv: list[str]) -> int:
    p = make_parser("nvbitfi", "Instruction-level fault injection with NVBitFI on this model (lab GPUs).")
    sub = p.add_subparsers(dest="action", required=True)
    s = sub.add_parser("setup", help="write run.sh, sdc_check.sh, golden files and the params.py entry")
    s.add_argument("ckpt_dir")
    s.add_argument("--golden", required=True, help="golden file made on this GPU (diehard golden)")
    s.add_argument("--out", required=True, help="workload folder for NVBitFI (created)")
    s.add_argument("--app", help="app name in NVBitFI (default: the checkpoint folder's name)")
    s.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    s.add_argument("--threads", type=int, help="CPU threads for torch")
    s.add_argument("--no-verify", action="store_true", help="skip the second fault-free run")
    a = p.parse_args(argv)
    ckpt = Path(a.ckpt_dir)
    app = a.app or re.sub(r"[^A-Za-z0-9_.-]", "-", ckpt.resolve().name)
    out = setup(ckpt, Path(a.golden), Path(a.out), app, a.device, a.threads, not a.no_verify)
    print(f"NVBitFI workload for app {app!r} in {out}:")
    for name in ("run.sh", "sdc_check.sh", "golden_stdout.txt", "golden_stderr.txt", "golden_output.bin"):
        print(f"  {out / name}")
    print(f"Add the entry in {out / 'params_entry.py'} to NVBITFI_HOME/scripts/params.py and run NVBitFI's test.sh.")
    return 0
