"""``diehard golden``: the command line of ``diehardlab.harness.golden`` (make the golden outputs on this device).

The numbers and the output file are checked before torch is imported, so a typo or a read-only folder costs a
fraction of a second, not a model load (tens of seconds on a DUT board).
"""

from __future__ import annotations

import math

from diehardlab.harness.options import DEFAULT_THRESHOLD, check_threshold

from diehardlab.cli import make_parser
from diehardlab.errors import ConfigError
from diehardlab.outfiles import check_out_file


def build_parser():
    from diehardlab.hardening.numerics import add_numerics_arg

    p = make_parser("golden", "Make the golden outputs of a checkpoint on this device (run it on the DUT).")
    p.add_argument("ckpt_dir", help="checkpoint folder written by 'diehard train'")
    p.add_argument("--out", required=True, help="golden file to write (e.g. golden.pt)")
    p.add_argument("--dataset", help="dataset of the inputs (default: the checkpoint's)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--data-dir", help="where the dataset files are (see 'diehard train --help')")
    p.add_argument("--samples", type=int, default=32, help="number of images (default 32)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image choice (default 0)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="absolute tolerance (default 1e-3)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    add_numerics_arg(p)
    return p


def main(argv: list[str]) -> int:
    a = build_parser().parse_args(argv)
    for option, value in (("--samples", a.samples), ("--batch-size", a.batch_size)):
        if value < 1:
            raise ConfigError(f"{option} must be >= 1 (got {value})")
    if a.threads is not None and a.threads < 1:
        raise ConfigError(f"--threads must be >= 1 (got {a.threads}); leave it out for torch's default")
    check_threshold(a.threshold, "--threshold")
    check_out_file(a.out, "--out")  # before the work, not after it

    import torch
    from diehardlab.harness.golden import make_golden, save_golden

    if a.threads:
        torch.set_num_threads(a.threads)
    rec = make_golden(
        a.ckpt_dir,
        dataset=a.dataset,
        split=a.split,
        samples=a.samples,
        batch_size=a.batch_size,
        seed=a.seed,
        threshold=a.threshold,
        device=a.device,
        data_dir=a.data_dir,
        numerics=a.numerics,
    )
    out = save_golden(rec, a.out)
    acc = float((rec["topk"][:, 0] == rec["labels"]).float().mean()) if rec["labels"].numel() else math.nan
    print(
        f"golden: {out} ({rec['inputs'].shape[0]} images of {rec['dataset']}/{rec['split']}, "
        f"batch {rec['batch_size']}, "
        f"top-1 accuracy {acc:.3f}, device {rec['device_name']}, run-to-run difference {rec['max_run_difference']:.2e} "
        f"<= threshold {rec['threshold']:g}, numerics {rec['numerics']['policy']})"
    )
    return 0
