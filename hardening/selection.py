"""``diehard select``: rank test images by difficulty, hardest first (DEAR-CNN workload selection).

Metrics on the model's logits z for an image with label y:
- ``el2n``: ||softmax(z) - onehot(y)||_2 (error L2 norm);
- ``deepgini``: 1 - sum_i softmax(z)_i^2 (needs no label);
- ``ce``: cross-entropy -log softmax(z)_y.
Injecting faults on the top-ranked images finds the critical faults with fewer images (``diehard sfi curve``).
Output CSV: ``rank,image,label,predicted,score,metric``; ``image`` is the dataset index or the file name, and
``diehard sfi run --selection FILE --images N`` runs on the N best ranked.

DEAR-CNN's rules beside the top N (Bellarmino et al., DDECS 2025):
- the central-mode window (``--epsilon E``): keep only the images whose score lies within E of the mode of the
  score distribution, |score - mode| <= E (still hardest first). The mode is that of a Gaussian kernel density
  estimate (Silverman's bandwidth, the grid maximum refined by mean shift to the KDE's exact local maximum) or,
  with ``--mode-estimate histogram``, the centre of the tallest bin of a Freedman-Diaconis histogram;
- the Spearman rank correlation between the three metrics over all images;
- the share of images kept and the fault-injection time that saves (FI time grows with images x faults, so a
  campaign on M of N images takes M/N of the time: 1 - M/N is saved).
These go to ``OUT.json`` beside the ranking, with the inputs and versions.
"""

from __future__ import annotations

import csv
import json
import math
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diehardlab.cli import make_parser
from diehardlab.errors import ConfigError, DataError
from diehardlab.outfiles import check_out_file, write_atomic, write_text_atomic

METRICS = ("el2n", "deepgini", "ce")
MODE_ESTIMATES = ("kde", "histogram")
MAX_BINS = 10_000


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
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The model's logits for every image, on the CPU."""
    device = next(model.parameters()).device
    return torch.cat([model(x[i : i + batch_size].to(device)).cpu() for i in range(0, x.shape[0], batch_size)])


def order_hardest_first(s: torch.Tensor) -> list[int]:
    # stable descending sort: equal scores keep dataset order, so the ranking is reproducible
    return torch.sort(s, descending=True, stable=True).indices.tolist()


@torch.no_grad()
def rank(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, metric: str, batch_size: int = 256):
    """(order, scores, predictions): indices hardest first (ties by index), per-image score and top-1."""
    logits = predict(model, x, batch_size)
    s = scores(logits, y, metric)
    return order_hardest_first(s), s, logits.argmax(dim=1)


# -- the central-mode window ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    """Where the score distribution peaks, and how that was estimated."""

    method: str  # kde or histogram
    mode: float
    bandwidth: float  # the KDE's kernel width h, or the histogram's bin width (0: all scores equal)
    bins: int | None = None  # histogram only


def _finite_scores(s: np.ndarray) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise DataError("no scores: the image set is empty")
    if not np.isfinite(s).all():
        bad = int((~np.isfinite(s)).sum())
        raise DataError(f"{bad} image score(s) are NaN or infinite: the model's output is not finite; check the model")
    return s


def _iqr(s: np.ndarray) -> float:
    q1, q3 = np.percentile(s, [25, 75])  # linear interpolation, numpy's default
    return float(q3 - q1)


def silverman_bandwidth(s: np.ndarray) -> float:
    """Silverman's rule of thumb, h = 0.9 min(sd, IQR / 1.34) n^(-1/5) (sd with n - 1).

    The IQR term keeps a heavy tail (the few images a model gets badly wrong) from widening the kernel; when the
    IQR is 0 (over half the images share one score) the sd alone is used, and h = 0 when all scores are equal.
    """
    s = _finite_scores(s)
    if s.size < 2:
        return 0.0
    sd = float(s.std(ddof=1))
    spread = [v for v in (sd, _iqr(s) / 1.34) if v > 0]
    return 0.9 * min(spread) * s.size ** (-0.2) if spread else 0.0


