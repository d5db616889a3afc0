"""Harden a trained CNN after the fact: a torch.fx rewrite with the DieHardNet changes, and its exact rebuild.

The model is traced with ``torch.fx`` and its graph is rewritten, one site at a time:

- bounded activations: every ReLU (module, function or tensor method) becomes a ReLU6-style clamp
  ``hardtanh(x, 0, bound)``, every GELU a GELU capped at ``bound``; the bound is the recipe's constant or, per
  site, a percentile of that activation's values on calibration images (activation-range supervision). Below
  the bound the clamp computes exactly what the ReLU did, so a bound above every calibration value leaves the
  outputs on those images bit-identical;
- NaN/Inf filters after every activation (the bounded ones too: a clamp lets NaN through) and on the input of
  the classifier (the last linear layer);
- order inversion: a conv -> BN -> activation chain becomes conv -> activation -> BN. This changes what the
  trained weights compute, so ``diehard harden`` offers it only together with fine-tuning.

A site is named after its fx node in the traced original (``blocks_0_act``, ``relu_1``), which is a function of
the model's code alone; new modules live under ``hardening.<site>`` and hold no parameters, so the hardened
state_dict has the original's keys. A hardened checkpoint stores the recipe and the bound of every site in
``config.json`` (``"hardening"``); ``load_model`` rebuilds the original architecture, applies the same rewrite
with the saved bounds (:func:`rebuild`) and loads ``model.pt``: no pickled code.

Every decision goes into a report, one row per change and one per site the recipe could not apply to, with
the reason. New architectures only need to trace: the rewrite works on the graph, not on class names.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diehardlab.hardening.models import BoundedGELU, BoundedReLU, NanFilter, config_from_dict
from pydantic import ConfigDict
from torch import fx, nn

from diehardlab.config import read_toml
from diehardlab.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
RECIPE_DIR = ROOT / "setups" / "hardening"
CONTAINER = "hardening"  # the submodule that holds every module the rewrite adds


@dataclass
class Recipe:
    """A named set of changes (``setups/hardening/*.toml``)."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    name: str = "custom"
    description: str = ""
    # relu6: ReLU -> clamp(0, bound), GELU -> min(GELU, bound) (both exact below the bound);
    # gelu6: every ReLU and GELU -> min(GELU, bound) (changes the function: needs fine-tuning).
    activation: str = "relu6"
    bound: str = "percentile"  # percentile (per site, from calibration images) | constant
    constant: float = 6.0  # the bound when bound = "constant" (the paper's 6), and for sites never positive
    percentile: float = 99.99  # of the activation's values over the calibration images (every element)
    margin: float = 1.0  # bound = margin x percentile value
    nan_filter: bool = True
    order_inversion: bool = False  # conv -> BN -> act becomes conv -> act -> BN (needs fine-tuning)

    def __post_init__(self) -> None:
        if self.activation not in ("relu6", "gelu6"):
            raise ConfigError(f"activation: {self.activation!r} is not relu6 or gelu6")
        if self.bound not in ("percentile", "constant"):
            raise ConfigError(f"bound: {self.bound!r} is not percentile or constant")
        if not (self.constant > 0 and math.isfinite(self.constant)):
            raise ConfigError(f"constant: must be a finite number > 0 (got {self.constant!r})")
        if not 50.0 <= self.percentile <= 100.0:
            raise ConfigError(f"percentile: must be within [50, 100] (got {self.percentile!r})")
        if not (self.margin >= 1.0 and math.isfinite(self.margin)):
            raise ConfigError(f"margin: must be a finite number >= 1 (got {self.margin!r})")

    @property
    def changes_function(self) -> bool:
        """True when the hardened model computes something else than the original even below the bounds."""
        return self.order_inversion or self.activation == "gelu6"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def known_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def load_recipe(name_or_path: str | Path) -> tuple[Recipe, str]:
    """A recipe by name (``setups/hardening/NAME.toml``) or by file path; returns it and the file it came from."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = RECIPE_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            known = ", ".join(known_recipes()) or f"none: {RECIPE_DIR} is missing"
            raise ConfigError(f"--recipe {name_or_path}: no such recipe (known: {known}); or give a TOML file")
    return config_from_dict(Recipe, read_toml(path), str(path)), str(path)


# ---------------------------------------------------------------- tracing


class _Tracer(fx.Tracer):
    """fx's tracer with diehardlab's activation modules kept whole (their internals are not sites)."""

    LEAVES = (BoundedReLU, BoundedGELU, NanFilter)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.LEAVES) or super().is_leaf_module(m, qualname)


def _user_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of the model's own code (not torch's) in the traceback of a failed trace."""
    frames = traceback.extract_tb(exc.__traceback__)
    torch_dir = str(Path(torch.__file__).parent)
    mine = str(Path(__file__))
    user = [f for f in frames if not f.filename.startswith(torch_dir) and f.filename != mine]
    return user[-1] if user else None


def _module_at(exc: BaseException, root: nn.Module) -> str:
    """The qualified name of the module whose forward was running when the trace failed ('' if unknown)."""
    names = {id(m): n for n, m in root.named_modules()}
    found = ""
    tb = exc.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if isinstance(obj, nn.Module) and id(obj) in names:
            found = names[id(obj)] or "(the model itself)"
        tb = tb.tb_next
    return found


def trace(model: nn.Module) -> fx.GraphModule:
    """The model as an fx GraphModule sharing its parameters; an untraceable model is a ConfigError naming
    the construct (file, line, code, module) and why fx could not follow it."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError... for what it cannot follow
        frame = _user_frame(exc)
        where = f"{frame.filename}:{frame.lineno} in {frame.name}: {(frame.line or '').strip()!r}" if frame else ""
        module = _module_at(exc, model)
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "control flow" in why:
            why += " (data-dependent if/while on a tensor)"
        raise ConfigError(
            f"{type(model).__name__} cannot be traced with torch.fx, so it cannot be rewritten: "
            f"{where or 'unknown place'}{f' (module {module})' if module else ''}: {type(exc).__name__}: {why}. "
            "Make that forward free of data-dependent Python control flow, or harden the model by hand "
            "(diehardlab.hardening.models)"
        ) from None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


# ---------------------------------------------------------------- recognising sites

RELU_FUNCS: tuple[Callable, ...] = (F.relu, torch.relu, torch.relu_)
GELU_FUNCS: tuple[Callable, ...] = (F.gelu,)
BOUNDED_FUNCS: tuple[Callable, ...] = (F.relu6, F.hardtanh, torch.sigmoid, torch.tanh, F.hardsigmoid)
OTHER_FUNCS: tuple[Callable, ...] = (F.leaky_relu, F.elu, F.silu, F.mish, F.softplus, F.hardswish, F.selu, F.celu)
BOUNDED_MODULES = (nn.ReLU6, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Hardsigmoid, BoundedReLU, BoundedGELU)
OTHER_MODULES = (nn.LeakyReLU, nn.ELU, nn.SiLU, nn.Mish, nn.Softplus, nn.Hardswish, nn.PReLU, nn.SELU, nn.CELU)
CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_FUNCS: tuple[Callable, ...] = (F.conv1d, F.conv2d, F.conv3d)
BN_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class Activation:
    family: str  # relu | gelu | bounded | other
    what: str  # a readable name: "nn.ReLU", "F.relu", "Tensor.relu_", ...
    inplace: bool = False
    approximate: str = "none"  # GELU's


def _qualname(fn: Any) -> str:
    mod = getattr(fn, "__module__", "") or ""
    short = {"torch.nn.functional": "F", "torch._C._nn": "F", "torch": "torch", "_operator": "operator"}
    return f"{short.get(mod, mod)}.{getattr(fn, '__name__', repr(fn))}"


def activation_of(node: fx.Node, modules: dict[str, nn.Module]) -> Activation | None:
    """What kind of activation ``node`` is, or None when it is not one."""
    if node.op == "call_module":
        m = modules[str(node.target)]
        name = f"nn.{type(m).__name__}" if type(m).__module__.startswith("torch.nn") else type(m).__name__
        if type(m) is nn.ReLU:
            return Activation("relu", name, bool(m.inplace))
        if type(m) is nn.GELU:
            return Activation("gelu", name, approximate=m.approximate)
        if isinstance(m, BOUNDED_MODULES):
            return Activation("bounded", name)
        if isinstance(m, OTHER_MODULES):
            return Activation("other", name)
        return None
    if node.op == "call_function":
        fn = node.target
        if fn in RELU_FUNCS:
            return Activation("relu", _qualname(fn), fn is torch.relu_ or bool(node.kwargs.get("inplace")))
        if fn in GELU_FUNCS:
            return Activation("gelu", _qualname(fn), approximate=str(node.kwargs.get("approximate", "none")))
        if fn in BOUNDED_FUNCS:
            return Activation("bounded", _qualname(fn))
        if fn in OTHER_FUNCS:
            return Activation("other", _qualname(fn))
        return None
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return Activation("relu", f"Tensor.{node.target}", node.target == "relu_")
    if node.op == "call_method" and node.target in ("sigmoid", "tanh", "clamp", "clip"):
        return Activation("bounded", f"Tensor.{node.target}") if node.target in ("sigmoid", "tanh") else None
    return None


def _is_conv(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], CONV_MODULES)
    return node.op == "call_function" and node.target in CONV_FUNCS


def _is_bn(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return node.op == "call_module" and isinstance(modules[str(node.target)], BN_MODULES)


def _is_linear(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], nn.Linear)
    return node.op == "call_function" and node.target is F.linear


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    if node.op == "call_function":
        return f"{node.name} ({_qualname(node.target)})"
    if node.op == "call_method":
        return f"{node.name} (Tensor.{node.target})"
    return f"{node.name} ({node.op})"


def _input(node: fx.Node) -> fx.Node | None:
    arg = node.args[0] if node.args else node.kwargs.get("input", node.kwargs.get("x"))
    return arg if isinstance(arg, fx.Node) else None


# ---------------------------------------------------------------- the rewrite


@dataclass
class Change:
    site: str  # fx node name in the traced original
    kind: str  # activation | nan-filter | order | classifier
    action: str  # bounded | inserted | inverted | skipped
    detail: str

    def line(self) -> str:
        return f"{self.kind:<11} {self.site:<28} {self.action:<9} {self.detail}"


@dataclass
class Hardened:
    model: fx.GraphModule
    recipe: Recipe
    changes: list[Change]
    bounds: dict[str, float]  # site -> bound of every bounded activation the rewrite added

    @property
    def inverted(self) -> int:
        return sum(1 for c in self.changes if c.kind == "order" and c.action == "inverted")

    def record(self) -> dict[str, Any]:
        """The ``"hardening"`` entry of config.json: enough to rebuild the graph exactly, and the report."""
        return {
            "recipe": self.recipe.to_dict(),
            "bounds": {k: float(v) for k, v in self.bounds.items()},
            "changes": [asdict(c) for c in self.changes],
        }


def _add_module(gm: fx.GraphModule, site: str, module: nn.Module) -> str:
    container = getattr(gm, CONTAINER, None)
    if container is None:
        container = nn.Module()
        gm.add_module(CONTAINER, container)
    container.add_module(site, module)
    return f"{CONTAINER}.{site}"


def _invert_orders(gm: fx.GraphModule, modules: dict[str, nn.Module], changes: list[Change]) -> None:
    """conv -> BN -> act becomes conv -> act -> BN, where the chain is private (each value has one reader)."""
    for bn in list(gm.graph.nodes):
        if not _is_bn(bn, modules):
            continue
        src = _input(bn)
        users = list(bn.users)
        if src is None or not _is_conv(src, modules):
            why = f"its input is {_describe(src) if src is not None else 'not a graph value'}, not a convolution"
        elif len(src.users) != 1:
            others = ", ".join(_describe(u) for u in src.users if u is not bn)
            why = f"the output of {_describe(src)} is also read by {others}"
        elif len(users) != 1:
            why = f"its output has {len(users)} readers ({', '.join(_describe(u) for u in users)})"
        elif activation_of(users[0], modules) is None or activation_of(users[0], modules).family == "other":
            why = f"its output feeds {_describe(users[0])}, not an activation this recipe handles"
        else:
            act = users[0]
            # act now reads the conv, BN reads the act, and whoever read the act reads BN.
            act.replace_all_uses_with(bn)
            bn.args = (act, *bn.args[1:])
            act.args = (src, *act.args[1:])
            act.append(bn)
            changes.append(
                Change(bn.name, "order", "inverted", f"{_describe(src)} -> {_describe(act)} -> {_describe(bn)}")
            )
            continue
        changes.append(Change(bn.name, "order", "skipped", why))


def _bounded_module(family: str, act: Activation, recipe: Recipe, bound: float) -> tuple[nn.Module, str]:
    if recipe.activation == "gelu6" or family == "gelu":
        approximate = act.approximate if family == "gelu" else "none"
        return BoundedGELU(bound, approximate), f"min(GELU{'' if approximate == 'none' else '-' + approximate}, b)"
    return BoundedReLU(bound), "clamp(x, 0, b)"


def _rewrite(model: nn.Module, recipe: Recipe, bounds: dict[str, float] | None) -> Hardened:
    """The structural rewrite. ``bounds`` (site -> bound) fixes every bound (a rebuild); None puts +inf where a
    percentile is to be calibrated and the recipe's constant elsewhere."""
    gm = trace(model)
    modules = dict(gm.named_modules())
    if CONTAINER in modules:
        raise ConfigError(
            f"the model already has a submodule named {CONTAINER!r}: it was hardened before "
            "(harden the original checkpoint instead)"
        )
    changes: list[Change] = []
    if recipe.order_inversion:
        _invert_orders(gm, modules, changes)
    new_bounds: dict[str, float] = {}
    graph = gm.graph
    for node in list(graph.nodes):
        act = activation_of(node, modules)
        if act is None:
            continue
        site = node.name
        src = _input(node)
        last = node
        others = [u for u in src.users if u is not node] if src is not None else []
        if act.family in ("relu", "gelu") and act.inplace and others:
            # Out of place, it would leave the other readers the value before the activation: not rewritten
            # (a NaN filter after it is still safe).
            changes.append(Change(site, "activation", "skipped",
                                  f"{act.what} works in place and its input is also read by "
                                  f"{', '.join(_describe(u) for u in others)}"))  # fmt: skip
        elif act.family in ("relu", "gelu") and src is not None:
            if bounds is not None:
                if site not in bounds:
                    raise DataError(f"activation {site} ({act.what}) has no saved bound: the model's code changed")
                bound = float(bounds[site])
            else:
                bound = math.inf if recipe.bound == "percentile" else recipe.constant
            module, formula = _bounded_module(act.family, act, recipe, bound)
            # The node becomes a call of the new module in place: it keeps its name, position and readers.
            node.op, node.target = "call_module", _add_module(gm, site, module)
            node.args, node.kwargs = (src,), {}
            new_bounds[site] = bound
            changes.append(Change(site, "activation", "bounded", f"{act.what} -> {formula}"))
        elif act.family == "bounded":
            changes.append(Change(site, "activation", "skipped", f"{act.what} is bounded already"))
        else:
            changes.append(Change(site, "activation", "skipped",
                                  f"{act.what}: only ReLU and GELU are bounded by this rewrite"))  # fmt: skip
        readers = list(last.users)
        if recipe.nan_filter and len(readers) == 1 and _is_nan_filter(gm, readers[0]):
            changes.append(Change(site, "nan-filter", "skipped", f"already followed by {readers[0].target}"))
        elif recipe.nan_filter:
            target = _add_module(gm, f"{site}_nanfilter", NanFilter())
            with graph.inserting_after(last):
                filt = graph.call_module(target, (last,))
            last.replace_all_uses_with(filt, delete_user_cb=lambda u, f=filt: u is not f)
            changes.append(Change(site, "nan-filter", "inserted", f"after {site}"))
    if recipe.nan_filter:
        _filter_classifier(gm, dict(gm.named_modules()), changes)
    if bounds is not None:
        unused = sorted(set(bounds) - set(new_bounds))
        if unused:
            raise DataError(f"saved bounds for {', '.join(unused)}, which the model no longer has: its code changed")
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return Hardened(gm, recipe, changes, new_bounds)


def _is_nan_filter(gm: fx.GraphModule, node: fx.Node) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), NanFilter)


def _filter_classifier(gm: fx.GraphModule, modules: dict[str, nn.Module], changes: list[Change]) -> None:
    """A NaN filter on the input of the classifier: the last linear layer before the output."""
    linears = [n for n in gm.graph.nodes if _is_linear(n, modules)]
    if not linears:
        changes.append(Change("output", "classifier", "skipped", "no linear layer: no classifier input to filter"))
        return
    fc = linears[-1]
    src = _input(fc)
    if src is None:
        changes.append(Change(fc.name, "classifier", "skipped", "its input is not a graph value"))
        return
    if _is_nan_filter(gm, src):
        changes.append(Change(fc.name, "classifier", "skipped", f"its input is already filtered ({src.target})"))
        return
    target = _add_module(gm, f"{fc.name}_input_nanfilter", NanFilter())
    with gm.graph.inserting_before(fc):
        filt = gm.graph.call_module(target, (src,))
    fc.replace_input_with(src, filt)
    changes.append(Change(fc.name, "classifier", "inserted", f"NaN filter on the input of {_describe(fc)}"))


# ---------------------------------------------------------------- calibration


class _TopValues:
    """The ``keep`` largest values seen so far (exact high percentiles without storing every activation)."""

    def __init__(self, keep: int):
        self.keep = keep
        self.values = torch.empty(0)

    def add(self, x: torch.Tensor) -> None:
        flat = x.detach().float().flatten()
        k = min(self.keep, flat.numel())
        top = torch.topk(flat, k, sorted=False).values.cpu()
        merged = torch.cat([self.values, top])
        self.values = torch.topk(merged, min(self.keep, merged.numel()), sorted=False).values


@torch.no_grad()
def calibrate(hardened: Hardened, images: Iterable[torch.Tensor], count: int) -> dict[str, dict[str, float]]:
    """Set each percentile bound from the activations on ``images`` (batches, ``count`` images in all).

    The percentile is over every element of the activation's output on every image ("higher" rank: the value
    at rank ceil(q/100 x n)). A site whose percentile is 0 (never positive) gets the recipe's constant.
    Returns, per site, the percentile value, the maximum and the bound set.
    """
    recipe = hardened.recipe
    gm = hardened.model
    sites = [s for s, b in hardened.bounds.items() if math.isinf(b)]
    if not sites:
        return {}
    mods = {s: gm.get_submodule(f"{CONTAINER}.{s}") for s in sites}
    tops: dict[str, _TopValues] = {}
    maxima: dict[str, float] = dict.fromkeys(sites, -math.inf)
    totals: dict[str, int] = dict.fromkeys(sites, 0)

    def hook(site: str):
        def fn(_m: nn.Module, _args: Any, out: torch.Tensor) -> None:
            if site not in tops:
                per_image = out[0].numel()
                n = per_image * count
                rank = min(max(math.ceil(recipe.percentile / 100.0 * n), 1), n)
                tops[site] = _TopValues(n - rank + 1)
            tops[site].add(out)
            totals[site] += out.numel()
            maxima[site] = max(maxima[site], float(out.detach().float().max()))

        return fn

    handles = [m.register_forward_hook(hook(s)) for s, m in mods.items()]
    was_training = gm.training
    gm.eval()
    try:
        for x in images:
            if len(x):  # an empty batch has no activation values (and its max would be undefined)
                gm(x)
    finally:
        for h in handles:
            h.remove()
        gm.train(was_training)
    out: dict[str, dict[str, float]] = {}
    for s in sites:
        if s not in tops:
            raise DataError(f"calibration: activation {s} never ran on the calibration images")
        q = float(tops[s].values.min()) if tops[s].values.numel() else 0.0
        bound = recipe.margin * q if q > 0 else recipe.constant
        if not math.isfinite(bound):
            raise DataError(f"calibration: activation {s} has non-finite values on the calibration images")
        mods[s].bound = bound
        hardened.bounds[s] = bound
        out[s] = {"percentile_value": q, "max": maxima[s], "bound": bound, "values": totals[s]}
    for c in hardened.changes:
        if c.kind == "activation" and c.action == "bounded" and c.site in out:
            info = out[c.site]
            note = f"p{recipe.percentile:g} = {info['percentile_value']:.4g}"
            if info["percentile_value"] <= 0:
                note = f"never positive on calibration: constant {recipe.constant:g}"
            elif recipe.margin != 1.0:
                note += f" x margin {recipe.margin:g}"
            c.detail += f", b = {info['bound']:.4g} ({note}; max seen {info['max']:.4g})"
    return out


def harden(model: nn.Module, recipe: Recipe) -> Hardened:
    """The rewritten model with every bound at the recipe's constant, or at +inf until :func:`calibrate`."""
    h = _rewrite(model, recipe, None)
    if recipe.bound == "constant":
        for c in h.changes:
            if c.kind == "activation" and c.action == "bounded":
                c.detail += f", b = {recipe.constant:g} (constant)"
    return h


def rebuild(model: nn.Module, record: dict[str, Any], source: str = "config.json") -> fx.GraphModule:
    """The hardened graph of ``model`` (the original architecture) from a checkpoint's ``"hardening"`` entry."""
    try:
        recipe = config_from_dict(Recipe, record["recipe"], f"{source}: hardening -> recipe")
        bounds = {str(k): float(v) for k, v in record["bounds"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{source}: the 'hardening' entry is incomplete ({type(exc).__name__}: {exc})") from exc
    try:
        return _rewrite(model, recipe, bounds).model
    except DataError as exc:
        raise DataError(f"{source}: cannot rebuild the hardened model: {exc}") from exc


def sites_of(gm: nn.Module) -> dict[str, nn.Module]:
    """The modules the rewrite added, by name under ``hardening.`` (empty for a model never hardened)."""
    container = getattr(gm, CONTAINER, None)
    return dict(container.named_children()) if isinstance(container, nn.Module) else {}
