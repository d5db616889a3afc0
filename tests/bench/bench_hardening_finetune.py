"""How close does hardening a trained model, with a short fine-tune, get to DieHardNet trained from scratch?

For each seed: trains ``<scale>_baseline`` and ``<scale>_diehardnet`` (setups/models) with the same budget,
then from the baseline checkpoint:

- ``bounds-only``: ``diehard harden --recipe bounds-only`` (no training);
- ``hardened + FT k``: ``diehard harden --recipe diehardnet --fine-tune k`` for k = 1, 2, 4 (order inversion,
  bound 6, NaN filters, k epochs of fault-aware fine-tuning);
- ``baseline + FT 2``: ``diehard train --from BASELINE --fine-tune --epochs 2`` (fault-aware fine-tuning of the
  original architecture, no rewrite: what the rewrite adds);

and evaluates every model with ``diehard evaluate`` (block errors, one per image, K campaigns, test split,
seed 1000 x seed). Prints one line per model and seed, then one Markdown table row per variant: clean accuracy,
regret (mean +- std over seeds) and the training cost in epochs (the baseline's plus the fine-tuning's).

    python tests/bench/bench_hardening_finetune.py --scale digits --seeds 3 --threads 1 --out runs/ft-digits
    python tests/bench/bench_hardening_finetune.py --scale fashion-mnist --seeds 3 --epochs 6 --train-limit 12000 \\
        --threads 1 --out runs/ft-fashion

Prints numbers, asserts nothing; ``--json`` keeps every evaluation result (configurations and seeds included).
A folder that exists is reused (the run resumes where it stopped).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from diehardlab.hardening.cli_train import main as train_main
from diehardlab.hardening.evaluate import evaluate_checkpoint
from diehardlab.hardening.faults import FaultSpec
from diehardlab.hardening.harden import main as harden_main
from diehardlab.hardening.train import load_config, train

ROOT = Path(__file__).resolve().parents[2]
FINE_TUNES = (1, 2, 4)


def _quiet(fn, *args):
    """Run a command's main without its per-epoch output (the bench prints its own lines)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="digits", help="config prefix in setups/models (digits, fashion-mnist)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=0, help="override the configs' epochs (0: keep)")
    ap.add_argument("--train-limit", type=int, default=-1, help="override the training image budget (-1: keep)")
    ap.add_argument("--campaigns", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="runs/finetune")
    ap.add_argument("--json", help="write all results to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = ["--threads", str(args.threads)] if args.threads else []
    spec = FaultSpec(kind="block")
    results: list[dict] = []
    t_start = time.perf_counter()
    for seed in range(args.seeds):
        folder = Path(args.out) / f"seed{seed}"
        runs: list[tuple[str, Path, int, float]] = []  # variant, checkpoint, cost in epochs, seconds
        ckpts = {}
        for variant in ("baseline", "diehardnet"):
            cfg = load_config(ROOT / "setups" / "models" / f"{args.scale}_{variant}.toml")
            cfg = replace(cfg, seed=seed, device="cpu")
            if args.epochs:
                cfg = replace(cfg, epochs=args.epochs)
            if args.train_limit >= 0:
                cfg = replace(cfg, train_limit=args.train_limit)
            out = folder / variant
            t0 = time.perf_counter()
            if not (out / "summary.json").exists():
                train(cfg, out, resume=(out / "last.pt").exists(), log=lambda *a, **k: None)
            ckpts[variant] = (out, cfg.epochs)
            runs.append(("baseline" if variant == "baseline" else "DieHardNet from scratch", out, cfg.epochs,
                         time.perf_counter() - t0))  # fmt: skip
        base, base_epochs = ckpts["baseline"]
        jobs = [("bounds-only", folder / "bounds-only", 0, ["--recipe", "bounds-only"])]
        for k in FINE_TUNES:
            jobs.append(
                (
                    f"hardened + FT {k}",
                    folder / f"diehardnet-ft{k}",
                    k,
                    ["--recipe", "diehardnet", "--fine-tune", str(k)],
                )
            )
        for name, out, k, extra in jobs:
            t0 = time.perf_counter()
            if not out.exists():
                # A generous budget: the table reports the cost; the budget check itself is tested elsewhere.
                argv = [str(base), "--out", str(out), "--seed", str(seed), "--accuracy-budget", "100", *extra]
                _quiet(harden_main, [*argv, "--device", "cpu", "--no-progress", *threads])
            runs.insert(-1, (name, out, base_epochs + k, time.perf_counter() - t0))
        out = folder / "baseline-ft2"
        t0 = time.perf_counter()
        if not out.exists():
            argv = ["--from", str(base), "--fine-tune", "--epochs", "2", "--out", str(out), "--seed", str(seed)]
            _quiet(train_main, [*argv, "--device", "cpu", "--no-progress", *threads])
        runs.insert(-1, ("baseline + FT 2 (no rewrite)", out, base_epochs + 2, time.perf_counter() - t0))
        for name, ckpt, cost, secs in runs:
            res = evaluate_checkpoint(ckpt, spec, campaigns=args.campaigns, seed=1000 * seed, device="cpu")
            res.update(variant=name, train_seed=seed, cost_epochs=cost, build_time_s=secs)
            results.append(res)
            print(
                f"seed {seed}  {name:<30} clean {res['clean_accuracy']:.4f}  regret {res['regret_mean']:.4f}"
                f" +- {res['regret_std']:.4f}  critical {res['critical_rate']:.4f}  ({cost} epochs, {secs:.0f} s)",
                flush=True,
            )
    print(
        f"\n{args.scale}, {args.seeds} seeds, block errors, {args.campaigns} campaigns each, test split "
        f"({time.perf_counter() - t_start:.0f} s in all):\n"
    )
    print("| model | clean accuracy | regret (block errors) | critical rate | training cost (epochs) |")
    print("| --- | --- | --- | --- | --- |")

    def sd(v: list[float]) -> float:
        return statistics.stdev(v) if len(v) > 1 else 0.0

    for name in dict.fromkeys(r["variant"] for r in results):
        rs = [r for r in results if r["variant"] == name]
        clean = [r["clean_accuracy"] for r in rs]
        regret = [r["regret_mean"] for r in rs]
        crit = [r["critical_rate"] for r in rs]
        print(
            f"| {name} | {statistics.fmean(clean):.4f} +- {sd(clean):.4f} | {statistics.fmean(regret):.4f} +- "
            f"{sd(regret):.4f} | {statistics.fmean(crit):.4f} | {rs[0]['cost_epochs']} |"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