def kde_mode(s: np.ndarray, grid: int = 2048) -> Mode:
    """The highest point of the Gaussian KDE of ``s`` (Silverman bandwidth).

    The density is evaluated on ``grid`` points over [min - 3h, max + 3h]; the best grid point (the lowest
    score on a tie) is then refined by mean shift, x <- sum_i K_i s_i / sum_i K_i with K_i = exp(-((x - s_i)/h)^2
    / 2), which climbs to the KDE's exact local maximum, so the mode does not depend on the grid spacing.
    """
    s = _finite_scores(s)
    h = silverman_bandwidth(s)
    if h == 0.0:
        return Mode("kde", float(s[0]), 0.0)
    xs = np.linspace(s.min() - 3 * h, s.max() + 3 * h, grid)
    step = max(1, 4_000_000 // s.size)  # grid points per block: bounded memory for large test sets
    dens = np.concatenate(
        [np.exp(-0.5 * ((xs[i : i + step, None] - s[None, :]) / h) ** 2).sum(axis=1) for i in range(0, grid, step)]
    )
    x = float(xs[int(np.argmax(dens))])
    for _ in range(1000):
        w = np.exp(-0.5 * ((x - s) / h) ** 2)
        nxt = float((w * s).sum() / w.sum())
        if abs(nxt - x) <= 1e-12 * max(h, abs(x)):
            x = nxt
            break
        x = nxt
    return Mode("kde", x, h)


def histogram_mode(s: np.ndarray) -> Mode:
    """The centre of the tallest bin (the lowest one on a tie) of a histogram from the lowest score.

    Bin width: Freedman-Diaconis, 2 IQR n^(-1/3); when the IQR is 0, Sturges' ceil(log2 n) + 1 bins over the
    range. Bins are [min + j w, min + (j+1) w), the last one closed. At most ``MAX_BINS``: a confident model's
    scores have an IQR near 0 and a few far outliers, which would otherwise ask for millions of bins.
    """
    s = _finite_scores(s)
    lo, hi = float(s.min()), float(s.max())
    if hi == lo:
        return Mode("histogram", lo, 0.0, 1)
    width = 2 * _iqr(s) * s.size ** (-1 / 3)
    if width <= 0:
        width = (hi - lo) / (math.ceil(math.log2(s.size)) + 1)
    if (hi - lo) / width > MAX_BINS:
        width = (hi - lo) / MAX_BINS
    bins = max(1, math.ceil((hi - lo) / width))
    counts, _ = np.histogram(s, bins=bins, range=(lo, lo + bins * width))
    j = int(np.argmax(counts))
    return Mode("histogram", lo + (j + 0.5) * width, width, bins)


def score_mode(s: np.ndarray, method: str = "kde") -> Mode:
    if method == "kde":
        return kde_mode(s)
    if method == "histogram":
        return histogram_mode(s)
    raise ConfigError(f"--mode-estimate: unknown method {method!r}; choose one of {', '.join(MODE_ESTIMATES)}")


def check_epsilon(epsilon: float) -> float:
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ConfigError(f"--epsilon {epsilon}: must be a finite number above 0 (a distance in score units)")
    return epsilon


def central_window(s: np.ndarray, epsilon: float, method: str = "kde") -> tuple[np.ndarray, Mode]:
    """(mask of the images with |score - mode| <= epsilon, the mode): DEAR-CNN's central-mode window."""
    check_epsilon(epsilon)
    s = _finite_scores(s)
    m = score_mode(s, method)
    keep = np.abs(s - m.mode) <= epsilon
    if not keep.any():
        raise ConfigError(
            f"--epsilon {epsilon:g}: no image scores within it of the mode {m.mode:.6g} (the nearest is "
            f"{float(np.abs(s - m.mode).min()):.3g} away); give a larger --epsilon"
        )
    return keep, m


# -- Spearman's rank correlation ------------------------------------------------------------------------------


def rankdata(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given the mean of the ranks they span (as scipy.stats.rankdata's 'average')."""
    a = np.asarray(a, dtype=np.float64)
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    # runs of equal values: each gets the mean of its first and last 1-based positions
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], a.size]
    ranks = np.empty(a.size)
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho: Pearson's correlation of the (tie-averaged) ranks; NaN when either side is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("spearman needs two 1-d arrays of one length")
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else math.nan


def metric_correlations(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float | None]:
    """Spearman's rho between every pair of metrics over the images (the label-free deepgini alone: none)."""
    known = bool(len(labels)) and bool(((labels >= 0) & (labels < logits.shape[1])).all())
    names = METRICS if known else ("deepgini",)
    s = {m: scores(logits, labels, m).numpy() for m in names}
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            r = spearman(s[a], s[b])
            out[f"{a}~{b}"] = None if math.isnan(r) else round(r, 6)
    return out


# -- the command ----------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    from diehardlab import __version__

    return {"diehardlab": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}  # fmt: skip


def main(argv: Sequence[str]) -> int:
    from diehardlab.hardening.sfi.sources import add_image_args, add_model_args, device_name, load_images, load_target

    p = make_parser("select", __doc__.split("\n\n")[0].split(": ", 1)[1])
    add_model_args(p)
    add_image_args(p)
    p.add_argument("--metric", default="el2n", choices=METRICS, help="difficulty score (default el2n)")
    p.add_argument(
        "--epsilon",
        type=float,
        help="keep only the images whose score is within this distance of the score distribution's mode "
        "(DEAR-CNN's central-mode window; in the metric's units)",
    )
    p.add_argument(
        "--mode-estimate",
        default="kde",
        choices=MODE_ESTIMATES,
        help="how the mode is found: kde (Gaussian, Silverman bandwidth; default) or histogram (Freedman-Diaconis)",
    )
    p.add_argument("--out", type=Path, required=True, help="ranking CSV to write (and OUT.json beside it)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda ...")
    args = p.parse_args(argv)
    if args.selection:
        raise ConfigError("--selection is an input of 'diehard sfi run', not of 'diehard select'")
    if args.epsilon is not None:
        check_epsilon(args.epsilon)
    if args.out.suffix.lower() == ".json":
        raise ConfigError(f"--out {args.out}: give a .csv name; the summary is written beside it as NAME.json")
    sidecar = args.out.with_suffix(".json")
    check_out_file(args.out, "--out")  # before the work, not after it
    device = device_name(args.device)
    target = load_target(args, device)
    images = load_images(args, target)
    logits = predict(target.model, images.x)
    s = scores(logits, images.y, args.metric)
    pred = logits.argmax(dim=1)
    full_order = order = order_hardest_first(s)
    n = len(order)
    window = None
    if args.epsilon is not None:
        keep, mode = central_window(s.numpy(), args.epsilon, args.mode_estimate)
        order = [i for i in order if keep[i]]
        window = {
            **asdict(mode),
            "epsilon": args.epsilon,
            "low": mode.mode - args.epsilon,
            "high": mode.mode + args.epsilon,
        }
    kept = len(order)
    corr = metric_correlations(logits, images.y)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["rank", "image", "label", "predicted", "score", "metric"])
            for r, i in enumerate(order):
                w.writerow([r, images.ids[i], int(images.y[i]), int(pred[i]), f"{float(s[i]):.9g}", args.metric])

    known = bool(n) and bool((images.y >= 0).all())
    acc = float((pred == images.y).double().mean()) if known else None
    summary = {
        "metric": args.metric,
        "images": n,
        "kept": kept,
        "share_of_images": kept / n if n else None,
        # FI time is proportional to the images each fault runs on: keeping M of N saves 1 - M/N of it
        "fi_time_saved_share": 1 - kept / n if n else None,
        "window": window,
        "spearman": corr,
        "top1_accuracy": acc,
        "ranking": str(args.out),
        "inputs": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": target.name,
        "model_sha256": target.model_hash,
        "versions": _versions(),
    }
    write_atomic(args.out, write, "--out")
    write_text_atomic(sidecar, json.dumps(summary, indent=1) + "\n", "--out")
    print(
        f"ranked {n} images by {args.metric} (top-1 accuracy {acc if acc is not None else float('nan'):.4f}); "
        "hardest: " + ", ".join(f"{images.ids[i]} ({float(s[i]):.3f})" for i in full_order[:5])
    )
    if window is not None:
        print(
            f"central-mode window: {args.mode_estimate} mode {window['mode']:.6g} (bandwidth {window['bandwidth']:.3g})"
            f" +/- {args.epsilon:g}: kept {kept} of {n} images ({100 * kept / n:.1f} %), FI time saved "
            f"{100 * (1 - kept / n):.1f} %"
        )
    if corr:
        print("Spearman rho between the metrics: " + ", ".join(f"{k} {v:.4f}" if v is not None else f"{k} undefined"
                                                              for k, v in corr.items()))  # fmt: skip
    print(f"wrote {args.out} and {sidecar}")
    return 0
