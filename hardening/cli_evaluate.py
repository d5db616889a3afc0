"""``diehard evaluate``: the command line of ``diehardlab.hardening.evaluate`` (regret under injected faults).

Numbers, the ``--reproduce`` file and the output files are checked before torch is imported: a typo or a
read-only folder is refused in a fraction of a second, not after the campaigns.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from diehardlab.cli import make_parser
from diehardlab.errors import ConfigError, DataError
from diehardlab.outfiles import check_out_file, write_text_atomic

SPLITS = ("test", "val", "train")
LAYER_DISTS = ("uniform", "size")


def build_parser():
    from diehardlab.hardening.numerics import add_numerics_arg

    p = make_parser(
        "evaluate",
        "Clean accuracy, and regret (clean - faulty accuracy) over K seeded fault-injection campaigns with one\n"
        "fault per image. Example: diehard evaluate ckpt/dhn --fault-model block --campaigns 5 --json dhn.json",
    )
    p.add_argument("checkpoint", help="checkpoint folder written by 'diehard train'")
    p.add_argument("--fault-model", default=None, help="single, line, block (default), channel, mix")
    p.add_argument("--value", default=None, help="magnitude (default): multiply; nan; inf")
    p.add_argument("--magnitude", type=float, nargs=2, metavar=("LO", "HI"), help="factor range (default 1 1000)")
    p.add_argument("--block-channel-p", type=float, help="per-channel probability of a block fault (default 0.5)")
    p.add_argument("--block-max-frac", type=float, help="largest block side as a fraction of the map (default 0.5)")
    p.add_argument("--campaigns", type=int, default=None, help="number of campaigns K (default 5)")
    p.add_argument("--seed", type=int, default=None, help="seed of the first campaign; campaign k uses seed + k")
    p.add_argument("--split", choices=SPLITS, default=None, help="dataset split (default test)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images (0: all)")
    p.add_argument("--layer-dist", choices=LAYER_DISTS, default=None, help="layer distribution")
    p.add_argument("--data-dir", help="dataset folder (default: the one of the training config)")
    p.add_argument("--image-dir", help="labelled image files instead of the dataset (cifar10_03_0.png: label 0)")
    p.add_argument("--image-glob", default=None, help="files of --image-dir (default *.png)")
    p.add_argument("--mean", help="per-channel mean for --image-dir (default: the checkpoint's fixed one, else 0)")
    p.add_argument("--std", help="per-channel std for --image-dir (default: the checkpoint's fixed one, else 1)")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--json", help="write the result as JSON to this file")
    p.add_argument("--fault-list", help="write one CSV row per injected fault (campaign, image, layer, ...)")
    p.add_argument(
        "--reproduce",
        help="take fault spec, seeds, split (or image files), limit and layer distribution from a JSON result",
    )
    add_numerics_arg(p)
    return p


def _reproduced(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(campaign settings, fault spec) of an earlier JSON result; each field checked, errors name it."""
    try:
        conf = json.loads(Path(path).read_bytes().decode("utf-8"))["configuration"]
        spec = dict(conf["fault_spec"])
        base = {k: conf[k] for k in ("campaigns", "seed", "split", "limit", "layer_distribution")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        detail = f"no field {exc}" if isinstance(exc, KeyError) else type(exc).__name__
        raise DataError(f"--reproduce {path}: not a 'diehard evaluate' JSON result ({detail})") from None
    checks = {
        "campaigns": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "seed": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "limit": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "split": lambda v: v in SPLITS,
        "layer_distribution": lambda v: v in LAYER_DISTS,
    }
    images = conf.get("image_dir")
    if base["split"] == "image-dir":  # the earlier run read --image-dir files: the same folder, glob and constants
        fields_ok = (
            isinstance(images, dict) and isinstance(images.get("folder"), str) and isinstance(images.get("glob"), str)
        )
        if not fields_ok or not all(isinstance(images.get(k), str | None) for k in ("mean", "std")):
            raise DataError(f"--reproduce {path}: configuration -> image_dir: not a valid value ({images!r})")
        base.update(split="test", image_dir=images["folder"], image_glob=images["glob"])
        base.update(mean=images["mean"], std=images["std"])
    for key, ok in checks.items():
        if not ok(base[key]):
            raise DataError(f"--reproduce {path}: configuration -> {key}: not a valid value ({base[key]!r})")
    return base, spec


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads < 0:
        raise ConfigError(f"--threads must be >= 0 (got {args.threads}; 0: torch's default)")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1 (got {args.batch_size})")
    if args.campaigns is not None and args.campaigns < 1:
        raise ConfigError(f"--campaigns: need at least 1 (got {args.campaigns})")
    if args.limit is not None and args.limit < 0:
        raise ConfigError(f"--limit must be >= 0 (got {args.limit}; 0 uses every image)")
    # The outputs' folders are checked before the work, so a read-only or full one is not found an hour later.
    for option, value in (("--json", args.json), ("--fault-list", args.fault_list)):
        if value:
            check_out_file(value, option)
    base: dict[str, Any] = {"campaigns": 5, "seed": 0, "split": "test", "limit": 0, "layer_distribution": "uniform"}
    spec_dict: dict[str, Any] = {}
    if args.reproduce:
        reproduced, spec_dict = _reproduced(args.reproduce)
        base.update(reproduced)
    for key, val in (("campaigns", args.campaigns), ("seed", args.seed), ("split", args.split), ("limit", args.limit)):
        if val is not None:
            base[key] = val
    if args.layer_dist is not None:
        base["layer_distribution"] = args.layer_dist
    given = [o for o, v in (("--image-glob", args.image_glob), ("--mean", args.mean), ("--std", args.std)) if v]
    if given and not (args.image_dir or base.get("image_dir")):  # they were ignored without a word
        raise ConfigError(f"{', '.join(given)}: only with --image-dir FOLDER (or --reproduce of an --image-dir run)")
    if args.image_dir and (args.split or args.data_dir):
        raise ConfigError("--image-dir replaces the dataset: leave out --split and --data-dir")
    if args.image_dir or (base.get("image_dir") and not (args.split or args.data_dir)):
        for key in ("image_dir", "image_glob", "mean", "std"):
            if getattr(args, key) is not None:
                base[key] = getattr(args, key)
    else:
        base["image_dir"] = None

    # Only now the heavy part.
    import torch
    from diehardlab.hardening.evaluate import evaluate_checkpoint
    from diehardlab.hardening.faults import KINDS, VALUES, FaultSpec

    for option, value, allowed in (("--fault-model", args.fault_model, KINDS), ("--value", args.value, VALUES)):
        if value is not None and value not in allowed:
            raise ConfigError(f"{option} {value!r}: choose one of {', '.join(allowed)}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    overrides = {
        "kind": args.fault_model,
        "value": args.value,
        "magnitude": tuple(args.magnitude) if args.magnitude else None,
        "block_channel_p": args.block_channel_p,
        "block_max_frac": args.block_max_frac,
    }
    spec_dict.update({k: v for k, v in overrides.items() if v is not None})
    spec_dict.pop("layer_weights", None)
    spec = FaultSpec.from_dict(spec_dict, "fault spec")
    result = evaluate_checkpoint(
        args.checkpoint,
        spec,
        campaigns=base["campaigns"],
        seed=base["seed"],
        split=base["split"],
        data_dir=args.data_dir,
        limit=base["limit"],
        batch_size=args.batch_size,
        device=args.device,
        layer_dist=base["layer_distribution"],
        fault_list=args.fault_list,
        numerics=args.numerics,
        image_dir=base.get("image_dir"),
        image_glob=base.get("image_glob") or "*.png",
        mean=base.get("mean"),
        std=base.get("std"),
    )
    conf = result["configuration"]
    where = f"{conf['dataset']} {conf['split']}"
    if conf["image_dir"]:
        where = f"{conf['image_dir']['folder']}/{conf['image_dir']['glob']}"
    print(
        f"{conf['checkpoint']} ({conf['model_name']}, {where}, {conf['images']} images, "
        f"{conf['campaigns']} campaigns of {spec.kind}/{spec.value} faults, layers {conf['layer_distribution']}, "
        f"numerics {conf['numerics']['policy']})"
    )
    print(
        f"clean accuracy {result['clean_accuracy']:.4f}  faulty {result['faulty_accuracy_mean']:.4f}"
        f"  regret {result['regret_mean']:.4f} +- {result['regret_std']:.4f}"
        f"  critical {result['critical_rate']:.4f}  tolerable {result['tolerable_rate']:.4f}"
        f"  masked {result['masked_rate']:.4f}"
    )
    if args.json:
        out = write_text_atomic(args.json, json.dumps(result, indent=2) + "\n", "--json")
        print(f"wrote {out}", file=sys.stderr)
    return 0
