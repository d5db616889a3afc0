"""Validity of statistical fault injection, measured against an exhaustive campaign (Ruospo et al., DATE 2023).

The paper's Fig. 6 and Table III: every fault of one layer is injected (every weight element, every bit of its
stored format, both stuck-at values), which gives the layer's true critical rate; then independent samples are
drawn per method (network, layer, data-unaware, data-aware) and each sample's estimate and margin are set against
it. A fault is critical when it makes at least one image SDC-1 (the worst outcome over the images, as the run
tables count it).

A sample is a subset of the exhaustive population and an injection is deterministic, so a sample's outcomes are
read from the exhaustive run rather than injected again. Each sample is drawn by
:func:`~diehardlab.hardening.sfi.faultlist.draw` from the method's plan (:func:`~diehardlab.hardening.sfi.plan.
make_plan`) restricted to the layer's strata, with seed ``seed + k`` for sample k; the network method draws the
whole network's sample and keeps the faults that fall in the layer (what a network-wise campaign knows of it). The
estimate and its margin are :func:`layer_estimate`'s: a proportion per stratum, weighted by population, each
stratum's margin finite-population corrected, at the sample's own proportion (the achieved margin) and, beside it,
at p = 0.5 (the bound the plan's sizes guarantee).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from diehardlab.hardening.sfi.faultlist import Fault, draw
from diehardlab.hardening.sfi.plan import Layer, Plan, make_plan

from diehardlab.errors import ConfigError
from diehardlab.sampling import achieved_error

STUCK_AT = ("stuck-at-0", "stuck-at-1")
VALIDATE_METHODS = ("network", "layer", "data-unaware", "data-aware")


def exhaustive_faults(layer: Layer) -> list[Fault]:
    """Every (element, bit, stuck-at value) of ``layer``: element-major (weight, then bias), then bit, then value.

    This is the order of the layer-wise population of :func:`~diehardlab.hardening.sfi.faultlist.draw`, so row
    ``i`` is population index ``i``.
    """
    out: list[Fault] = []
    label = f"{layer.name}/all"
    for name, shape in zip(layer.tensors, layer.shapes):
        for flat in range(math.prod(shape)):
            idx = tuple(int(v) for v in np.unravel_index(flat, shape))
            for bit in range(layer.width):
                for model in STUCK_AT:
                    out.append(Fault(len(out), name, idx, bit, model, None, label))
    return out


def pick_layer(layers: list[Layer], which: str) -> Layer:
    """A layer by its module name or its position (0 = the first convolution or linear layer)."""
    names = [x.name for x in layers]
    if which in names:
        return layers[names.index(which)]
    if which.lstrip("-").isdigit() and -len(layers) <= int(which) < len(layers):
        return layers[int(which)]
    shown = ", ".join(f"{i}={n}" for i, n in enumerate(names[:8])) + (" ..." if len(names) > 8 else "")
    raise ConfigError(f"--layer: {which!r} is not a layer of the model; give a name or a position ({shown})")


def layer_plan(plan: Plan, layer: Layer) -> Plan:
    """The plan's strata that draw in ``layer`` (the network method keeps its one network-wide stratum)."""
    if plan.method == "network":
        return plan
    return replace(plan, strata=[s for s in plan.strata if s.layer == layer.name])


@dataclass(frozen=True)
class SampleSpec:
    """What to draw per method: ``samples`` independent samples (seeds ``seed + k``) of plans sized for ``error`` at
    ``confidence``; ``p_scope`` is the data-aware plan's."""

    methods: tuple[str, ...] = VALIDATE_METHODS
    samples: int = 10
    seed: int = 0
    error: float = 0.01
    confidence: float = 0.99
    p_scope: str = "layer"


@dataclass
class Sample:
    method: str
    index: int
    seed: int
    rows: np.ndarray  # rows of the exhaustive list the sample drew
    critical: int
    estimate: float
    margin: float  # achieved: at the sample's own proportion per stratum
    margin_p05: float  # the guaranteed bound: at p = 0.5 per stratum

    def inside(self, rate: float, margin: float | None = None) -> bool:
        m = self.margin if margin is None else margin
        return bool(abs(rate - self.estimate) <= m + 1e-12)


