"""Fault populations and statistical sample sizes per network, layer and bit (Ruospo et al., DATE 2023).

A *layer* is a convolution or linear module; its weight population is every element of its weight and bias
(ResNet-20 for CIFAR-10 then has the published 268,346 weights). Each population element can take
``width x values`` faults: the width is the bits of the element's stored format (32 for float32, 16 for
float16/bfloat16, taken from the tensor itself), 2 values (stuck-at-0, stuck-at-1) for the stuck-at model, 1 for
bit flips.

Methods (FORMATS.md section 6):
- ``network``: one population, n = sample_size(N);
- ``layer``: one population per layer;
- ``data-unaware``: one per (layer, bit), p = 0.5;
- ``data-aware``: one per (layer, bit), p(i) from the weights (see :func:`data_aware_p`), with f0(i), f1(i)
  and D_avg(i) computed over each layer's weights (``p_scope="layer"``, the default) or over all the network's
  weights (``p_scope="network"``, the paper's: every layer then gets the same p(i), and equal-sized layers the
  same sample, as in its Table I);
- ``suite``: the resilience benchmark suite's lists as SFIadvancedmodels draws them: the network-wise size
  n = round(sample_size(64 W)) for the W conv/linear *weights* (no biases; 2 stuck-at values per bit, as it
  counts), split over the layers in proportion to their weights and rounded per layer, drawn as bit flips at
  distinct (element, bit). This reproduces the row count of every one of the suite's 15 released lists, layer
  by layer (its Table V: ResNet-20 16,627, MobileNetV2 16,640, DenseNet-121 16,628 on CIFAR-10).
Activation targets (a layer's output, per image) use the same methods, except ``data-aware``.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diehardlab.errors import ConfigError
from diehardlab.outfiles import write_atomic, write_figure, write_text_atomic
from diehardlab.sampling import achieved_error, sample_size, t_value

METHODS = ("network", "layer", "data-unaware", "data-aware", "suite")
P_SCOPES = ("layer", "network")
# the integer type of each stored float format's width, to read and flip its bits (float32 -> int32 ...)
_INT_VIEW = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}
FAULT_MODELS = ("stuck-at", "bitflip")
TARGETS = ("weights", "activations")


@dataclass
class Layer:
    """One injectable layer: its module name and the tensors a fault can hit (parameter names or 'output')."""

    module: str
    kind: str  # "conv" or "linear"
    tensors: list[str]  # full parameter names ("fc.weight", "fc.bias") or ["<module>.output"]
    shapes: list[tuple[int, ...]]
    width: int = 32  # bits of one stored element (tensor.element_size() * 8)
    dtype: str = "float32"

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def name(self) -> str:
        """The module for weight targets, ``<module>.output`` for activation targets (tables and strata)."""
        return self.tensors[0] if self.tensors and self.tensors[0].endswith(".output") else self.module


@dataclass
class Stratum:
    """One population of the plan and how many faults to draw from it."""

    layer: str  # module name, or "*" for the whole network
    bit: int  # bit position, or -1 for every bit
    population: int
    p: float
    n: int

    def margin(self, t: float) -> float:
        return achieved_error(self.population, self.n, t=t, p=0.5)


@dataclass
class Plan:
    method: str
    error: float
    confidence: float
    t: float
    fault_model: str
    target: str
    layers: list[Layer]
    strata: list[Stratum]
    p_table: dict[str, list[float]] = field(default_factory=dict)  # data-aware p(i) per layer, bits 0..width-1
    p_scope: str = "layer"  # where data-aware f0, f1, D_avg come from: each layer's weights or the network's
    bit_stats: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # scope -> f0, f1, d_avg, p per bit

    @property
    def values_per_bit(self) -> int:
        return 2 if self.fault_model == "stuck-at" else 1

    @property
    def population(self) -> int:
        return sum(layer.numel * layer.width for layer in self.layers) * self.values_per_bit

    @property
    def total(self) -> int:
        return sum(s.n for s in self.strata)

    def per_layer(self) -> list[tuple[str, int, int]]:
        """(layer, population, sample) per layer; for the network method the sample is the expected share."""
        out = []
        for layer in self.layers:
            pop = layer.numel * layer.width * self.values_per_bit
            if self.method == "network":
                n = self.total * pop / self.population if self.population else 0
                out.append((layer.name, pop, round(n)))
            else:
                out.append((layer.name, pop, sum(s.n for s in self.strata if s.layer == layer.name)))
        return out

    def to_json(self) -> dict:
        d = asdict(self)
        d["population"] = self.population
        d["total"] = self.total
        return d

    @classmethod
    def from_json(cls, d: dict) -> Plan:
        layers = [
            Layer(
                x["module"],
                x["kind"],
                list(x["tensors"]),
                [tuple(s) for s in x["shapes"]],
                int(x.get("width", 32)),
                x.get("dtype", "float32"),
            )
            for x in d["layers"]
        ]
        strata = [Stratum(**s) for s in d["strata"]]
        return cls(
            method=d["method"],
            error=d["error"],
            confidence=d["confidence"],
            t=d["t"],
            fault_model=d["fault_model"],
            target=d["target"],
            layers=layers,
            strata=strata,
            p_table=d.get("p_table", {}),
            p_scope=d.get("p_scope", "layer"),
            bit_stats=d.get("bit_stats", {}),
        )


def injectable_layers(model: nn.Module) -> list[Layer]:
    """Convolution and linear modules in registration order, with their weight and bias tensors.

    An int8 layer (torch.ao or the exact emulation) is its weight codes: 8-bit populations and strata; its
    float32 bias, stored apart, is not in a plan's population (a fault list may still name it)."""
    from diehardlab.hardening.sfi.targets import is_quantized_layer, layer_kind, weight_tensors

    layers = []
    for name, mod in model.named_modules():
        if is_quantized_layer(mod):
            codes = weight_tensors(name, mod, "weights")
            kind = layer_kind(mod) or "conv"
            if codes:
                fmt = codes[0].fmt
                layers.append(
                    Layer(name, kind, [c.name for c in codes], [tuple(c.shape) for c in codes], fmt.width, fmt.name)
                )
        elif isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            tensors, shapes, dtypes = [], [], set()
            for pname, param in mod.named_parameters(recurse=False):
                tensors.append(f"{name}.{pname}" if name else pname)
                shapes.append(tuple(param.shape))
                dtypes.add(param.dtype)
            if len(dtypes) > 1:
                kinds = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
                raise ConfigError(f"layer {name}: its parameters are stored in different formats ({kinds})")
            dtype = dtypes.pop() if dtypes else torch.float32
            width = torch.empty(0, dtype=dtype).element_size() * 8
            kind = "linear" if isinstance(mod, nn.Linear) else "conv"
            layers.append(Layer(name, kind, tensors, shapes, width, str(dtype).removeprefix("torch.")))
    if not layers:
        raise ConfigError("the model has no convolution or linear layer to inject faults into")
    return layers


