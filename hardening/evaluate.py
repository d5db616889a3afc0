"""``diehard evaluate``: clean accuracy and regret under injected faults, as the DieHardNet paper's Fig. 5.

K seeded campaigns over a dataset split; in each, every image gets exactly one fault in one conv layer (drawn
per image from the layer distribution: ``uniform`` over the conv layers, or ``size`` proportional to the
number of output elements). Per campaign: faulty accuracy, regret = clean accuracy - faulty accuracy, critical
rate (top-1 differs from the fault-free top-1, or the output is not finite), tolerable rate (output changed,
top-1 kept), masked rate (output bit-identical). The JSON output holds the fault spec, the seeds and the layer
list, so ``--reproduce FILE`` runs the same campaigns again. The command line is ``diehardlab.hardening.cli_evaluate``.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from diehardlab.hardening.checkpoint import load_model
from diehardlab.hardening.data import load_dataset
from diehardlab.hardening.faults import FaultInjector, FaultSpec
from diehardlab.hardening.models import conv_layers
from diehardlab.hardening.train import pick_device, top1

from diehardlab.errors import ConfigError
from diehardlab.outfiles import write_atomic


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


def _image_dir(image_dir, image_glob: str, mean: str | None, std: str | None, loaded) -> tuple[Any, Any, dict]:
    """The labelled files of ``--image-dir`` (``diehardlab.hardening.sfi.sources``) and what the result records."""
    from diehardlab.hardening.sfi.sources import image_dir_images

    imgs = image_dir_images(Path(image_dir), image_glob, mean, std, loaded.dataset, loaded.config)
    bad = [i for i, v in zip(imgs.ids, imgs.y.tolist()) if not 0 <= v < loaded.num_classes]
    if bad:
        raise ConfigError(
            f"--image-dir {image_dir}: {bad[0]} has no label of the model's {loaded.num_classes} classes in its name "
            "(regret needs labels: name the files NAME_<label>.png, e.g. cifar10_03_0.png; or narrow --image-glob)"
        )
    if imgs.x.shape[1] != loaded.in_channels:
        raise ConfigError(
            f"--image-dir {image_dir}: {imgs.x.shape[1]}-channel images, the model takes {loaded.in_channels}"
        )
    record = {"folder": str(image_dir), "glob": image_glob, "files": imgs.ids, "mean": mean, "std": std}
    return imgs.x, imgs.y, record


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
    image_dir: str | Path | None = None,
    image_glob: str = "*.png",
    mean: str | None = None,
    std: str | None = None,
) -> dict[str, Any]:
    """Clean accuracy and K injection campaigns on a checkpoint; returns the result dict (the JSON output).

    ``image_dir``: the labelled image files matching ``image_glob`` there instead of the dataset's ``split``
    (labels from the names, ``cifar10_03_0.png`` is label 0), normalised with ``mean``/``std`` or else the
    checkpoint's fixed normalisation."""
    from diehardlab.hardening.data import fixed_normalisation
    from diehardlab.hardening.numerics import apply_numerics, parse_numerics

    from diehardlab import __version__

    if campaigns < 1:
        raise ConfigError(f"--campaigns: need at least 1 (got {campaigns})")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1 (got {batch_size})")
    if limit < 0:
        raise ConfigError(f"--limit must be >= 0 (got {limit}; 0 uses every image)")
    if layer_dist not in ("uniform", "size"):
        raise ConfigError(f"--layer-dist: uniform or size (got {layer_dist!r})")
    policy = parse_numerics(numerics)
    dev = pick_device(device)
    loaded = load_model(ckpt_dir, dev)
    model = loaded.model
    applied = apply_numerics(model, policy, dev)
    if image_dir:
        x, y, images_from = _image_dir(image_dir, image_glob, mean, std, loaded)
    else:
        data_dir = data_dir or loaded.config.get("data_dir") or None
        ds = load_dataset(loaded.dataset, split, data_dir, fixed_normalisation(loaded.config))
        x, y, images_from = ds.x, ds.y, None
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
            "hardening": (loaded.config.get("hardening") or {}).get("recipe"),  # diehard harden's recipe, if any
            "dataset": loaded.dataset,
            "split": split if images_from is None else "image-dir",
            "image_dir": images_from,  # the files, when --image-dir replaced the dataset's split
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

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)

        write_atomic(fault_list, write, "--fault-list")
    return result