def draw_samples(
    model: torch.nn.Module,
    layer: Layer,
    exhaustive: list[Fault],
    critical: np.ndarray,
    spec: SampleSpec = SampleSpec(),
) -> tuple[list[Sample], dict[str, Plan]]:
    """``spec.samples`` independent samples per method, each scored against the exhaustive outcomes."""
    where = {(f.tensor, f.index, f.bit, f.model): i for i, f in enumerate(exhaustive)}
    out: list[Sample] = []
    plans: dict[str, Plan] = {}
    for method in spec.methods:
        plan = make_plan(
            model,
            method,
            spec.error,
            spec.confidence,
            "stuck-at",
            "weights",
            p_scope=spec.p_scope if method == "data-aware" else "layer",
        )
        plans[method] = plan
        restricted = layer_plan(plan, layer)
        for k in range(spec.samples):
            faults = [f for f in draw(restricted, spec.seed + k) if f.tensor in layer.tensors]
            rows = np.array([where[(f.tensor, f.index, f.bit, f.model)] for f in faults], dtype=np.int64)
            hit = critical[rows] if len(rows) else np.zeros(0, dtype=bool)
            est = layer_estimate(restricted, layer, faults, hit)
            out.append(Sample(method, k, spec.seed + k, rows, int(hit.sum()), *est))
    return out, plans


def layer_estimate(plan: Plan, layer: Layer, faults: list[Fault], hit: np.ndarray) -> tuple[float, float, float]:
    """The layer's critical rate from a sample: estimate, achieved margin, margin at p = 0.5.

    Stratified over the plan's strata in the layer (one for network and layer, one per bit for the per-bit
    methods), each weighted by its share of the layer's population: p = sum_h N_h p_h / N, margin
    sqrt(sum_h (N_h / N)^2 e_h^2) with e_h the finite-population corrected margin of stratum h (as
    :func:`~diehardlab.hardening.sfi.results.estimate`). Unlike a run's summary, the strata the plan sized to no
    fault at all (data-aware bits whose p(i) rounds n to 0) keep their weight, with the rate 0 the method assumes
    for them: dropping them would inflate the estimate by N / N_sampled.
    """
    vals = 2  # both stuck-at values
    n_layer = layer.numel * layer.width * vals
    if plan.method == "network":  # the network's one stratum, seen through the layer
        strata = [(f"{plan.strata[0].layer}/all", n_layer)]
    else:
        strata = [(f"{s.layer}/{s.bit if s.bit >= 0 else 'all'}", s.population) for s in plan.strata]
    groups: dict[str, list[int]] = {}
    for i, f in enumerate(faults):
        groups.setdefault(f.stratum, []).append(i)
    if not faults:
        return math.nan, math.nan, math.nan
    p = sq = sq05 = 0.0
    for label, pop in strata:
        idx = groups.get(label, [])
        if not idx:
            continue  # rate 0, margin 0: the method's own assumption for a stratum it does not sample
        w = pop / n_layer
        p_h = float(hit[idx].mean())
        p += w * p_h
        sq += (w * achieved_error(pop, len(idx), t=plan.t, p=p_h)) ** 2
        sq05 += (w * achieved_error(pop, len(idx), t=plan.t, p=0.5)) ** 2
    return p, math.sqrt(sq), math.sqrt(sq05)


def summarise(samples: list[Sample], rate: float) -> dict[str, dict]:
    """Per method: samples, mean size, how many contain the exhaustive rate, average achieved margin."""
    out: dict[str, dict] = {}
    for method in dict.fromkeys(s.method for s in samples):
        mine = [s for s in samples if s.method == method]
        valid = [s for s in mine if len(s.rows)]
        out[method] = {
            "samples": len(mine),
            "empty_samples": len(mine) - len(valid),
            "faults_mean": float(np.mean([len(s.rows) for s in mine])),
            "estimate_mean": float(np.mean([s.estimate for s in valid])) if valid else math.nan,
            "contain": sum(s.inside(rate) for s in valid),
            "contain_p05": sum(s.inside(rate, s.margin_p05) for s in valid),
            "margin_mean": float(np.mean([s.margin for s in valid])) if valid else math.nan,
            "margin_p05_mean": float(np.mean([s.margin_p05 for s in valid])) if valid else math.nan,
            "abs_error_mean": float(np.mean([abs(s.estimate - rate) for s in valid])) if valid else math.nan,
        }
    return out


SAMPLE_HEADER = [
    "method", "sample", "seed", "faults", "critical", "estimate", "margin", "low", "high", "inside", "margin_p05",
    "inside_p05",
]  # fmt: skip