def activation_layers(model: nn.Module, example: torch.Tensor) -> list[Layer]:
    """The same layers with their output (one image) as the fault target; shapes from one forward pass."""
    from diehardlab.hardening.sfi.targets import output_shapes

    shapes = {name: shape for name, (_fmt, shape) in output_shapes(model, example).items()}
    return [
        Layer(x.module, x.kind, [f"{x.module}.output"], [shapes[x.module]], x.width, x.dtype)
        for x in injectable_layers(model)
        if x.module in shapes
    ]


def layer_values(model: nn.Module, layer: Layer) -> torch.Tensor:
    """All weights of a layer (weight and bias) as one flat CPU tensor in their stored format."""
    return layer_stored_values(model, layer)[0]


def layer_stored_values(model: nn.Module, layer: Layer) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the layer's stored values as one flat CPU tensor, per element the scale that turns an int8 code into the
    number it stands for, or None for float layers)."""
    params = dict(model.named_parameters())
    if all(t in params for t in layer.tensors):
        return torch.cat([params[t].detach().reshape(-1).cpu() for t in layer.tensors]), None
    from diehardlab.hardening.sfi.targets import stored_tensors

    stored = stored_tensors(model)
    parts = [stored[t] for t in layer.tensors]
    codes = torch.cat([s.read().reshape(-1).cpu() for s in parts])
    scales = [s.value_scale() for s in parts]
    if any(x is None for x in scales):
        return codes, None
    return codes, torch.cat([x.reshape(-1).cpu() for x in scales])


def _bit_mask(bit: int, width: int) -> int:
    """The signed integer of ``width`` bits whose only set bit is ``bit`` (the top bit is negative)."""
    return -(1 << bit) if bit == width - 1 else 1 << bit


def bit_stats(w: torch.Tensor, scale: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Per bit i of the stored format of ``w`` (its width from the tensor: 32 for float32, 16 for float16, 8 for
    int8 codes):

    f0(i), f1(i) the shares of weights whose bit i is 0 or 1, d01(i) and d10(i) the mean |w - flip_i(w)| over
    the weights whose bit goes 0->1 and 1->0, and D_avg(i) = d01 f0 + d10 f1 (Ruospo et al., DATE 2023). For
    int8 codes the change is in the numbers they stand for: the code's change times its channel's ``scale``.
    """
    w = w.detach().reshape(-1).contiguous().cpu()
    if w.dtype == torch.int8:
        ints = w
        s = scale.detach().reshape(-1).cpu().double() if scale is not None else torch.ones(len(w), dtype=torch.float64)

        def value(i: torch.Tensor) -> torch.Tensor:
            return i.double() * s

    elif w.dtype in _INT_VIEW:
        ints = w.view(_INT_VIEW[w.dtype])

        def value(i: torch.Tensor) -> torch.Tensor:
            return i.view(w.dtype).double()

    else:
        raise ConfigError(f"data-aware p(i): weights stored as {w.dtype} are not a format this plan reads")
    width = w.element_size() * 8
    w64 = value(ints)
    stats = {k: np.zeros(width) for k in ("f0", "f1", "d01", "d10", "d_avg")}
    for bit in range(width):
        mask = _bit_mask(bit, width)
        d = (w64 - value(ints ^ mask)).abs()
        d[~torch.isfinite(d)] = math.inf  # a flip to inf/NaN is an unbounded change
        ones = (ints & mask) != 0
        f1 = ones.double().mean().item() if len(w) else 0.0
        f0 = 1.0 - f1
        d01 = d[~ones].mean().item() if (~ones).any() else 0.0
        d10 = d[ones].mean().item() if ones.any() else 0.0
        for key, v in (("f0", f0), ("f1", f1), ("d01", d01), ("d10", d10), ("d_avg", d01 * f0 + d10 * f1)):
            stats[key][bit] = v
    return stats


