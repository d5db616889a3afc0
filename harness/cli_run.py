"""``diehard run``: the command line of the DUT's inference loop (``diehardlab.harness.runner``).

It builds the runner and, with ``--simulate-beam``, hands it the beam simulator (``diehardlab.harness.simulator``):
the runner owns the loop, the simulator acts on each iteration, and neither imports the other.
With ``--once`` one iteration runs and a deterministic summary is printed for NVBitFI.

The options and the beam spec are checked before torch is imported: a typo costs a fraction of a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from diehardlab.harness.options import RunOptions, check_options

from diehardlab.cli import make_parser
from diehardlab.errors import DiehardError
from diehardlab.outfiles import write_bytes_atomic

if TYPE_CHECKING:
    import torch
    from diehardlab.harness.runner import Runner

# -- --once (NVBitFI) ---------------------------------------------------------------------------------------


def once_summary(runner: Runner) -> str:
    """Deterministic for a fault-free run: no times, no paths (NVBitFI diffs it with the golden stdout)."""
    import torch

    outs = runner.last_outputs
    top1 = torch.cat([o.detach().float().cpu() for o in outs]).argmax(dim=1).tolist() if outs else []
    mm = runner.last_mismatch
    verdict = "MASKED" if mm is None or mm.errors == 0 else "SDC"
    errors = 0 if mm is None else mm.errors
    crit = 0 if mm is None else mm.critical
    tol = 0 if mm is None else mm.tolerable
    return (
        f"diehard run --once: model_sha256 {runner.loaded.model_hash[:16]} images {len(top1)} "
        f"threshold {runner.threshold:g}\n"
        f"top1: {' '.join(str(t) for t in top1)}\n"
        f"result: {verdict} errors:{errors} critical:{crit} tolerable:{tol}\n"
    )


def write_outputs(outs: list[torch.Tensor], path: Path) -> None:
    """Raw little-endian float32, image after image (``diehardlab.harness.outdiff`` compares two of these)."""
    import torch

    data = torch.cat([o.detach().float().cpu() for o in outs]).contiguous().numpy().astype("<f4").tobytes()
    write_bytes_atomic(path, data, "--output")


# -- command line -------------------------------------------------------------------------------------------


def build_parser():
    p = make_parser(
        "run",
        "Run the inference loop on this device: compare with the golden outputs, write the libLogHelper log,\n"
        "stream it to the server. SIGTERM ends the run cleanly (#INF STOP, #END, exit 0).",
    )
    p.add_argument("ckpt_dir", help="checkpoint folder (diehard train)")
    p.add_argument("--golden", required=True, help="golden file made on this device (diehard golden)")
    p.add_argument("--log-dir", required=True, help="folder of the DUT's log files")
    p.add_argument("--hostname", help="host field of the log file name (default: this machine's name)")
    p.add_argument("--benchmark", help="benchmark field of the log file name (default: from the model)")
    p.add_argument("--server", help="HOST:PORT of the campaign server's UDP port (no stream when absent)")
    p.add_argument("--dut", help="DUT name in the campaign file, for extended datagrams (default: hostname)")
    p.add_argument("--key-file", help="file with the DUT's datagram key (hex or raw): extended, signed datagrams")
    p.add_argument("--extended", action="store_true", help="extended datagrams without a key (unsigned)")
    p.add_argument("--simulate-beam", metavar="SPEC", help="beam simulator spec (setups/beam/*.toml): a SIMULATION")
    p.add_argument("--interval", type=int, default=10, help="#IT line every K iterations (default 10)")
    p.add_argument("--heartbeat", type=float, default=5.0, help="heartbeat datagram after S quiet seconds (default 5)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--duration", type=float, help="stop after S seconds (default: run until SIGTERM)")
    stop.add_argument("--iterations", type=int, help="stop after N iterations")
    stop.add_argument("--once", action="store_true", help="one iteration, summary on stdout, exit 0 (NVBitFI)")
    p.add_argument("--output", help="--once: write the raw float32 outputs here (default output.bin)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--ecc", default="auto", help="auto (nvidia-smi), on, off: the ECC field of the log name")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--threshold", type=float, help="absolute tolerance (default: the golden file's)")
    p.add_argument(
        "--numerics",
        help="arithmetic of the conv/linear layers (fp32, tf32, a per-layer map; see docs/sfi.md); default and "
        "only accepted value: the golden file's",
    )
    p.add_argument("--no-reload", action="store_true", help="do not reload weights and inputs after an SDC")
    p.add_argument("--max-errors-per-iter", type=int, default=500, help="libLogHelper abort rule (default 500)")
    p.add_argument(
        "--no-double-error-kill",
        action="store_true",
        help="do not abort on the same error count in two consecutive iterations",
    )
    return p


def options_from_args(a) -> RunOptions:
    return RunOptions(
        ckpt_dir=Path(a.ckpt_dir),
        golden=Path(a.golden),
        log_dir=Path(a.log_dir),
        hostname=a.hostname or None,
        benchmark=a.benchmark or None,
        server=a.server or None,
        dut=a.dut or None,
        key_file=Path(a.key_file) if a.key_file else None,  # "" from an empty {key_file} placeholder: none
        extended=a.extended,
        interval=a.interval,
        heartbeat_s=a.heartbeat,
        duration_s=a.duration,
        iterations=a.iterations,
        threads=a.threads,
        ecc=a.ecc,
        device=a.device,
        threshold=a.threshold,
        numerics=a.numerics,
        reload=not a.no_reload,
        max_errors_per_iter=a.max_errors_per_iter,
        double_error_kill=not a.no_double_error_kill,
        once=a.once,
        output=Path(a.output) if a.output else (Path("output.bin") if a.once else None),
    )


def main(argv: list[str]) -> int:
    from diehardlab.harness.beam import load_spec

    a = build_parser().parse_args(argv)
    opts = options_from_args(a)
    check_options(opts)
    spec = load_spec(a.simulate_beam) if a.simulate_beam else None
    # Only now the heavy part (torch): everything above is refused in a fraction of a second.
    from diehardlab.harness.runner import Runner

    beam = None
    if spec is not None:
        from diehardlab.harness.simulator import BeamSimulation

        beam = BeamSimulation(spec, Path(a.simulate_beam))
    runner = Runner(opts, beam)
    if not opts.once:
        runner.prepare()
        return runner.run()
    # NVBitFI mode: whatever happens, exit 0 and say what happened on stdout (its categories read it).
    try:
        runner.prepare()
        runner.run()
        if opts.output is not None and runner.last_outputs:
            write_outputs(runner.last_outputs, opts.output)
    except DiehardError as exc:
        print(f"diehard run --once: error: {exc}")
        return 0
    print(once_summary(runner), end="")
    if runner.writer is not None:
        print(f"Log file path {runner.writer.path.resolve()}")
    return 0