def validate(
    target,
    images,
    layer: Layer,
    out: Path,
    spec: SampleSpec = SampleSpec(),
    policy=None,
    device: str = "cpu",
    engine: str = "cached",
    batch_size: int = 32,
    chunk: int = 256,
    options: dict | None = None,
) -> dict:
    """Run (or resume) the exhaustive campaign in ``out/exhaustive``, draw the samples, write the results.

    Writes ``samples.csv`` (one row per sample), ``sample_rows.npz`` (each sample's rows of the exhaustive list,
    ``<method>/<k>``) and ``validate.json`` (exhaustive rate, per-method summary, configuration, seeds, versions),
    each written then renamed.
    """
    from diehardlab.hardening.sfi.results import worst
    from diehardlab.hardening.sfi.runner import run_campaign, versions

    from diehardlab.outfiles import check_out_dir, write_atomic, write_text_atomic
    from diehardlab.sampling import t_value

    check_out_dir(out, "--out")
    faults = exhaustive_faults(layer)
    t = t_value(spec.confidence)
    meta = {
        "model": target.name,
        "model_config": target.config,
        "dataset": target.dataset,
        "image_ids": images.ids,
        "fault_model": "stuck-at",
        "confidence": spec.confidence,
        "t": t,
        "batch_size": batch_size,
        "device": device,
        "exhaustive_layer": layer.name,
    }
    summary = run_campaign(
        target.model, images, faults, out / "exhaustive", [layer], t, meta, target.model_hash,
        engine=engine, batch_size=batch_size, device=device, resume=True, chunk=chunk, numerics=policy,
    )  # fmt: skip
    outcomes = np.load(out / "exhaustive" / "outcomes.npy", allow_pickle=False)
    critical = worst(outcomes) == 2
    rate = float(critical.mean())
    drawn, plans = draw_samples(target.model, layer, faults, critical, spec)
    rows = [
        {
            "method": s.method,
            "sample": s.index,
            "seed": s.seed,
            "faults": len(s.rows),
            "critical": s.critical,
            "estimate": s.estimate,
            "margin": s.margin,
            "low": s.estimate - s.margin,
            "high": s.estimate + s.margin,
            "inside": s.inside(rate) if len(s.rows) else None,
            "margin_p05": s.margin_p05,
            "inside_p05": s.inside(rate, s.margin_p05) if len(s.rows) else None,
        }
        for s in drawn
    ]

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, SAMPLE_HEADER)
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.9g}" if isinstance(v, float) else v) for k, v in r.items()})

    def write_npz(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **{f"{s.method}/{s.index}": s.rows for s in drawn})

    result = {
        "layer": {
            "name": layer.name,
            "tensors": layer.tensors,
            "shapes": layer.shapes,
            "weights": layer.numel,
            "width": layer.width,
            "dtype": layer.dtype,
        },
        "exhaustive": {
            "faults": len(faults),
            "images": len(images.ids),
            "critical": int(critical.sum()),
            "critical_rate": rate,
            "outcome_shares": summary["suite_table"],
            "run": str(out / "exhaustive"),
            "seconds_last_call": summary.get("seconds_this_call"),
        },
        "methods": summarise(drawn, rate),
        "samples": rows,
        "plans": {
            m: {
                "total_network": p.total,
                "layer_sample": sum(s.n for s in layer_plan(p, layer).strata) if m != "network" else None,
                "p_scope": p.p_scope,
            }
            for m, p in plans.items()
        },
        "config": {
            "model": target.name,
            "model_hash": target.model_hash,
            "image_ids": images.ids,
            "numerics": policy.spec() if policy is not None else "fp32",
            "error": spec.error,
            "confidence": spec.confidence,
            "t": t,
            "samples": spec.samples,
            "seed": spec.seed,
            "seeds": {m: [spec.seed + k for k in range(spec.samples)] for m in spec.methods},
            "p_scope": spec.p_scope,
            "critical": "SDC-1 on at least one image",
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in (options or {}).items()},
        },
        "versions": versions(),
    }
    csv_path, json_path, npz_path = out / "samples.csv", out / "validate.json", out / "sample_rows.npz"
    write_atomic(csv_path, write_csv, "--out")
    write_atomic(npz_path, write_npz, "--out")
    write_text_atomic(json_path, json.dumps(result, indent=1, default=_json_default), "--out")
    return {**result, "csv": csv_path, "json": json_path, "rows": npz_path}


def _json_default(v):
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    if isinstance(v, tuple):
        return list(v)
    return str(v)
