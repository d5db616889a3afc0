"""Fault detection curves (DEAR-CNN): faults by their worst outcome over the first k images, k = 1..N.

The run's images are in ranked order (``diehard sfi run --selection``); the ranked curve is compared with the
mean (and standard deviation) over random orders of the same images. A fault counts at its most severe outcome
over the images seen so far, so every curve ends at the same point (all images used).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from diehardlab.hardening.sfi.engine import NON_CRITICAL, SDC1

from diehardlab.errors import DataError


def detection_curve(outcomes: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """[k, 3]: faults whose worst outcome over the first k+1 images is masked / non-critical / critical."""
    o = outcomes if order is None else outcomes[:, order]
    running = np.maximum.accumulate(o.astype(np.int8), axis=1)  # worst so far, per fault
    crit = (running == SDC1).sum(axis=0)
    noncrit = (running == NON_CRITICAL).sum(axis=0)
    masked = o.shape[0] - crit - noncrit
    return np.stack([masked, noncrit, crit], axis=1)


def curves(
    outcomes: np.ndarray, orders: int = 5, seed: int = 0, ranking: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranked curve (columns in ``ranking`` order, default as stored), mean and std over random orders.

    The random orders depend only on the seed and the number of images, so rankings of the same run are
    compared with the same random baseline.
    """
    rng = np.random.default_rng(seed)
    n = outcomes.shape[1]
    rand = np.stack([detection_curve(outcomes, rng.permutation(n)) for _ in range(orders)])
    return detection_curve(outcomes, ranking), rand.mean(axis=0), rand.std(axis=0)


def curve_from_run(run_dir: Path, orders: int, seed: int, out: Path, selection: Path | None = None) -> dict:
    path = run_dir / "outcomes.npy"
    if not path.is_file():
        raise DataError(f"--run: {run_dir} has no outcomes.npy; run 'diehard sfi run ... --out {run_dir}' first")
    done = np.load(run_dir / "done.npy") if (run_dir / "done.npy").is_file() else None
    if done is not None and not done.all():
        raise DataError(f"--run: {run_dir} is unfinished ({int(done.sum())}/{done.size} faults); resume it first")
    outcomes = np.load(path)
    meta = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    ranking = None
    if selection is not None:
        # rank the run's images by another ranking: the same outcomes, another order of the columns
        from diehardlab.hardening.sfi.sources import read_selection

        ids = meta.get("image_ids", [])
        pos = {iid: i for i, iid in enumerate(ids)}
        order = [pos[i] for i in read_selection(selection) if i in pos]
        if len(order) != len(ids):
            raise DataError(f"--selection: {selection} does not rank every image of the run in {run_dir}")
        ranking = np.array(order)
    ranked, mean, std = curves(outcomes, orders, seed, ranking)
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path = out.with_suffix(".csv")
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "images",
                "ranked_masked",
                "ranked_non_critical",
                "ranked_critical",
                "random_mean_masked",
                "random_mean_non_critical",
                "random_mean_critical",
                "random_std_critical",
            ]
        )
        for k in range(ranked.shape[0]):
            w.writerow([k + 1, *ranked[k].tolist(), *(f"{v:.3f}" for v in mean[k]), f"{std[k, 2]:.3f}"])
    png = None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x = np.arange(1, ranked.shape[0] + 1)
        label = f"ranked by {selection.stem}" if selection is not None else "ranked (run order)"
        # one panel per outcome: critical faults are few and would be flattened next to non-critical ones
        fig, axes = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
        for ax, col, name, color in ((axes[0], 2, "critical (SDC-1)", "C3"), (axes[1], 1, "non-critical", "C1")):
            ax.plot(x, ranked[:, col], "-o", ms=3, color=color, label=label)
            ax.plot(x, mean[:, col], "--", color="k", label=f"mean of {orders} random orders")
            ax.fill_between(x, mean[:, col] - std[:, col], mean[:, col] + std[:, col], color="k", alpha=0.12)
            ax.set_ylabel(f"{name} faults")
            ax.legend(fontsize=7, loc="lower right")
        axes[1].set_xlabel("images used")
        axes[0].set_title(f"fault detection curve: {outcomes.shape[0]} faults, {meta.get('model', run_dir.name)}")
        fig.tight_layout()
        png = out.with_suffix(".png")
        fig.savefig(png, dpi=120)
        plt.close(fig)
    except ImportError:
        pass
    n = ranked.shape[0]
    marks = sorted({k for k in (1, 2, 3, 5, 10, 20, 50, 100, n) if k <= n})
    summary = {
        "faults": int(outcomes.shape[0]),
        "images": int(n),
        "critical_at": {
            str(k): {
                "ranked": int(ranked[k - 1, 2]),
                "random_mean": round(float(mean[k - 1, 2]), 2),
                "random_std": round(float(std[k - 1, 2]), 2),
            }
            for k in marks
        },
        "area_ratio_critical": round(float(ranked[:, 2].sum() / max(mean[:, 2].sum(), 1e-9)), 4),
    }
    return {"csv": csv_path, "png": png, "summary": summary}
