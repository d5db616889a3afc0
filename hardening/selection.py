"""``diehard select``: rank test images by difficulty, hardest first (DEAR-CNN workload selection).

Metrics on the model's logits z for an image with label y:
- ``el2n``: ||softmax(z) - onehot(y)||_2 (error L2 norm);
- ``deepgini``: 1 - sum_i softmax(z)_i^2 (needs no label);
- ``ce``: cross-entropy -log softmax(z)_y.
Injecting faults on the top-ranked images finds the critical faults with fewer images (``diehard sfi curve``).
Output CSV: ``rank,image,label,predicted,score,metric``; ``image`` is the dataset index or the file name, and
``diehard sfi run --selection FILE --images N`` runs on the N best ranked.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from diehardlab.cli import make_parser
from diehardlab.errors import ConfigError
from diehardlab.outfiles import check_out_file, write_atomic

METRICS = ("el2n", "deepgini", "ce")


def scores(logits: torch.Tensor, labels: torch.Tensor, metric: str) -> torch.Tensor:
    """Difficulty score per image (higher = harder)."""
    if metric not in METRICS:
        raise ConfigError(f"--metric: unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    p = F.softmax(logits.double(), dim=1)
    if metric == "deepgini":
        return 1.0 - (p * p).sum(dim=1)
    if (labels < 0).any() or (labels >= logits.shape[1]).any():
        raise ConfigError(f"--metric {metric} needs a label for every image in 0..{logits.shape[1] - 1}")
    if metric == "el2n":
        return (p - F.one_hot(labels, logits.shape[1]).double()).norm(dim=1)
    return F.cross_entropy(logits.double(), labels, reduction="none")


@torch.no_grad()
def rank(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, metric: str, batch_size: int = 256):
    """(order, scores, predictions): indices hardest first (ties by index), per-image score and top-1."""
    device = next(model.parameters()).device
    logits = torch.cat([model(x[i : i + batch_size].to(device)).cpu() for i in range(0, x.shape[0], batch_size)])
    s = scores(logits, y, metric)
    # stable descending sort: equal scores keep dataset order, so the ranking is reproducible
    order = torch.sort(s, descending=True, stable=True).indices.tolist()
    return order, s, logits.argmax(dim=1)


def main(argv: Sequence[str]) -> int:
    from diehardlab.hardening.sfi.sources import add_image_args, add_model_args, device_name, load_images, load_target

    p = make_parser("select", __doc__.split("\n\n")[0].split(": ", 1)[1])
    add_model_args(p)
    add_image_args(p)
    p.add_argument("--metric", default="el2n", choices=METRICS, help="difficulty score (default el2n)")
    p.add_argument("--out", type=Path, required=True, help="ranking CSV to write")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda ...")
    args = p.parse_args(argv)
    if args.selection:
        raise ConfigError("--selection is an input of 'diehard sfi run', not of 'diehard select'")
    check_out_file(args.out, "--out")  # before the work, not after it
    device = device_name(args.device)
    target = load_target(args, device)
    images = load_images(args, target)
    order, s, pred = rank(target.model, images.x, images.y, args.metric)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["rank", "image", "label", "predicted", "score", "metric"])
            for r, i in enumerate(order):
                w.writerow([r, images.ids[i], int(images.y[i]), int(pred[i]), f"{float(s[i]):.9g}", args.metric])

    write_atomic(args.out, write, "--out")
    acc = float((pred == images.y).double().mean()) if (images.y >= 0).all() else float("nan")
    print(
        f"ranked {len(order)} images by {args.metric} (top-1 accuracy {acc:.4f}); hardest: "
        + ", ".join(f"{images.ids[i]} ({float(s[i]):.3f})" for i in order[:5])
    )
    print(f"wrote {args.out}")
    return 0
