"""Regret under block errors: baseline against DieHardNet, same recipe budget, several seeds.

For each seed, trains ``<scale>_baseline`` and ``<scale>_diehardnet`` (and any other variants named) from
``setups/models`` with the same epochs, image budget and seed, then runs ``diehard evaluate`` with the same
fault spec (block errors, one per image, K campaigns) on the test split, and prints one line per model and seed
and a summary over seeds (mean and std of the clean accuracy and of the regret).

    # CPU, about 10 minutes on 2 shared cores
    python tests/bench/bench_hardening_regret.py --scale fashion-mnist --seeds 3 --epochs 6 --train-limit 12000 \
        --threads 1 --out runs/regret
    # GPU, the full fashion-mnist training set
    python tests/bench/bench_hardening_regret.py --scale fashion-mnist --seeds 5 --out runs/regret-gpu

Prints numbers, asserts nothing; ``--json`` keeps every evaluation result (fault specs and seeds included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from diehardlab.hardening.evaluate import evaluate_checkpoint
from diehardlab.hardening.faults import FaultSpec
from diehardlab.hardening.train import load_config, train

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="fashion-mnist", help="config prefix in setups/models (digits, fashion-mnist)")
    ap.add_argument("--variants", default="baseline,diehardnet")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=0, help="override the configs' epochs (0: keep)")
    ap.add_argument("--train-limit", type=int, default=-1, help="override the training image budget (-1: keep)")
    ap.add_argument("--campaigns", type=int, default=5)
    ap.add_argument("--fault-model", default="block")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-dir", default="", help="dataset folder (default: the configs' / Debian's)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="runs/regret")
    ap.add_argument("--json", help="write all results to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    spec = FaultSpec(kind=args.fault_model)
    results: list[dict] = []
    t_start = time.perf_counter()
    for seed in range(args.seeds):
        for variant in variants:
            cfg = load_config(ROOT / "setups" / "models" / f"{args.scale}_{variant}.toml")
            cfg = replace(cfg, seed=seed, device=args.device, data_dir=args.data_dir or cfg.data_dir)
            if args.epochs:
                cfg = replace(cfg, epochs=args.epochs)
            if args.train_limit >= 0:
                cfg = replace(cfg, train_limit=args.train_limit)
            out = Path(args.out) / f"{cfg.name}-seed{seed}"
            t0 = time.perf_counter()
            summary = train(cfg, out, resume=(out / "last.pt").exists(), log=lambda *a, **k: None)
            t_train = time.perf_counter() - t0
            res = evaluate_checkpoint(out, spec, campaigns=args.campaigns, seed=1000 * seed, device=args.device)
            res["variant"], res["train_seed"], res["train_time_s"] = variant, seed, t_train
            res["test_accuracy_after_training"] = summary["test_accuracy"]
            results.append(res)
            print(
                f"seed {seed}  {variant:<12} clean {res['clean_accuracy']:.4f}"
                f"  faulty {res['faulty_accuracy_mean']:.4f}"
                f"  regret {res['regret_mean']:.4f} +- {res['regret_std']:.4f}  critical {res['critical_rate']:.4f}"
                f"  (train {t_train:.0f} s, {cfg.epochs} epochs, limit {cfg.train_limit or 'all'})",
                flush=True,
            )
    print(
        f"summary over {args.seeds} seeds ({args.scale}, {args.fault_model} faults, {args.campaigns} campaigns each, "
        f"test split, {time.perf_counter() - t_start:.0f} s in all):"
    )
    for variant in variants:
        rs = [r for r in results if r["variant"] == variant]
        clean = [r["clean_accuracy"] for r in rs]
        regret = [r["regret_mean"] for r in rs]
        crit = [r["critical_rate"] for r in rs]

        def sd(v: list[float]) -> float:
            return statistics.stdev(v) if len(v) > 1 else 0.0

        print(
            f"  {variant:<12} clean accuracy {statistics.fmean(clean):.4f} +- {sd(clean):.4f}   "
            f"regret {statistics.fmean(regret):.4f} +- {sd(regret):.4f}   critical rate {statistics.fmean(crit):.4f}"
        )
    if len(variants) >= 2:
        a, b = variants[0], variants[-1]
        pairs = [
            (r1["regret_mean"], r2["regret_mean"])
            for r1 in results
            for r2 in results
            if r1["variant"] == a and r2["variant"] == b and r1["train_seed"] == r2["train_seed"]
        ]
        lower = sum(y < x for x, y in pairs)
        print(f"  {b} regret lower than {a} in {lower} of {len(pairs)} seeds")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
