"""``diehard sfi plan|run|curve``: statistical fault injection (see docs/sfi.md)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from diehardlab.cli import make_parser
from diehardlab.errors import ConfigError

USAGE = """\
diehard sfi plan  MODEL --method network|layer|data-unaware|data-aware [--error E --confidence C] [--csv F] [--out P]
diehard sfi run   MODEL (--plan P | --faults F | --method M) [--images N | --selection F] --out DIR [--resume]
diehard sfi curve --run DIR [--orders 5] --out PREFIX
MODEL is a checkpoint folder, --model NAME (random weights) or --factory MODULE:CALLABLE --weights FILE."""


def _plan_args(p: argparse.ArgumentParser, required: bool) -> None:
    from diehardlab.hardening.sfi.plan import FAULT_MODELS, METHODS, TARGETS

    p.add_argument("--method", choices=METHODS, required=required, help="how the population is split")
    p.add_argument("--error", type=float, default=0.01, help="error margin e (default 0.01)")
    p.add_argument("--confidence", type=float, default=0.99, help="confidence level (default 0.99: t = 2.58)")
    p.add_argument("--fault-model", default="stuck-at", choices=FAULT_MODELS, help="stuck-at (0 and 1) or bitflip")
    p.add_argument("--target", default="weights", choices=TARGETS, help="weights (default) or activations")


def _example(args, target):
    """One input of the right shape, for activation plans (layer output sizes)."""
    import torch
    from diehardlab.hardening.sfi.sources import load_images

    if args.target != "activations":
        return None
    if getattr(args, "image_dir", None) or target.dataset:
        return load_images(args, target).x[:1]
    size = 32 if args.in_channels == 3 else 28
    return torch.zeros(1, args.in_channels, size, size)


def cmd_plan(argv: Sequence[str]) -> int:
    from diehardlab.hardening.sfi.plan import make_plan, save_plan, write_plan_csv
    from diehardlab.hardening.sfi.sources import add_image_args, add_model_args, load_target

    p = make_parser("sfi plan", "Populations and sample sizes per network, layer and bit for a model.")
    add_model_args(p)
    add_image_args(p)
    _plan_args(p, required=True)
    p.add_argument("--csv", type=Path, help="write one row per population (layer, bit) to this CSV")
    p.add_argument("--out", type=Path, help="write the plan as JSON (input of 'diehard sfi run --plan')")
    p.add_argument("--bits", action="store_true", help="print every (layer, bit) row, not only per layer")
    args = p.parse_args(argv)
    target = load_target(args)
    plan = make_plan(
        target.model, args.method, args.error, args.confidence, args.fault_model, args.target, _example(args, target)
    )
    print(
        f"model {target.name}: method {plan.method}, fault model {plan.fault_model}, target {plan.target}, "
        f"e = {plan.error:g}, confidence {plan.confidence:g} (t = {plan.t:g})"
    )
    print(f"{'layer':<28} {'elements':>10} {'population':>12} {'sample':>10}")
    for (name, pop, n), layer in zip(plan.per_layer(), plan.layers):
        print(f"{name:<28} {layer.numel:>10,} {pop:>12,} {n:>10,}")
    print(f"{'total':<28} {sum(x.numel for x in plan.layers):>10,} {plan.population:>12,} {plan.total:>10,}")
    if args.bits and plan.method in ("data-unaware", "data-aware"):
        print(f"\n{'layer':<28} {'bit':>4} {'population':>10} {'p':>8} {'sample':>8}")
        for s in plan.strata:
            print(f"{s.layer:<28} {s.bit:>4} {s.population:>10,} {s.p:>8.4f} {s.n:>8,}")
    if plan.p_table:
        print("\ndata-aware p(i) per layer, bits 31 (sign) .. 0:")
        for name, ps in plan.p_table.items():
            print(f"  {name:<26} " + " ".join(f"{v:.3f}" for v in reversed(ps)))
    if args.csv:
        write_plan_csv(plan, args.csv)
        print(f"wrote {args.csv}")
    if args.out:
        save_plan(plan, args.out)
        print(f"wrote {args.out}")
    return 0


def cmd_run(argv: Sequence[str]) -> int:
    import numpy as np
    from diehardlab.hardening.sfi import faultlist
    from diehardlab.hardening.sfi.plan import activation_layers, injectable_layers, load_plan, make_plan
    from diehardlab.hardening.sfi.runner import run_campaign
    from diehardlab.hardening.sfi.sources import add_image_args, add_model_args, device_name, load_images, load_target

    p = make_parser("sfi run", "Inject a statistical fault list; classify every (fault, image); write tables.")
    add_model_args(p)
    add_image_args(p)
    p.add_argument("--plan", type=Path, help="plan JSON from 'diehard sfi plan --out' (faults drawn with --seed)")
    p.add_argument("--faults", type=Path, help="fault list CSV (SFIadvancedmodels columns) to run as it is")
    _plan_args(p, required=False)
    p.add_argument("--max-faults", type=int, help="run a seeded random subset of this many faults of the list")
    p.add_argument("--out", type=Path, required=True, help="output folder (progress, tables)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--engine", default="cached", choices=("cached", "naive", "ray"), help="default cached")
    p.add_argument("--ray-address", help="Ray cluster address for --engine ray (default: a local cluster)")
    p.add_argument("--shards", type=int, help="fault-list shards for --engine ray (default 4 per CPU)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--chunk", type=int, default=64, help="faults between progress checkpoints (default 64)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, help="CPU threads of torch (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if sum(x is not None for x in (args.plan, args.faults, args.method)) != 1:
        raise ConfigError("give exactly one of --plan FILE, --faults FILE or --method METHOD")
    device = device_name(args.device)
    target = load_target(args, device)
    images = load_images(args, target)
    layers = injectable_layers(target.model)
    if args.faults:
        faults = faultlist.read_csv(args.faults)
        source = {"faults_file": str(args.faults)}
        plan_t, fault_model, conf = None, None, args.confidence
    else:
        plan = (
            load_plan(args.plan)
            if args.plan
            else make_plan(
                target.model, args.method, args.error, args.confidence, args.fault_model, args.target, images.x[:1]
            )
        )
        faults = faultlist.draw(plan, args.seed)
        source = {"plan": plan.to_json() if not args.plan else str(args.plan), "seed": args.seed}
        plan_t, fault_model, conf = plan.t, plan.fault_model, plan.confidence
    if any(f.is_activation for f in faults):
        layers = layers + activation_layers(target.model, images.x[:1].to(device))
    if args.max_faults is not None and args.max_faults < len(faults):
        keep = np.sort(np.random.default_rng(args.seed).choice(len(faults), args.max_faults, replace=False))
        faults = [faults[i] for i in keep]
    from diehardlab.sampling import t_value

    t = plan_t if plan_t is not None else t_value(args.confidence)
    meta = {
        "model": target.name,
        "model_config": target.config,
        "dataset": target.dataset,
        "image_ids": images.ids,
        "fault_model": fault_model,
        "confidence": conf,
        "t": t,
        "batch_size": args.batch_size,
        "device": device,
        **source,
    }
    print(f"sfi run: {len(faults)} faults x {len(images.ids)} images on {device}, engine {args.engine} -> {args.out}")
    s = run_campaign(
        target.model,
        images,
        faults,
        args.out,
        layers,
        t,
        meta,
        target.model_hash,
        engine=args.engine,
        batch_size=args.batch_size,
        device=device,
        resume=args.resume,
        chunk=args.chunk,
        ray_address=args.ray_address,
        shards=args.shards,
    )
    print(
        f"faults {s['faults']}: masked {s['masked']}, non-critical {s['non_critical']}, SDC-1 {s['sdc1']} "
        f"(p_sdc1 {s['p_sdc1']:.4f}); {s['faults_per_s_this_call'] or 0} faults/s"
        + (f"; resumed after {s['resumed_from']} faults" if s["resumed_from"] else "")
    )
    est = s["estimate_sdc1"]
    print(
        f"network SDC-1 probability per fault: {est['p']:.4f} +/- {est['margin']:.4f} at {conf:g} confidence"
        + (" (stratum-weighted)" if est["weighted"] else "")
    )
    print(f"wrote {args.out}/per_fault.csv, per_layer_bit.csv, per_layer.csv, summary.json")
    return 0


def cmd_curve(argv: Sequence[str]) -> int:
    from diehardlab.hardening.sfi.curve import curve_from_run

    p = make_parser("sfi curve", "Fault detection curves: faults by worst outcome against the number of images.")
    p.add_argument(
        "--run", type=Path, required=True, help="output folder of 'diehard sfi run' (images in ranked order)"
    )
    p.add_argument("--orders", type=int, default=5, help="random image orders to average (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random orders")
    p.add_argument("--selection", type=Path, help="order the run's images by this ranking instead of the run's order")
    p.add_argument("--out", type=Path, required=True, help="output prefix: writes PREFIX.csv and PREFIX.png")
    args = p.parse_args(argv)
    res = curve_from_run(args.run, args.orders, args.seed, args.out, args.selection)
    print(json.dumps(res["summary"], indent=1))
    print(f"wrote {res['csv']}" + (f" and {res['png']}" if res["png"] else " (no plot: matplotlib missing)"))
    return 0


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    subs = {"plan": cmd_plan, "run": cmd_run, "curve": cmd_curve}
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: diehard sfi {plan,run,curve} [options]   (diehard sfi <action> --help for each)\n\n" + USAGE)
        return 0
    if argv[0] not in subs:
        print(f"diehard sfi: unknown action {argv[0]!r}; use plan, run or curve\n{USAGE}", file=sys.stderr)
        return 2
    return subs[argv[0]](argv[1:])
