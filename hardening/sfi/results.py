"""Tables of a fault-injection run: per fault, per (layer, bit) and per layer, with the achieved error margin.

A fault's outcome is its worst over the images (SDC-1 > Non-critical > Masked). In each (layer, bit) cell the
faults are a simple random sample of that cell's population (true of every plan method), so the margin
achieved at the chosen confidence is the Leveque formula solved for e: at p = 0.5 (the guaranteed bound) and at
the observed SDC-1 proportion (``margin_observed``, finite-population corrected).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from diehardlab.hardening.sfi.engine import OUTCOME_NAMES
from diehardlab.hardening.sfi.faultlist import Fault
from diehardlab.hardening.sfi.plan import Layer

from diehardlab.sampling import achieved_error


def worst(outcomes: np.ndarray) -> np.ndarray:
    """Worst outcome of every fault over the images (0 masked, 1 non-critical, 2 SDC-1)."""
    return outcomes.max(axis=1) if outcomes.shape[1] else np.zeros(outcomes.shape[0], dtype=np.int8)


def cell_population(layer: Layer, fault_model: str) -> int:
    """Population of one (layer, bit) cell: elements x fault values per bit."""
    return layer.numel * (2 if fault_model.startswith("stuck-at") else 1)


def per_fault_rows(faults: list[Fault], outcomes: np.ndarray) -> list[list]:
    w = worst(outcomes)
    counts = [(outcomes == k).sum(axis=1) for k in range(3)]
    return [
        [
            f.injection,
            f.tensor,
            str(f.index),
            f.bit,
            f.model,
            f.stratum,
            *(int(c[i]) for c in counts),
            OUTCOME_NAMES[w[i]],
        ]
        for i, f in enumerate(faults)
    ]


def cell_rows(faults: list[Fault], outcomes: np.ndarray, layers: list[Layer], t: float) -> list[list]:
    """One row per (layer, bit) with faults: population, n, faults by worst outcome, p(SDC-1), margins."""
    by_name = {x.name: x for x in layers}
    w = worst(outcomes)
    cells: dict[tuple[str, int, str], list[int]] = {}
    for i, f in enumerate(faults):
        kind = "stuck-at" if f.model.startswith("stuck-at") else f.model
        cells.setdefault((f.target_layer, f.bit, kind), []).append(i)
    order = {x.name: k for k, x in enumerate(layers)}
    rows = []
    for (module, bit, kind), idx in sorted(cells.items(), key=lambda kv: (order.get(kv[0][0], 1 << 30), kv[0][1])):
        layer = by_name.get(module)
        pop = cell_population(layer, kind) if layer and kind != "value" else 0
        n = len(idx)
        ks = [int((w[idx] == k).sum()) for k in range(3)]
        rows.append(
            [
                module,
                bit,
                kind,
                pop or "",
                n,
                *ks,
                f"{ks[2] / n:.6g}",
                f"{achieved_error(pop, n, t=t, p=0.5):.6g}" if pop else "",
                f"{achieved_error(pop, n, t=t, p=ks[2] / n):.6g}" if pop else "",
            ]
        )
    return rows


CELL_HEADER = [
    "layer",
    "bit",
    "fault_model",
    "population",
    "faults",
    "masked",
    "non_critical",
    "sdc1",
    "p_sdc1",
    "margin_p05",
    "margin_observed",
]
FAULT_HEADER = [
    "Injection",
    "Layer",
    "TensorIndex",
    "Bit",
    "Model",
    "Stratum",
    "masked_images",
    "non_critical_images",
    "sdc1_images",
    "worst",
]


def _stratum_population(label: str, layers: list[Layer], model: str, model_target: str) -> int | None:
    by_name = {x.name: x for x in layers}
    layer, _, bit = label.rpartition("/")
    vals = 2 if model.startswith("stuck-at") else 1
    if layer == "*":
        output = model_target == "activations"
        return sum(x.numel * x.width for x in layers if (x.name != x.module) == output) * vals
    if layer not in by_name or not bit:
        return None
    return by_name[layer].numel * vals * (by_name[layer].width if bit == "all" else 1)


def estimate(
    faults: list[Fault], hit: np.ndarray, layers: list[Layer], t: float, unsampled: dict[str, int] | None = None
) -> dict:
    """Network-wide proportion of faults with ``hit`` and its margin at the run's confidence.

    Each fault belongs to the population it was drawn from (its stratum); a stratified sample (layer, per-bit
    methods) is weighted by population size, p = sum_h N_h p_h / N, with variance
    sum_h (N_h / N)^2 p_h (1 - p_h) / n_h (N_h - n_h) / (N_h - 1). An unweighted proportion would over-count small
    layers. Lists without strata (a hand-written fault list) give the plain proportion. ``unsampled`` maps the
    strata the plan gave no fault to their populations.
    """
    unsampled = unsampled or {}
    groups: dict[str, list[int]] = {}
    for i, f in enumerate(faults):
        groups.setdefault(f.stratum, []).append(i)
    pops = {
        h: _stratum_population(
            h, layers, faults[idx[0]].model, "activations" if faults[idx[0]].is_activation else "weights"
        )
        for h, idx in groups.items()
    }
    if not faults:
        return {"p": math.nan, "margin": math.nan, "weighted": False}
    if any(v is None for v in pops.values()):
        n, k = len(faults), int(hit.sum())
        p = k / n
        return {"p": p, "margin": t * math.sqrt(p * (1 - p) / n), "weighted": False}
    # Strata the plan sized to no fault (data-aware bits of p(i) near 0) are part of the population: they weigh in
    # with the rate the method assumes for them, 0. Left out of the total, they inflated the estimate by their share.
    total = sum(pops.values()) + sum(unsampled.values())
    unsampled_share = sum(unsampled.values()) / total if total else 0.0
    p = margin_sq = 0.0
    for h, idx in groups.items():
        n_h, pop = len(idx), pops[h]
        p_h = float(hit[idx].mean())
        w = pop / total
        p += w * p_h
        # the stratum's own margin (finite-population corrected) is t times its standard error
        margin_sq += (w * achieved_error(pop, n_h, t=t, p=p_h)) ** 2
    return {
        "p": p,
        "margin": math.sqrt(margin_sq),
        "weighted": len(groups) > 1,
        "unsampled_share": unsampled_share,
    }


def write_tables(
    out: Path,
    faults: list[Fault],
    outcomes: np.ndarray,
    layers: list[Layer],
    t: float,
    unsampled: dict[str, int] | None = None,
) -> dict:
    """Write per_fault.csv, per_layer_bit.csv, per_layer.csv; return the network summary."""
    with open(out / "per_fault.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(FAULT_HEADER)
        wr.writerows(per_fault_rows(faults, outcomes))
    cells = cell_rows(faults, outcomes, layers, t)
    with open(out / "per_layer_bit.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(CELL_HEADER)
        wr.writerows(cells)
    w = worst(outcomes)
    layer_rows = []
    for layer in layers:
        idx = [i for i, f in enumerate(faults) if f.target_layer == layer.name]
        if not idx:
            continue
        kinds = {("stuck-at" if faults[i].model.startswith("stuck-at") else faults[i].model) for i in idx}
        pop = cell_population(layer, next(iter(kinds))) * layer.width if len(kinds) == 1 and "value" not in kinds else 0
        ks = [int((w[idx] == k).sum()) for k in range(3)]
        n = len(idx)
        layer_rows.append(
            [layer.name, pop or "", n, *ks, f"{ks[2] / n:.6g}", f"{achieved_error(pop, n, t=t):.6g}" if pop else ""]
        )
    with open(out / "per_layer.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["layer", "population", "faults", "masked", "non_critical", "sdc1", "p_sdc1", "margin_p05"])
        wr.writerows(layer_rows)
    n = len(faults)
    ks = [int((w == k).sum()) for k in range(3)]
    return {
        "faults": n,
        "images": int(outcomes.shape[1]),
        "masked": ks[0],
        "non_critical": ks[1],
        "sdc1": ks[2],
        "p_sdc1": ks[2] / n if n else math.nan,
        # population estimates (stratum-weighted) with their margin at the run's confidence
        "estimate_sdc1": estimate(faults, w == 2, layers, t, unsampled),
        "estimate_not_masked": estimate(faults, w >= 1, layers, t, unsampled),
        "fault_image_pairs": {name: int((outcomes == k).sum()) for k, name in enumerate(OUTCOME_NAMES)},
    }
