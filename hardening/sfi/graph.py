"""Run a model as a traced graph, keep every intermediate value, and recompute only what a fault reaches.

The model is traced with ``torch.fx`` (nn.Sequential, ResNets and most feed-forward CNNs trace as they are).
One golden pass per image batch stores the value of every graph node. For a fault, the nodes that read the
faulty tensor are recomputed and so are, in graph order, the nodes that read a changed value; a node whose
recomputed value is bit-identical to its golden value stops the change there, so a fault masked inside the
network costs only the layers up to where it vanished. Everything else is read from the golden cache. The
arithmetic is the model's own, op by op, so outputs are bit-identical to a full forward pass with the fault.

In-place operations (``ReLU(inplace=True)``, ``out += identity``) would overwrite cached values; the trace
rewrites them to their out-of-place forms, which compute the same numbers.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from diehardlab.hardening.sfi.bits import bits_equal
from torch import fx, nn

from diehardlab.errors import ConfigError

_INPLACE_FUNCS: dict[Callable, Callable] = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
}


class _Tracer(fx.Tracer):
    """torch.fx's tracer, keeping the emulated int8 layers and operations (``_diehard_leaf``) as leaves: the
    engine caches their outputs and recomputes them whole, like torch's own layers."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return bool(getattr(m, "_diehard_leaf", False)) or super().is_leaf_module(m, module_qualified_name)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return bits_equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a is b or a == b


class CachedGraph:
    """A traced copy of ``model`` that shares its parameters (a weight flipped in place is seen by both)."""

    def __init__(self, model: nn.Module):
        try:
            tracer = _Tracer()
            gm = fx.GraphModule(model, tracer.trace(model))
        except Exception as exc:  # fx raises many types for untraceable control flow
            raise ConfigError(
                f"the model cannot be traced with torch.fx ({type(exc).__name__}: {exc}); "
                "use --engine naive for models with data-dependent control flow"
            ) from exc
        for mod in gm.modules():
            if hasattr(mod, "inplace") and isinstance(mod.inplace, bool):
                mod.inplace = False
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target in _INPLACE_FUNCS:
                node.target = _INPLACE_FUNCS[node.target]
            elif (
                node.op == "call_method"
                and isinstance(node.target, str)
                and node.target.endswith("_")
                and hasattr(torch.Tensor, node.target[:-1])
            ):
                node.target = node.target[:-1]
            if node.kwargs.get("inplace"):
                node.kwargs = {**node.kwargs, "inplace": False}
        gm.recompile()
        self.gm = gm
        self.nodes: list[fx.Node] = list(gm.graph.nodes)
        self.pos = {n: i for i, n in enumerate(self.nodes)}
        self.modules = dict(gm.named_modules())
        self.users = {n: list(n.users) for n in self.nodes}
        self.output_node = next(n for n in self.nodes if n.op == "output")
        # nodes that read each module (call_module) or parameter (get_attr)
        self._readers: dict[str, list[fx.Node]] = {}
        for n in self.nodes:
            if n.op in ("call_module", "get_attr"):
                self._readers.setdefault(str(n.target), []).append(n)

    def readers(self, tensor: str) -> list[fx.Node]:
        """The nodes whose value depends directly on a parameter ("fc.weight") or module output ("fc.output")."""
        owner, _, attr = tensor.rpartition(".")
        found = self._readers.get(tensor, []) + self._readers.get(owner, [])
        if not found:
            raise ConfigError(f"fault target {tensor!r}: no layer of the model reads it (module {owner!r}, {attr!r})")
        return sorted(set(found), key=self.pos.__getitem__)

    def _exec(self, node: fx.Node, lookup: Callable[[fx.Node], Any]) -> Any:
        args = fx.node.map_arg(node.args, lookup)
        kwargs = fx.node.map_arg(node.kwargs, lookup)
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            self_obj, *rest = args
            return getattr(self_obj, node.target)(*rest, **kwargs)
        if node.op == "get_attr":
            obj: Any = self.gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            return obj
        raise RuntimeError(f"unexpected node {node.op}")

    @torch.no_grad()
    def golden(self, *inputs: torch.Tensor) -> dict[fx.Node, Any]:
        """Run the whole graph once; the returned cache holds every node's value (the output under 'output')."""
        env: dict[fx.Node, Any] = {}
        it = iter(inputs)
        for n in self.nodes:
            if n.op == "placeholder":
                env[n] = next(it)
            elif n.op == "output":
                env[n] = fx.node.map_arg(n.args[0], env.__getitem__)
            else:
                env[n] = self._exec(n, env.__getitem__)
        return env

    @torch.no_grad()
    def rerun(
        self,
        cache: dict[fx.Node, Any],
        start: list[fx.Node],
        override: dict[fx.Node, Any] | None = None,
        compute: dict[fx.Node, Callable[[Callable[[fx.Node], Any]], Any]] | None = None,
    ) -> Any | None:
        """Recompute from ``start`` (nodes to recompute, or to replace by ``override``) downstream.

        ``compute`` gives a cheaper exact way to compute some start nodes (called with the value lookup).
        Returns the new output, or None when the change vanished on the way (the output equals the golden).
        """
        override = override or {}
        compute = compute or {}
        changed: dict[fx.Node, Any] = {}
        pending = set(start)
        lookup = lambda n: changed[n] if n in changed else cache[n]  # noqa: E731
        first = min(self.pos[n] for n in start)
        for n in self.nodes[first:]:
            if n not in pending:
                continue
            pending.discard(n)
            if n.op == "output":
                return fx.node.map_arg(n.args[0], lookup)
            if n in override:
                value = override[n]
            elif n in compute:
                value = compute[n](lookup)
            else:
                value = self._exec(n, lookup)
            if n not in override and _same(value, cache[n]):
                if not pending:
                    return None
                continue
            changed[n] = value
            pending.update(self.users[n])
        return None