def bit_change_stats(w: torch.Tensor) -> np.ndarray:
    """D_avg(i) per bit: mean |w - flip_i(w)| of 0->1 flips times f_0(i) plus that of 1->0 flips times f_1(i)."""
    return bit_stats(w)["d_avg"]


def data_aware_p(d_avg: np.ndarray) -> np.ndarray:
    """p(i): D_avg min-max normalised into [0, 0.5]; outliers get 0.5.

    Outliers are non-finite values and values above the upper Tukey fence (Q3 + 1.5 IQR) of the finite
    D_avg of the layer: the high exponent bits, whose flips change a weight by orders of magnitude more than
    any mantissa bit and would otherwise squash every other bit to p = 0.
    """
    d = np.asarray(d_avg, dtype=float)
    finite = np.isfinite(d)
    p = np.full(d.shape, 0.5)
    if not finite.any():
        return p
    q1, q3 = np.percentile(d[finite], [25, 75])
    inlier = finite & (d <= q3 + 1.5 * (q3 - q1))
    lo, hi = d[inlier].min(), d[inlier].max()
    p[inlier] = 0.5 * (d[inlier] - lo) / (hi - lo) if hi > lo else 0.5
    return p


def make_plan(
    model: nn.Module,
    method: str,
    error: float = 0.01,
    confidence: float = 0.99,
    fault_model: str | None = None,
    target: str = "weights",
    example: torch.Tensor | None = None,
    p_scope: str = "layer",
) -> Plan:
    """Populations and sample sizes for ``model`` under ``method`` (see the module docstring); the fault model
    defaults to stuck-at (0 and 1), bit flips for ``suite``; ``p_scope`` says where the data-aware p(i) comes
    from (each layer's weights, or the whole network's as the paper computes it)."""
    fault_model = fault_model or default_fault_model(method)
    if method not in METHODS:
        raise ConfigError(f"--method: unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if fault_model not in FAULT_MODELS:
        raise ConfigError(f"--fault-model: unknown fault model {fault_model!r}; choose {' or '.join(FAULT_MODELS)}")
    if target not in TARGETS:
        raise ConfigError(f"--target: unknown target {target!r}; choose {' or '.join(TARGETS)}")
    if not 0 < error < 1:
        raise ConfigError(f"--error: the error margin must be in (0, 1), got {error}")
    if not 0 < confidence < 1:
        raise ConfigError(f"--confidence: must be in (0, 1), got {confidence}")
    if p_scope not in P_SCOPES:
        raise ConfigError(f"--p-scope: unknown scope {p_scope!r}; choose {' or '.join(P_SCOPES)}")
    if p_scope != "layer" and method != "data-aware":
        raise ConfigError(f"--p-scope {p_scope} applies to --method data-aware only (not {method})")
    if method == "suite":
        return _suite_plan(model, error, confidence, fault_model, target)
    if target == "activations":
        if method == "data-aware":
            raise ConfigError("--method data-aware estimates p(i) from weights; use it with --target weights")
        if example is None:
            raise ConfigError("activation targets need an example input to size the layer outputs")
        layers = activation_layers(model, example)
    else:
        layers = injectable_layers(model)
    t = t_value(confidence)
    vals = 2 if fault_model == "stuck-at" else 1
    strata: list[Stratum] = []
    p_table: dict[str, list[float]] = {}
    stats: dict[str, dict[str, list[float]]] = {}
    if method == "network":
        pop = sum(x.numel * x.width for x in layers) * vals
        strata.append(Stratum("*", -1, pop, 0.5, sample_size(pop, error, t, 0.5)))
    elif method == "layer":
        for x in layers:
            pop = x.numel * x.width * vals
            strata.append(Stratum(x.name, -1, pop, 0.5, sample_size(pop, error, t, 0.5)))
    else:
        if method == "data-aware":
            stats = data_aware_stats(model, layers, p_scope)
        for x in layers:
            pop = x.numel * vals
            if method == "data-aware":
                p = np.array(stats["*" if p_scope == "network" else x.name]["p"])
                p_table[x.name] = [float(v) for v in p]
            else:
                p = np.full(x.width, 0.5)
            for bit in range(x.width):
                strata.append(Stratum(x.name, bit, pop, float(p[bit]), sample_size(pop, error, t, float(p[bit]))))
    return Plan(method, error, confidence, t, fault_model, target, layers, strata, p_table, p_scope, stats)


def first_of_each(layers: list[Layer]) -> dict[str, str]:
    """The first layer of each stored format, for messages about mixed formats."""
    out: dict[str, str] = {}
    for x in layers:
        out.setdefault(x.dtype, x.name)
    return out


def data_aware_stats(model: nn.Module, layers: list[Layer], p_scope: str = "layer") -> dict[str, dict[str, list]]:
    """f0, f1, d01, d10, D_avg and p(i) per bit: per layer, or once (key ``*``) over every layer's weights."""
    if p_scope == "network":
        if len({x.dtype for x in layers}) > 1:  # one set of per-bit statistics needs one format
            raise ConfigError(
                "--p-scope network: the layers are stored in different formats "
                f"({', '.join(f'{d} (first: {n})' for d, n in first_of_each(layers).items())}); use --p-scope layer"
            )
        parts = [layer_stored_values(model, x) for x in layers]
        scales = [sc for _, sc in parts]
        groups = {
            "*": (
                torch.cat([w for w, _ in parts]),
                None if any(sc is None for sc in scales) else torch.cat(scales),
            )
        }
    else:
        groups = {x.name: layer_stored_values(model, x) for x in layers}
    out = {}
    for name, (w, scale) in groups.items():
        st = bit_stats(w, scale)
        st["p"] = data_aware_p(st["d_avg"])
        out[name] = {k: [float(v) for v in arr] for k, arr in st.items()}
    return out


def weight_layers(model: nn.Module) -> list[Layer]:
    """Convolution and linear modules with their weight only (the suite's population has no biases)."""
    return [
        Layer(x.module, x.kind, x.tensors[:1], x.shapes[:1], x.width, x.dtype)
        for x in injectable_layers(model)
        if x.tensors and x.tensors[0].endswith(".weight")
    ]


def _suite_plan(model: nn.Module, error: float, confidence: float, fault_model: str, target: str) -> Plan:
    if target != "weights":
        raise ConfigError("--method suite draws weight faults; use it with --target weights")
    if fault_model != "bitflip":
        raise ConfigError("--method suite: the suite's lists are bit flips; use --fault-model bitflip (the default)")
    layers = weight_layers(model)
    t = t_value(confidence)
    total_w = sum(x.numel for x in layers)
    # SFIadvancedmodels: N = weights x 32 bits x 2, n rounded, then each layer's share rounded on its own.
    n = sample_size(sum(x.numel * x.width for x in layers) * 2, error, t, 0.5)
    strata = [Stratum(x.name, -1, x.numel * x.width, 0.5, round(n * x.numel / total_w)) for x in layers]
    return Plan("suite", error, confidence, t, "bitflip", "weights", layers, strata)


def default_fault_model(method: str) -> str:
    """``--fault-model`` when not given: bit flips for the suite's method, stuck-at (0 and 1) otherwise."""
    return "bitflip" if method == "suite" else "stuck-at"


def write_plan_csv(plan: Plan, path: Path) -> None:
    """One row per stratum: layer, bit, population, p, sample size, worst-case margin it achieves."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["layer", "bit", "population", "p", "n", "margin_p05"])
            for s in plan.strata:
                bit = s.bit if s.bit >= 0 else "all"
                w.writerow([s.layer, bit, s.population, f"{s.p:.6g}", s.n, f"{s.margin(plan.t):.6g}"])

    write_atomic(path, write, "--csv")


BIT_STATS_HEADER = ["scope", "bit", "f0", "f1", "d01", "d10", "d_avg", "p"]


def write_bit_stats_csv(plan: Plan, path: Path) -> None:
    """The data-aware statistics per bit (the paper's Figs. 3-4): one row per (scope, bit); the scope is a layer,
    or ``*`` for the network-wide statistics of ``--p-scope network``."""
    if not plan.bit_stats:
        raise ConfigError("--p-csv: only --method data-aware computes f0, f1, D_avg and p per bit")

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(BIT_STATS_HEADER)
            for scope, st in plan.bit_stats.items():
                for bit in range(len(st["p"])):
                    w.writerow([scope, bit] + [f"{st[k][bit]:.9g}" for k in BIT_STATS_HEADER[2:]])

    write_atomic(path, write, "--p-csv")


def plot_bit_stats(plan: Plan, path: Path, scope: str | None = None) -> Path | None:
    """f0/f1 per bit (the paper's Fig. 3) and D_avg with the resulting p(i) (its Fig. 4) for one scope (the
    network's, or the first layer's); None when matplotlib is missing."""
    if not plan.bit_stats:
        raise ConfigError("--p-plot: only --method data-aware computes f0, f1, D_avg and p per bit")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    scope = scope or next(iter(plan.bit_stats))
    st = {k: np.asarray(v) for k, v in plan.bit_stats[scope].items()}
    bits = np.arange(len(st["p"]))
    fig, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True)
    axes[0].bar(bits, st["f0"], color="C0", label="f0(i): bit is 0")
    axes[0].bar(bits, st["f1"], bottom=st["f0"], color="C1", label="f1(i): bit is 1")
    axes[0].set_ylabel("share of weights")
    d = np.where(np.isfinite(st["d_avg"]), st["d_avg"], np.nan)
    axes[1].semilogy(bits, np.where(d > 0, d, np.nan), "o-", ms=3, color="C2", label="D_avg(i) (finite values)")
    for b in bits[~np.isfinite(st["d_avg"])]:
        axes[1].axvline(b, color="C3", lw=0.8, ls=":")
    axes[1].set_ylabel("mean |w - flip_i(w)|")
    axes[2].bar(bits, st["p"], color="C4", label="p(i)")
    axes[2].set_ylabel("p(i)")
    axes[2].set_xlabel("bit i (0 = least significant)")
    for ax in axes:
        ax.legend(fontsize=7, loc="upper left")
    where = "all the network's weights" if scope == "*" else f"layer {scope}"
    axes[0].set_title(f"data-aware statistics over {where} ({plan.layers[0].dtype})")
    fig.tight_layout()
    return write_figure(path, fig, "--p-plot")


def save_plan(plan: Plan, path: Path) -> None:
    write_text_atomic(path, json.dumps(plan.to_json(), indent=1), "--out")


def load_plan(path: Path) -> Plan:
    try:
        d = json.loads(Path(path).read_text())
        return Plan.from_json(d)
    except FileNotFoundError as exc:
        raise ConfigError(f"--plan: {path} does not exist; write one with 'diehard sfi plan ... --out {path}'") from exc
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # ValueError: not UTF-8, not JSON
        raise ConfigError(f"--plan: {path} is not a plan written by 'diehard sfi plan' ({exc})") from None
