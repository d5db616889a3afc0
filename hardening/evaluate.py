"""``diehard evaluate``: clean accuracy and regret under injected faults, as the DieHardNet paper's Fig. 5.

K seeded campaigns over a dataset split; in each, every image gets exactly one fault in one conv layer (drawn
per image from the layer distribution: ``uniform`` over the conv layers, or ``size`` proportional to the
number of output elements). Per campaign: faulty accuracy, regret = clean accuracy - faulty accuracy, critical
rate (top-1 differs from the fault-free top-1, or the output is not finite), tolerable rate (output changed,
top-1 kept), masked rate (output bit-identical). The JSON output holds the fault spec, the seeds and the layer
list, so ``--reproduce FILE`` runs the same campaigns again.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from diehardlab.hardening.checkpoint import load_model
from diehardlab.hardening.data import load_dataset
from diehardlab.hardening.faults import KINDS, VALUES, FaultInjector, FaultSpec
from diehardlab.hardening.models import conv_layers
from diehardlab.hardening.train import pick_device, top1

from diehardlab.errors import ConfigError, DataError


def _layer_weights(model: torch.nn.Module, layers: list[tuple[str, Any]], x: torch.Tensor, dist: str) -> list[float]:
    if dist == "uniform":
        return [1.0] * len(layers)
    sizes: dict[int, int] = {}
    hooks = [
        m.register_forward_hook(lambda mod, i, o, k=k: sizes.__setitem__(k, o[0].numel()))
        for k, (_, m) in enumerate(layers)
    ]
    with torch.no_grad():
        model(x[:1])
    for h in hooks:
        h.remove()
    return [float(sizes[k]) for k in range(len(layers))]


@torch.no_grad()
def _logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int, inj: FaultInjector | None = None):
    """Logits of ``x`` by batches; with a recording injector, also the faulted layer and the number of
    corrupted elements per image (for the fault list)."""
    outs, counts, layers = [], [], []
    recording = inj is not None and inj.record
    for i in range(0, len(x), batch_size):
        outs.append(model(x[i : i + batch_size]).float())
        if recording:
            layer = inj.last["layer"]
            n = torch.zeros(len(layer), dtype=torch.long, device=x.device)
            for _, mask in inj.last["masks"]:
                n += mask.flatten(1).sum(1)
            counts.append(n.cpu())
            layers.append(layer.cpu())
    logits = torch.cat(outs)
    if not recording:
        return logits, None, None
    return logits, torch.cat(layers), torch.cat(counts)


def evaluate_checkpoint(
    ckpt_dir: str | Path,
    spec: FaultSpec,
    campaigns: int = 5,
    seed: int = 0,
    split: str = "test",
    data_dir: str | None = None,
    limit: int = 0,
    batch_size: int = 1000,
    device: str = "auto",
    layer_dist: str = "uniform",
    fault_list: str | Path | None = None,
    numerics: str = "fp32",
) -> dict[str, Any]:
    """Clean accuracy and K injection campaigns on a checkpoint; returns the result dict (the JSON output)."""
    from diehardlab.hardening.data import fixed_normalisation
    from diehardlab.hardening.numerics import apply_numerics, parse_numerics

    from diehardlab import __version__

    if campaigns < 1:
        raise ConfigError(f"--campaigns: need at least 1 (got {campaigns})")
    if layer_dist not in ("uniform", "size"):
        raise ConfigError(f"--layer-dist: uniform or size (got {layer_dist!r})")
    policy = parse_numerics(numerics)
    dev = pick_device(device)
    loaded = load_model(ckpt_dir, dev)
    model = loaded.model
    applied = apply_numerics(model, policy, dev)
    data_dir = data_dir or loaded.config.get("data_dir") or None
    ds = load_dataset(loaded.dataset, split, data_dir, fixed_normalisation(loaded.config))
    x, y = ds.x, ds.y
    if limit:
        x, y = x[:limit], y[:limit]
    x, y = x.to(dev), y.to(dev)
    layers = conv_layers(model)
    weights = _layer_weights(model, layers, x, layer_dist)
    eval_spec = replace(spec, p=1.0, layer_choice="per-image", magnitude_scale=1.0, layer_weights=weights)

    clean_logits, _, _ = _logits(model, x, batch_size)
    clean_pred = top1(clean_logits)
    clean_acc = (clean_pred == y).float().mean().item()
    rows: list[dict[str, Any]] = []
    per_campaign: list[dict[str, Any]] = []
    for c in range(campaigns):
        cseed = seed + c
        with FaultInjector(model, eval_spec, torch.Generator().manual_seed(cseed), layers) as inj:
            # Masks cost a full-size pass per faulted layer: only build them when the fault list wants them.
            inj.record = fault_list is not None
            logits, layer_idx, counts = _logits(model, x, batch_size, inj)
        pred = top1(logits)
        finite = torch.isfinite(logits).all(dim=1)
        changed = (logits != clean_logits).any(dim=1) | ~finite
        critical = pred != clean_pred
        faulty_acc = (pred == y).float().mean().item()
        per_campaign.append(
            {
                "seed": cseed,
                "faulty_accuracy": faulty_acc,
                "regret": clean_acc - faulty_acc,
                "critical_rate": critical.float().mean().item(),
                "tolerable_rate": (changed & ~critical).float().mean().item(),
                "masked_rate": (~changed).float().mean().item(),
                "nonfinite_rate": (~finite).float().mean().item(),
            }
        )
        if fault_list is not None:
            for i, (li, n, cp, fp, lab) in enumerate(
                zip(layer_idx.tolist(), counts.tolist(), clean_pred.tolist(), pred.tolist(), y.tolist())
            ):
                rows.append(
                    {
                        "campaign": c,
                        "seed": cseed,
                        "image": i,
                        "layer": li,
                        "layer_name": layers[li][0],
                        "corrupted_elements": n,
                        "label": lab,
                        "clean_pred": cp,
                        "faulty_pred": fp,
                    }
                )

    def mean(key: str) -> float:
        return statistics.fmean(r[key] for r in per_campaign)

    def std(key: str) -> float:
        return statistics.stdev(r[key] for r in per_campaign) if len(per_campaign) > 1 else 0.0

    result = {
        "clean_accuracy": clean_acc,
        "faulty_accuracy_mean": mean("faulty_accuracy"),
        "faulty_accuracy_std": std("faulty_accuracy"),
        "regret_mean": mean("regret"),
        "regret_std": std("regret"),
        "critical_rate": mean("critical_rate"),
        "tolerable_rate": mean("tolerable_rate"),
        "masked_rate": mean("masked_rate"),
        "nonfinite_rate": mean("nonfinite_rate"),
        "campaigns": per_campaign,
        "configuration": {
            "checkpoint": str(ckpt_dir),
            "model_hash": loaded.model_hash,
            "model_name": loaded.config.get("name"),
            "model": loaded.config.get("model"),
            "dataset": loaded.dataset,
            "split": split,
            "limit": limit,
            "images": len(y),
            "campaigns": campaigns,
            "seed": seed,
            "campaign_seeds": [r["seed"] for r in per_campaign],
            "fault_spec": spec.to_dict(),
            "layer_distribution": layer_dist,
            "layers": [name for name, _ in layers],
            "batch_size": batch_size,
            "device": str(dev),
            "numerics": applied.record(),
            "diehardlab_version": __version__,
            "torch_version": torch.__version__,
        },
    }
    if fault_list is not None:
        path = Path(fault_list)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return result


def main(argv: list[str] | None = None) -> int:
    from diehardlab.cli import make_parser

    p = make_parser(
        "evaluate",
        "Clean accuracy, and regret (clean - faulty accuracy) over K seeded fault-injection campaigns with one\n"
        "fault per image. Example: diehard evaluate ckpt/dhn --fault-model block --campaigns 5 --json dhn.json",
    )
    p.add_argument("checkpoint", help="checkpoint folder written by 'diehard train'")
    p.add_argument("--fault-model", choices=KINDS, default=None, help="single, line, block (default), channel, mix")
    p.add_argument("--value", choices=VALUES, default=None, help="magnitude (default): multiply; nan; inf")
    p.add_argument("--magnitude", type=float, nargs=2, metavar=("LO", "HI"), help="factor range (default 1 1000)")
    p.add_argument("--block-channel-p", type=float, help="per-channel probability of a block fault (default 0.5)")
    p.add_argument("--block-max-frac", type=float, help="largest block side as a fraction of the map (default 0.5)")
    p.add_argument("--campaigns", type=int, default=None, help="number of campaigns K (default 5)")
    p.add_argument("--seed", type=int, default=None, help="seed of the first campaign; campaign k uses seed + k")
    p.add_argument("--split", choices=("test", "val", "train"), default=None, help="dataset split (default test)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images (0: all)")
    p.add_argument("--layer-dist", choices=("uniform", "size"), default=None, help="layer distribution")
    p.add_argument("--data-dir", help="dataset folder (default: the one of the training config)")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--json", help="write the result as JSON to this file")
    p.add_argument("--fault-list", help="write one CSV row per injected fault (campaign, image, layer, ...)")
    p.add_argument("--reproduce", help="take fault spec, seeds, split, limit and layer distribution from a JSON result")
    from diehardlab.hardening.numerics import add_numerics_arg

    add_numerics_arg(p)
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    base: dict[str, Any] = {"campaigns": 5, "seed": 0, "split": "test", "limit": 0, "layer_distribution": "uniform"}
    spec_dict: dict[str, Any] = {}
    if args.reproduce:
        try:
            conf = json.loads(Path(args.reproduce).read_text())["configuration"]
            spec_dict = dict(conf["fault_spec"])
            base.update({k: conf[k] for k in base})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{args.reproduce}: not a 'diehard evaluate' JSON result ({exc})") from exc
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
    for key, val in (("campaigns", args.campaigns), ("seed", args.seed), ("split", args.split), ("limit", args.limit)):
        if val is not None:
            base[key] = val
    if args.layer_dist is not None:
        base["layer_distribution"] = args.layer_dist
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
    )
    conf = result["configuration"]
    print(
        f"{conf['checkpoint']} ({conf['model_name']}, {conf['dataset']} {conf['split']}, {conf['images']} images, "
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
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}", file=sys.stderr)
    return 0
