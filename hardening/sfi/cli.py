"""``diehard sfi plan|run|compare|curve``: statistical fault injection (see docs/sfi.md)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from diehardlab.cli import make_parser, run_action
from diehardlab.errors import ConfigError, DataError

USAGE = """\
diehard sfi plan    MODEL --method network|layer|data-unaware|data-aware|suite [--error E --confidence C] [--out P]
                    [--p-scope layer|network] [--p-csv F] [--p-plot F.png]
diehard sfi run     MODEL (--plan P | --faults F | --method M) [--images N | --selection F] [--numerics N]
                    [--dtype float16|bfloat16 | --quantize int8 [--calibration N]] --out DIR [--resume]
diehard sfi compare OURS PUBLISHED [--map-out FILE]     (a run folder or results CSV vs the suite's results CSV)
diehard sfi validate MODEL [--layer 0] [--samples 10] [--error E] [--p-scope layer|network] [--numerics N] --out DIR
                    (exhaustive campaign on one layer, then samples per method against it)
diehard sfi curve   --run DIR [--selection F] [--orders 5] [--plateau-threshold 5e-5] --out PREFIX
MODEL is a checkpoint folder, --model NAME (random weights; a zoo name such as cifar10/resnet20 works) or
--factory MODULE:CALLABLE --weights FILE."""


def _plan_args(p: argparse.ArgumentParser, required: bool, extra_targets: tuple[str, ...] = ()) -> None:
    from diehardlab.hardening.sfi.plan import FAULT_MODELS, METHODS, P_SCOPES, TARGETS

    p.add_argument("--method", choices=METHODS, required=required, help="how the population is split")
    p.add_argument("--error", type=float, default=0.01, help="error margin e (default 0.01)")
    p.add_argument("--confidence", type=float, default=0.99, help="confidence level (default 0.99: t = 2.58)")
    p.add_argument(
        "--fault-model",
        choices=FAULT_MODELS,
        help="stuck-at (0 and 1; the default) or bitflip (the default and only choice of --method suite)",
    )
    p.add_argument(
        "--target",
        default="weights",
        choices=TARGETS + extra_targets,
        help="weights (default) or activations"
        + (", or (--quantize int8) scales: the per-channel weight scales" if extra_targets else ""),
    )
    p.add_argument(
        "--p-scope",
        default="layer",
        choices=P_SCOPES,
        help="data-aware p(i) from each layer's weights (default) or from all the network's weights (the paper's)",
    )


def _check_margin(args) -> None:
    """--error and --confidence before any model is loaded (NaN fails both comparisons, so it is refused too)."""
    if not 0 < args.error < 1:
        raise ConfigError(f"--error: the error margin must be in (0, 1), got {args.error}")
    if not 0 < args.confidence < 1:
        raise ConfigError(f"--confidence: must be in (0, 1), got {args.confidence}")


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
    from diehardlab.hardening.sfi.plan import (
        default_fault_model,
        make_plan,
        plot_bit_stats,
        save_plan,
        write_bit_stats_csv,
        write_plan_csv,
    )
    from diehardlab.hardening.sfi.sources import add_image_args, add_model_args, load_target

    from diehardlab.outfiles import check_out_file

    p = make_parser("sfi plan", "Populations and sample sizes per network, layer and bit for a model.")
    add_model_args(p)
    add_image_args(p)
    _plan_args(p, required=True)
    p.add_argument("--csv", type=Path, help="write one row per population (layer, bit) to this CSV")
    p.add_argument("--out", type=Path, help="write the plan as JSON (input of 'diehard sfi run --plan')")
    p.add_argument("--bits", action="store_true", help="print every (layer, bit) row, not only per layer")
    p.add_argument("--p-csv", type=Path, help="data-aware: write f0, f1, d01, d10, D_avg and p per (scope, bit) here")
    p.add_argument("--p-plot", type=Path, help="data-aware: plot f0/f1, D_avg and p per bit (the paper's Figs. 3-4)")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "float16", "bfloat16"),
        help="plan the model as stored in this format: populations, strata and p(i) of its bits (default float32)",
    )
    args = p.parse_args(argv)
    _check_margin(args)
    for opt, path in (("--csv", args.csv), ("--out", args.out), ("--p-csv", args.p_csv), ("--p-plot", args.p_plot)):
        if path is not None:
            check_out_file(path, opt)
    if (args.p_csv or args.p_plot) and args.method != "data-aware":
        raise ConfigError("--p-csv/--p-plot: only --method data-aware computes f0, f1, D_avg and p per bit")
    target = load_target(args)
    fault_model = args.fault_model or default_fault_model(args.method)
    model, example = target.model, _example(args, target)
    if args.dtype != "float32":
        import torch

        dtype = getattr(torch, args.dtype)
        model = model.to(dtype)  # the planner reads each tensor's own width and bits
        example = example.to(dtype) if example is not None else None
    plan = make_plan(
        model,
        args.method,
        args.error,
        args.confidence,
        fault_model,
        args.target,
        example,
        args.p_scope,
    )
    widths = ", ".join(sorted({f"{x.dtype} ({x.width} bits)" for x in plan.layers}))
    scope = f", p(i) over {'all the network' if plan.p_scope == 'network' else 'each layer'}'s weights"
    print(
        f"model {target.name}: method {plan.method}, fault model {plan.fault_model}, target {plan.target}, "
        f"e = {plan.error:g}, confidence {plan.confidence:g} (t = {plan.t:g}), weights {widths}"
        + (scope if plan.method == "data-aware" else "")
    )
    print(f"{'layer':<28} {'elements':>10} {'population':>12} {'sample':>10}")
    for (name, pop, n), layer in zip(plan.per_layer(), plan.layers):
        print(f"{name:<28} {layer.numel:>10,} {pop:>12,} {n:>10,}")
    print(f"{'total':<28} {sum(x.numel for x in plan.layers):>10,} {plan.population:>12,} {plan.total:>10,}")
    suite = _zoo_entry(target)
    if suite is not None and plan.method == "suite" and suite.table_v:
        same = "the same" if suite.table_v == plan.total else "NOT the same"
        print(f"the suite's released list for {suite.name} has {suite.table_v:,} faults (its Table V): {same}")
    if args.bits and plan.method in ("data-unaware", "data-aware"):
        print(f"\n{'layer':<28} {'bit':>4} {'population':>10} {'p':>8} {'sample':>8}")
        for s in plan.strata:
            print(f"{s.layer:<28} {s.bit:>4} {s.population:>10,} {s.p:>8.4f} {s.n:>8,}")
    if plan.p_table:
        if plan.p_scope == "network":
            ps = plan.bit_stats["*"]["p"]
            print(f"\ndata-aware p(i) over all the network's weights (every layer), bits {len(ps) - 1} (sign) .. 0:")
            print("  " + " ".join(f"{v:.3f}" for v in reversed(ps)))
        else:
            print("\ndata-aware p(i) per layer, bits (sign) .. 0:")
            for name, ps in plan.p_table.items():
                print(f"  {name:<26} " + " ".join(f"{v:.3f}" for v in reversed(ps)))
    if args.csv:
        write_plan_csv(plan, args.csv)
        print(f"wrote {args.csv}")
    if args.p_csv:
        write_bit_stats_csv(plan, args.p_csv)
        print(f"wrote {args.p_csv}")
    if args.p_plot:
        done = plot_bit_stats(plan, args.p_plot)
        print(f"wrote {args.p_plot}" if done else f"no plot {args.p_plot}: matplotlib is not installed")
    if args.out:
        save_plan(plan, args.out)
        print(f"wrote {args.out}")
    return 0


def _zoo_entry(target):
    """The zoo entry of a target built from a zoo architecture, else None."""
    from diehardlab.hardening.models import is_zoo_arch

    arch = (target.config.get("model") or {}).get("arch", "")
    if not is_zoo_arch(arch):
        return None
    from diehardlab.hardening.zoo import entry

    return entry(arch)


def cmd_run(argv: Sequence[str]) -> int:
    import numpy as np
    from diehardlab.hardening.numerics import add_numerics_arg, parse_numerics
    from diehardlab.hardening.sfi import faultlist
    from diehardlab.hardening.sfi.plan import (
        activation_layers,
        default_fault_model,
        injectable_layers,
        load_plan,
        make_plan,
    )
    from diehardlab.hardening.sfi.runner import run_campaign
    from diehardlab.hardening.sfi.sources import add_image_args, add_model_args, device_name, load_images, load_target

    p = make_parser("sfi run", "Inject a statistical fault list; classify every (fault, image); write tables.")
    add_model_args(p)
    add_image_args(p)
    p.add_argument("--plan", type=Path, help="plan JSON from 'diehard sfi plan --out' (faults drawn with --seed)")
    p.add_argument(
        "--faults",
        "--fault-list",
        dest="faults",
        type=Path,
        help="fault list CSV to run as it is: ours, the suite's 4- or 8-column form or SFIadvancedmodels'",
    )
    _plan_args(p, required=False, extra_targets=("scales",))
    _format_args(p)
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
    add_numerics_arg(p)
    args = p.parse_args(argv)
    _check_margin(args)
    if args.max_faults is not None and args.max_faults < 1:
        raise ConfigError(f"--max-faults must be >= 1, got {args.max_faults}")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if args.target != "scales" and sum(x is not None for x in (args.plan, args.faults, args.method)) != 1:
        raise ConfigError("give exactly one of --plan FILE, --faults FILE or --method METHOD")
    policy = parse_numerics(args.numerics)
    device = device_name(args.device)
    target = load_target(args, device)
    images = load_images(args, target)
    layers = injectable_layers(target.model)
    float_model = target.model
    dep = _deploy(args, target, images, policy, device)
    lines = None
    if args.target == "scales":
        faults, layers, plan_t, fault_model, conf = _scale_faults(args, dep)
        source = {"seed": args.seed, "target": "scales"}
        unsampled = {}
    elif args.faults:
        read = faultlist.read_list(args.faults)
        faults, lines = read.faults, read.rows_line
        source = {"faults_file": str(args.faults), "faults_form": read.form}
        plan_t, fault_model, conf = None, None, args.confidence
        unsampled = {}
        _note_list(read, target)
    else:
        # A model in another format is planned as it is stored: populations, per-bit strata and data-aware p(i) of
        # its own 16 bits, or of an int8 layer's 8-bit weight codes (with their scales: p(i) weighs the change in
        # the number a code stands for). Autocast keeps float32 storage, so its plan is float32's.
        own = dep.name in ("float16", "bfloat16", "int8")
        plan = (
            load_plan(args.plan)
            if args.plan
            else make_plan(
                dep.model if own else target.model,
                args.method,
                args.error,
                args.confidence,
                args.fault_model or default_fault_model(args.method),
                args.target,
                images.x[:1].to(dep.input_dtype) if own and dep.input_dtype is not None else images.x[:1],
                args.p_scope,
            )
        )
        faults = faultlist.draw(plan, args.seed)
        if dep.name != "float32":
            widths = _widths(dep, images)
            if any(x.width != widths.get(x.tensors[0], x.width) for x in plan.layers):  # a plan of another format
                faults = faultlist.to_width(faults, widths, plan.layers[0].width)
        source = {"plan": plan.to_json() if not args.plan else str(args.plan), "seed": args.seed}
        plan_t, fault_model, conf = plan.t, plan.fault_model, plan.confidence
        unsampled = {f"{s.layer}/{s.bit if s.bit >= 0 else 'all'}": s.population for s in plan.strata if s.n <= 0}
        if plan.target == "weights":
            layers = plan.layers
    if any(f.is_activation for f in faults):
        layers = layers + activation_layers(float_model, images.x[:1].to(device))
    if args.max_faults is not None and args.max_faults < len(faults):
        keep = np.sort(np.random.default_rng(args.seed).choice(len(faults), args.max_faults, replace=False))
        faults = [faults[i] for i in keep]
        lines = [lines[i] for i in keep] if lines else None
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
    print(
        f"sfi run: {len(faults)} faults x {len(images.ids)} images on {device}, engine {args.engine}, "
        f"format {dep.name}, numerics {policy.spec()} -> {args.out}"
    )
    s = run_campaign(
        dep.model,
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
        numerics=policy,
        fault_lines=lines,
        unsampled=unsampled,
        input_dtype=dep.input_dtype,
        number_format=dep.record,
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
    st = s["suite_table"]
    if st["golden_accuracy"] is not None:
        print(
            f"golden accuracy {100 * st['golden_accuracy']:.2f} %, faulty accuracy {100 * st['faulty_accuracy']:.2f} % "
            f"over {st['inferences']:,} inferences (masked {st['masked_pct']:.2f} %, non-critical "
            f"{st['non_critical_pct']:.2f} %, SDC-1 {st['sdc1_pct']:.2f} %)"
        )
    extra = ", suite_results.csv" if "suite_results" in s else ""
    print(f"wrote {args.out}/per_fault.csv, per_layer_bit.csv, per_layer.csv{extra}, summary.json")
    return 0


def _format_args(p: argparse.ArgumentParser) -> None:
    from diehardlab.hardening.formats import DTYPES, INT8_MODES, QUANTIZE

    p.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="store and compute the model in this format (the checkpoint converted; default float32)",
    )
    p.add_argument(
        "--quantize",
        choices=QUANTIZE,
        help="int8: post-training static quantization (torch.ao, fbgemm), calibrated on --calibration images",
    )
    p.add_argument(
        "--calibration",
        type=int,
        default=64,
        help="images that calibrate --quantize: the first N of the dataset's train split, or of the run's own "
        "images when there is no dataset (default 64)",
    )
    p.add_argument(
        "--int8",
        default="auto",
        choices=INT8_MODES,
        help="int8 kernels: fbgemm (torch.ao, CPU), emulate (exact emulation, any device); auto: fbgemm on the "
        "CPU, emulate elsewhere",
    )


def _deploy(args, target, images, policy, device):
    """The target's model in the format of --dtype / --quantize (formats.deploy), with its calibration record."""
    from diehardlab.hardening.formats import deploy

    calib, record = images.x[:1], None
    if args.quantize:
        from diehardlab.hardening.quantize import calibration_record

        if args.calibration < 1:
            raise ConfigError(f"--calibration must be >= 1, got {args.calibration}")
        ds = None
        if target.dataset and not args.image_dir:
            from diehardlab.hardening.data import fixed_normalisation, load_dataset

            try:
                ds = load_dataset(target.dataset, "train", args.data_dir, fixed_normalisation(target.config))
            except DataError as exc:
                print(
                    f"note: --quantize int8: no {target.dataset} train split to calibrate on ({exc})", file=sys.stderr
                )
        if ds is not None:
            calib, ids = ds.x[: args.calibration], [str(i) for i in range(args.calibration)]
            where = f"{target.dataset} train split"
        else:
            calib, ids = images.x[: args.calibration], images.ids[: args.calibration]
            where = "the run's own images (no dataset with a train split)"
            print(f"note: --quantize int8 calibrates on {where}", file=sys.stderr)
        record = calibration_record(calib, ids[: calib.shape[0]], where)
    return deploy(
        target.model,
        args.dtype,
        args.quantize,
        calib,
        device,
        args.int8,
        "fp32" if policy.uniform == "fp32" else policy.spec(),
        record,
    )


def _widths(dep, images) -> dict[str, int]:
    """The format width of every stored tensor and layer output of the deployed model."""
    from diehardlab.hardening.sfi.targets import output_shapes, stored_tensors

    widths = {name: s.fmt.width for name, s in stored_tensors(dep.model).items()}
    first = next(iter(dep.model.buffers()), None)
    dev = first.device if first is not None else "cpu"
    x = images.x[:1].to(dev, dep.input_dtype or images.x.dtype)
    widths.update({f"{k}.output": v[0].width for k, v in output_shapes(dep.model, x).items()})
    return widths


def _scale_faults(args, dep):
    """--target scales: a network-wise sample over every bit of every per-channel weight scale (float32)."""
    from diehardlab.hardening.sfi.faultlist import draw_uniform
    from diehardlab.hardening.sfi.plan import Layer
    from diehardlab.hardening.sfi.targets import layer_kind, stored_tensors

    from diehardlab.sampling import sample_size, t_value

    if dep.name != "int8":
        raise ConfigError("--target scales: the per-channel weight scales exist in an int8 model (add --quantize int8)")
    if args.faults or args.plan:
        raise ConfigError("--target scales draws its own sample; give --method network (or none), not --plan/--faults")
    mods = dict(dep.model.named_modules())
    scales = [s for n, s in stored_tensors(dep.model).items() if n.endswith("weight_scale")]
    tensors = [(s.name, s.shape, s.fmt.width) for s in scales]
    fault_model = args.fault_model or "stuck-at"
    vals = 2 if fault_model == "stuck-at" else 1
    t = t_value(args.confidence)
    n = sample_size(sum(math.prod(s) * w * vals for _, s, w in tensors), args.error, t)
    faults = draw_uniform(tensors, n, fault_model, args.seed)
    layers = [
        Layer(s.name.rsplit(".", 1)[0], layer_kind(mods[s.name.rsplit(".", 1)[0]]) or "conv", [s.name], [s.shape])
        for s in scales
    ]
    return faults, layers, t, fault_model, args.confidence


def _note_list(read, target) -> None:
    """Say when a suite list has another size than the suite's list for this model (cut short? another list?)."""
    if not read.ends_with_newline:
        print(f"note: {read.path}: the last line has no newline (its last row was read as it is)", file=sys.stderr)
    e = _zoo_entry(target)
    if e is not None and e.table_v and read.form in ("suite", "suite-results") and len(read.faults) != e.table_v:
        print(
            f"note: {read.path} has {len(read.faults):,} rows; the suite's released list for {e.name} has "
            f"{e.table_v:,} (a subset, or another list?)",
            file=sys.stderr,
        )


def cmd_compare(argv: Sequence[str]) -> int:
    import numpy as np
    from diehardlab.hardening.sfi.compare import compare, infer_numerics, load_side, result_table

    from diehardlab.outfiles import check_out_file, write_text_atomic

    p = make_parser(
        "sfi compare",
        "Our outcomes against the published ones, fault by fault; the suite's result table for both; and the\n"
        "numerics (per-layer fp32/tf32) the published outcomes were computed in.\n"
        "Example: diehard sfi compare runs/r20 ResNet20_FL.csv --map-out resnet20-numerics.toml",
    )
    p.add_argument("ours", type=Path, help="output folder of 'diehard sfi run' (or a results CSV in the suite's form)")
    p.add_argument("published", type=Path, help="the published results: the suite's 8-column list")
    p.add_argument("--show", type=int, default=20, help="inconsistent faults to list (default 20)")
    p.add_argument("--low-bits", default="0-11", help="mantissa bits whose flips TF32 rounds away (default 0-11)")
    p.add_argument("--map-out", type=Path, help="write the inferred numerics map here (TOML, for --numerics)")
    p.add_argument("--json", type=Path, help="write the comparison (counts, table, map, inconsistent faults) here")
    args = p.parse_args(argv)
    lo, _, hi = args.low_bits.partition("-")
    try:
        low = range(int(lo), int(hi or lo) + 1)
    except ValueError:
        raise ConfigError(f"--low-bits: {args.low_bits!r} is not a bit range such as 0-11") from None
    if not (low.start >= 0 and low.stop <= 23 and len(low)):
        raise ConfigError(f"--low-bits: {args.low_bits!r} must lie within the mantissa, bits 0-22")
    if args.show < 0:
        raise ConfigError(f"--show must be >= 0, got {args.show}")
    for opt, path in (("--map-out", args.map_out), ("--json", args.json)):
        if path is not None:
            check_out_file(path, opt)  # before the comparison, not after it
    published = load_side(args.published, "PUBLISHED")
    ours = load_side(args.ours, "OURS")
    cmp = compare(ours, published)
    numerics = (ours.run.get("numerics") or {}).get("policy", "unrecorded") if ours.run else "unrecorded"
    n_ok = int(cmp.consistent.sum())
    print(
        f"{cmp.n:,} faults of {ours.source} (numerics {numerics}, {ours.images} images each) against "
        f"{published.source} ({published.images:,} images each)"
    )
    print(f"consistent: {n_ok:,} of {cmp.n:,} = {100 * n_ok / max(cmp.n, 1):.2f} %")
    bad = np.flatnonzero(~cmp.consistent)
    if len(bad):
        print(f"\ninconsistent faults (first {min(args.show, len(bad))} of {len(bad)}):")
        for i in bad[: args.show]:
            f = ours.faults[i]
            print(f"  {f.injection:>6} {f.module:<22} {f.index!s:<18} bit {f.bit:>2}: {cmp.reasons[i]}")
        by_layer: dict[str, list[int]] = {}
        for i in range(cmp.n):
            by_layer.setdefault(ours.faults[i].module, [0, 0])
            by_layer[ours.faults[i].module][0] += 1
            by_layer[ours.faults[i].module][1] += int(not cmp.consistent[i])
        worst = sorted(by_layer.items(), key=lambda kv: -kv[1][1])[:5]
        print("  most inconsistent layers: " + ", ".join(f"{k} {v[1]}/{v[0]}" for k, v in worst if v[1]))
    print("\nthe suite's result table (percent of inferences):")
    head = f"{'golden acc':>10} {'inferences':>13} {'Masked':>8} {'Non-crit.':>9} {'SDC-1':>7} {'faulty acc':>10}"
    print(f"  {'':<10} {head}")
    tables = {}
    for label, side in (("ours", ours), ("published", published)):
        t = result_table(side)
        tables[label] = t
        ga = f"{100 * t['golden_accuracy']:.2f}" if t["golden_accuracy"] is not None else "-"
        fa = f"{100 * t['faulty_accuracy']:.2f}" if t["faulty_accuracy"] is not None else "-"
        print(
            f"  {label:<10} {ga:>10} {t['inferences']:>13,} {t['masked_pct']:>8.2f} {t['non_critical_pct']:>9.2f} "
            f"{t['sdc1_pct']:>7.2f} {fa:>10}"
        )
    policy, evidence = infer_numerics(published, low)
    # the same share in our run: a layer we computed in another arithmetic than the publication shows here
    ours_low: dict[str, list[int]] = {}
    for i, f in enumerate(ours.faults):
        if f.bit in low and f.tensor.endswith(".weight"):
            ours_low.setdefault(f.module, [0, 0])
            ours_low[f.module][0] += 1
            ours_low[f.module][1] += int(ours.counts[i, 0] == ours.images)
    print(
        f"\nbit {low.start}-{low.stop - 1} flips masked on every image, per layer: published (what the map is "
        "inferred from) and ours"
    )
    for ev in evidence:
        share = f"{100 * ev.share:6.1f} %" if ev.low_bit_faults else "     -  "
        n, k = ours_low.get(ev.layer, [0, 0])
        mine = f"{k:>5}/{n:<5} {100 * k / n:6.1f} %" if n else f"{'-':>20}"
        pub = f"{ev.all_masked:>5}/{ev.low_bit_faults:<5} {share}"
        print(f"  {ev.layer:<28} {pub}  {ev.arithmetic or '?':<5}  ours {mine}")
    print(f"inferred map: --numerics '{policy.spec()}'")
    if args.map_out:
        write_text_atomic(args.map_out, policy.to_toml(), "--map-out")
        print(f"wrote {args.map_out}")
    if args.json:
        doc = {
            "ours": ours.source,
            "published": published.source,
            "numerics_of_ours": numerics,
            "faults": cmp.n,
            "consistent": n_ok,
            "inconsistent": [
                {
                    "injection": ours.faults[i].injection,
                    "layer": ours.faults[i].module,
                    "index": list(ours.faults[i].index),
                    "bit": ours.faults[i].bit,
                    "why": cmp.reasons[i],
                }
                for i in bad
            ],
            "tables": tables,
            "inferred_numerics": policy.spec(),
            "evidence": [
                {"layer": e.layer, "low_bit_faults": e.low_bit_faults, "all_masked": e.all_masked} for e in evidence
            ],
        }
        write_text_atomic(args.json, json.dumps(doc, indent=1), "--json")
        print(f"wrote {args.json}")
    return 0


def cmd_curve(argv: Sequence[str]) -> int:
    from diehardlab.hardening.sfi.curve import PLATEAU_SCALES, PLATEAU_THRESHOLD, curve_from_run

    p = make_parser("sfi curve", "Fault detection curves: faults by worst outcome against the number of images.")
    p.add_argument(
        "--run", type=Path, required=True, help="output folder of 'diehard sfi run' (images in ranked order)"
    )
    p.add_argument("--orders", type=int, default=5, help="random image orders to average (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random orders")
    p.add_argument(
        "--selection",
        type=Path,
        help="order the run's images by this ranking instead of the run's order (a window may rank some of them)",
    )
    p.add_argument(
        "--plateau-threshold",
        type=float,
        default=PLATEAU_THRESHOLD,
        help="DEAR-CNN's pre-plateau cutoff: stop where the normalised curve's slope per image falls below this "
        "(default 5e-5, the paper's)",
    )
    p.add_argument(
        "--plateau-window",
        type=int,
        default=1,
        help="images the slope is measured over (forward difference; default 1)",
    )
    p.add_argument(
        "--plateau-scale",
        choices=PLATEAU_SCALES,
        default="faults",
        help="normalise the critical-fault curve by the run's faults (the critical rate; default) or by the "
        "critical faults found with all images",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="output prefix: writes PREFIX.csv, PREFIX.json and PREFIX.png"
    )
    args = p.parse_args(argv)
    res = curve_from_run(
        args.run,
        args.orders,
        args.seed,
        args.out,
        args.selection,
        args.plateau_threshold,
        args.plateau_window,
        args.plateau_scale,
    )
    s = res["summary"]
    print(json.dumps({k: v for k, v in s.items() if k != "plateau"}, indent=1))
    for key, name in (("ranked", "ranked"), ("random_mean", "random orders (mean)")):
        c = s["plateau"][key]
        where = (
            f"plateau after {c['images_needed']}" if c["plateau_reached"] else f"no plateau: all {c['images_needed']}"
        )
        saved = f", {c['fi_seconds_saved']:.1f} s" if c["fi_seconds_saved"] is not None else ""
        print(
            f"{name}: {where} of {s['images']} images ({100 * c['share_of_images']:.1f} %), "
            f"{c['critical_found']:.1f} of {c['critical_all_images']:.0f} critical faults "
            f"({100 * (c['critical_coverage'] or 0):.1f} %), "
            f"FI time saved {100 * c['fi_time_saved_share']:.1f} %{saved}"
        )
    ro = s["plateau"]["random_orders"]
    print(
        f"each random order: {ro['images_needed_mean']:.1f} +/- {ro['images_needed_std']:.1f} images "
        f"({ro['plateau_reached']} of {len(ro['images_needed'])} reached a plateau), "
        f"{100 * ro['critical_coverage_mean']:.1f} % of the critical faults"
    )
    if "spearman_score_vs_critical_per_image" in s:
        print(f"Spearman rho, image score vs faults critical on it: {s['spearman_score_vs_critical_per_image']}")
    wrote = [str(res["csv"]), str(res["json"])] + ([str(res["png"])] if res["png"] else [])
    print("wrote " + ", ".join(wrote) + ("" if res["png"] else " (no plot: matplotlib missing)"))
    return 0


def cmd_validate(argv: Sequence[str]) -> int:
    from diehardlab.hardening.numerics import add_numerics_arg, parse_numerics
    from diehardlab.hardening.sfi.plan import P_SCOPES, injectable_layers
    from diehardlab.hardening.sfi.sources import add_image_args, add_model_args, device_name, load_images, load_target
    from diehardlab.hardening.sfi.validate import VALIDATE_METHODS, SampleSpec, pick_layer, validate

    p = make_parser(
        "sfi validate",
        "The validity of statistical FI, measured as Ruospo et al. (DATE 2023, Fig. 6 and Table III) do: an\n"
        "exhaustive campaign on one layer (every weight, every bit, both stuck-at values), then independent\n"
        "samples per method, each estimate and its margin against the exhaustive critical rate.\n"
        "Example: diehard sfi validate ckpt/r20 --data-dir $FB --layer 0 --out val/r20",
    )
    add_model_args(p)
    add_image_args(p)
    p.add_argument("--layer", default="0", help="module name or position of the layer (default 0: the first)")
    p.add_argument("--samples", type=int, default=10, help="independent samples per method (default 10)")
    p.add_argument("--methods", default=",".join(VALIDATE_METHODS), help="comma-separated (default all four)")
    p.add_argument("--error", type=float, default=0.01, help="error margin e of the plans (default 0.01)")
    p.add_argument("--confidence", type=float, default=0.99, help="confidence level (default 0.99: t = 2.58)")
    p.add_argument("--p-scope", default="layer", choices=P_SCOPES, help="data-aware p(i): per layer or network")
    p.add_argument("--out", type=Path, required=True, help="output folder (exhaustive/ run, samples.csv, JSON)")
    p.add_argument("--engine", default="cached", choices=("cached", "naive"), help="default cached")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--chunk", type=int, default=256, help="faults between progress checkpoints (default 256)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, help="CPU threads of torch (default: torch's choice)")
    add_numerics_arg(p)
    args = p.parse_args(argv)
    if args.samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {args.samples}")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    bad = [m for m in methods if m not in VALIDATE_METHODS]
    if bad or not methods:
        raise ConfigError(f"--methods: {', '.join(bad) or 'none given'}; choose from {', '.join(VALIDATE_METHODS)}")
    _check_margin(args)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out: {args.out} is a file; give a folder")
    policy = parse_numerics(args.numerics)
    device = device_name(args.device)
    target = load_target(args, device)
    images = load_images(args, target)
    layer = pick_layer(injectable_layers(target.model), args.layer)
    res = validate(
        target,
        images,
        layer,
        args.out,
        SampleSpec(methods, args.samples, args.seed, args.error, args.confidence, args.p_scope),
        policy=policy,
        device=device,
        engine=args.engine,
        batch_size=args.batch_size,
        chunk=args.chunk,
        options=vars(args),
    )
    ex = res["exhaustive"]
    print(
        f"exhaustive: layer {layer.name}, {layer.numel:,} weights x {layer.width} bits x 2 = {ex['faults']:,} faults "
        f"x {ex['images']} images: {ex['critical']:,} critical, rate {100 * ex['critical_rate']:.4f} %"
    )
    print(f"\n{'method':<13} {'sample':>6} {'seed':>5} {'faults':>7} {'critical':>8} {'estimate %':>11} "
          f"{'margin %':>9} {'inside':>6}")  # fmt: skip
    for r in res["samples"]:
        print(
            f"{r['method']:<13} {r['sample']:>6} {r['seed']:>5} {r['faults']:>7,} {r['critical']:>8} "
            f"{100 * r['estimate']:>11.4f} {100 * r['margin']:>9.4f} {'yes' if r['inside'] else 'NO':>6}"
        )
    print(f"\n{'method':<13} {'faults (mean)':>13} {'contain':>8} {'avg margin %':>13} {'avg |error| %':>14} "
          f"{'contain at p=0.5':>17} {'avg margin p=0.5 %':>19}")  # fmt: skip
    for m, s in res["methods"].items():
        print(
            f"{m:<13} {s['faults_mean']:>13,.1f} {s['contain']:>4} of {s['samples'] - s['empty_samples']:<2}"
            f"{100 * s['margin_mean']:>13.4f} {100 * s['abs_error_mean']:>14.4f} {s['contain_p05']:>10} of "
            f"{s['samples'] - s['empty_samples']:<3} {100 * s['margin_p05_mean']:>19.4f}"
            + (f"  ({s['empty_samples']} samples drew no fault in the layer)" if s["empty_samples"] else "")
        )
    print(f"wrote {res['csv']}, {res['json']}, {res['rows']} (exhaustive campaign in {args.out / 'exhaustive'})")
    return 0


def main(argv: Sequence[str]) -> int:
    return run_action(
        "sfi",
        argv,
        {"plan": cmd_plan, "run": cmd_run, "compare": cmd_compare, "curve": cmd_curve, "validate": cmd_validate},
        USAGE,
    )
