"""The injection campaign: every fault of a list on every image, outcome per (fault, image).

Outcomes (FORMATS.md section 6): 0 Masked (output bit-identical to the golden), 1 Non-critical (output differs,
same top-1), 2 SDC-1 (top-1 changed, or a non-finite output). A weight fault is written into the live parameter
in place (where the model stores it, in its format: targets.py) and restored after each use (no model copies); an
activation fault replaces the cached output of its layer for every image of the batch, in the format that output
is stored in. The ``cached`` engine recomputes only what the fault reaches (graph.py);
the ``naive`` engine runs the full forward pass with the same in-place fault and is the reference the cached
engine must match bit for bit (and the fallback for models torch.fx cannot trace).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diehardlab.hardening.numerics import AppliedNumerics, NumericsPolicy, apply_numerics, layer_forward
from diehardlab.hardening.sfi.bits import apply_model, bits_equal, same_bits_per_row
from diehardlab.hardening.sfi.faultlist import Fault
from diehardlab.hardening.sfi.targets import Stored, fault_activation, stored_tensors
from torch import nn

from diehardlab.errors import ConfigError

MASKED, NON_CRITICAL, SDC1 = 0, 1, 2
OUTCOME_NAMES = ("masked", "non-critical", "sdc-1")
ENGINES = ("cached", "naive")


def classify(out: torch.Tensor, golden: torch.Tensor) -> torch.Tensor:
    """Outcome per image (int8, on the device) of a faulty output against the golden one.

    Masked compares the output's bits in the format the model outputs in (float32, or float16/bfloat16 under
    autocast or a converted model): -0.0 differs from 0.0 and a NaN equals only the same NaN."""
    o = out.reshape(out.shape[0], -1)
    g = golden.reshape(golden.shape[0], -1)
    same = same_bits_per_row(o, g) if o.dtype == g.dtype else (o == g).all(dim=1)
    critical = (o.argmax(dim=1) != g.argmax(dim=1)) | ~torch.isfinite(o).all(dim=1)
    codes = torch.where(critical, SDC1, NON_CRITICAL).to(torch.int8)
    return torch.where(same, torch.zeros_like(codes), codes)


def _element(t: torch.Tensor, fault: Fault, where: str) -> tuple:
    idx = tuple(fault.index)
    if len(idx) != t.dim() or any(not 0 <= i < s for i, s in zip(idx, t.shape)):
        raise ConfigError(
            f"fault {fault.injection}: index {idx} is outside {where} {fault.tensor} of shape {tuple(t.shape)}"
        )
    return idx


@contextmanager
def weight_fault(stored: dict[str, Stored], fault: Fault) -> Iterator[bool]:
    """Write the fault into the stored tensor (in its format); yields whether the value changed; restores on exit."""
    if fault.tensor not in stored:
        raise ConfigError(f"fault {fault.injection}: the model has no parameter {fault.tensor!r}")
    s = stored[fault.tensor]
    idx = _element(s.read(), fault, "parameter")
    with torch.no_grad():
        orig = s.element(idx)
        new = apply_model(orig, fault.model, fault.bit, fault.value)
        changed = not bits_equal(orig, new)
        if changed:
            s.write(idx, new)
        try:
            yield changed
        finally:
            if changed:
                s.write(idx, orig)


def _sliceable(mod: nn.Module) -> bool:
    if isinstance(mod, nn.Linear):
        return True
    return isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and mod.groups == 1


def _slice_forward(mod: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """Output channel (or feature) ``k`` of a conv or linear layer alone: [N, 1, ...], in the layer's arithmetic."""
    w = mod.weight[k : k + 1]
    b = mod.bias[k : k + 1] if mod.bias is not None else None
    return layer_forward(mod, x, w, b)


@dataclass
class Images:
    x: torch.Tensor  # float32 NCHW (normalised as the model expects; cast to the model's input dtype on use)
    y: torch.Tensor  # int64 labels (-1 when unknown)
    ids: list[str]  # dataset index or file name of each image


class Injector:
    """Runs faults on batches of images with one engine; keeps golden caches while they fit in ``cache_bytes``."""

    def __init__(
        self,
        model: nn.Module,
        images: Images,
        batch_size: int = 32,
        engine: str = "cached",
        device: str | torch.device = "cpu",
        cache_bytes: int = 2 << 30,
        numerics: NumericsPolicy | None = None,
        input_dtype: torch.dtype | None = None,
    ):
        if engine not in ENGINES:
            raise ConfigError(f"--engine: unknown engine {engine!r}; choose one of {', '.join(ENGINES)} or ray")
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        # The arithmetic of every conv/linear layer (numerics.py), installed before anything runs, so the
        # golden pass, the traced graph and the one-channel shortcut all compute in it.
        self.numerics: AppliedNumerics | None = (
            apply_numerics(self.model, numerics, self.device) if numerics is not None else None
        )
        self.stored = stored_tensors(self.model)
        self.modules = dict(self.model.named_modules())
        self.engine = engine
        # a model converted to float16/bfloat16 (--dtype) takes its input in that format
        dtype = input_dtype or images.x.dtype
        self.batches = [
            images.x[i : i + batch_size].to(self.device, dtype) for i in range(0, images.x.shape[0], batch_size)
        ]
        self.labels = [images.y[i : i + batch_size].to(self.device) for i in range(0, images.x.shape[0], batch_size)]
        self.cache_bytes = cache_bytes
        self._caches: dict[int, dict] = {}
        self._cached_total = 0
        self._current: tuple[int, dict] | None = None
        # (module name, input shape) -> whether one output channel alone computes bit-identically
        self._slice_ok: dict[tuple[str, tuple[int, ...]], bool] = {}
        self.graph = None
        if engine == "cached":
            from diehardlab.hardening.sfi.graph import CachedGraph

            self.graph = CachedGraph(self.model)
        if self.device.type == "cuda":
            # outcomes compare bits: the golden pass must give the same bits every time
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        with torch.no_grad():
            self.golden = [self.model(x) for x in self.batches]
            again = self.model(self.batches[0]) if self.batches else None
        if again is not None and not bits_equal(again, self.golden[0]):
            raise ConfigError(
                "the model gives different outputs for the same input on this device (non-deterministic kernels); "
                "fault outcomes compare outputs bit for bit, so they would be meaningless here"
            )
        if self.numerics is not None and self.device.type == "cuda" and self.batches:
            from diehardlab.hardening.numerics import cuda_kernels

            self.numerics.kernels = cuda_kernels(self.model, self.batches[0])

    # -- golden caches -------------------------------------------------------------------------------------
    def _cache(self, b: int) -> dict:
        if b in self._caches:
            return self._caches[b]
        if self._current is not None and self._current[0] == b:
            return self._current[1]
        cache = self.graph.golden(self.batches[b])
        if not bits_equal(cache[self.graph.output_node], self.golden[b]):
            raise ConfigError(
                "the traced model does not reproduce the model's own output bit for bit on this device; "
                "use --engine naive"
            )
        self._current = (b, cache)
        size = sum(v.numel() * v.element_size() for v in cache.values() if isinstance(v, torch.Tensor))
        if self._cached_total + size <= self.cache_bytes:
            self._caches[b] = cache
            self._cached_total += size
        return cache

    # -- one fault on one batch ----------------------------------------------------------------------------
    def _activation_override(self, cache: dict, fault: Fault) -> dict:
        nodes = self.graph.readers(fault.tensor)
        override = {}
        for n in nodes:
            if n.op != "call_module":
                continue
            idx = _element(cache[n][0], fault, "output")
            override[n] = fault_activation(cache[n], idx, fault.model, fault.bit, fault.value)
        return override

    def _slice_verified(self, node, cache: dict) -> bool:
        """A weight fault changes one output channel of its layer; computing that channel alone is exact when
        the library computes each channel the same way alone as in the full layer. Checked once per layer and
        input shape against the golden output, channel by channel (about the cost of one layer forward)."""
        mod = self.modules[node.target]
        x = cache[node.args[0]]
        key = (str(node.target), tuple(x.shape))
        if key not in self._slice_ok:
            golden = cache[node]
            self._slice_ok[key] = all(
                bits_equal(_slice_forward(mod, x, k)[:, 0], golden[:, k]) for k in range(golden.shape[1])
            )
        return self._slice_ok[key]

    def _weight_compute(self, cache: dict, fault: Fault, nodes: list) -> dict:
        compute = {}
        for n in nodes:
            if n.op != "call_module" or len(n.args) != 1 or n.kwargs or not isinstance(n.args[0], type(n)):
                continue
            mod = self.modules[n.target]
            if fault.module != n.target or not _sliceable(mod) or not self._slice_verified(n, cache):
                continue
            k = fault.index[0]

            def channel(lookup, n=n, mod=mod, k=k):
                value = cache[n].clone()
                value[:, k : k + 1] = _slice_forward(mod, lookup(n.args[0]), k)
                return value

            compute[n] = channel
        return compute

    def _run_cached(self, fault: Fault, b: int) -> torch.Tensor | None:
        cache = self._cache(b)
        if fault.is_activation:
            override = self._activation_override(cache, fault)
            return self.graph.rerun(cache, list(override), override)
        nodes = self.graph.readers(fault.tensor)
        return self.graph.rerun(cache, nodes, compute=self._weight_compute(cache, fault, nodes))

    def _run_naive(self, fault: Fault, b: int) -> torch.Tensor:
        x = self.batches[b]
        if not fault.is_activation:
            return self.model(x)
        mod = self.modules.get(fault.module)
        if mod is None:
            raise ConfigError(f"fault {fault.injection}: the model has no layer {fault.module!r}")

        def hook(_m, _i, out):
            return fault_activation(out, _element(out[0], fault, "output"), fault.model, fault.bit, fault.value)

        h = mod.register_forward_hook(hook)
        try:
            return self.model(x)
        finally:
            h.remove()

    def _one(self, fault: Fault, b: int) -> torch.Tensor | None:
        """The faulty output of batch ``b``; None when it is bit-identical to the golden (all masked)."""
        if fault.is_activation:
            return self._run_cached(fault, b) if self.graph is not None else self._run_naive(fault, b)
        with weight_fault(self.stored, fault) as changed:
            if not changed:
                return None
            return self._run_cached(fault, b) if self.graph is not None else self._run_naive(fault, b)

    @torch.no_grad()
    def run(self, faults: list[Fault], with_correct: bool = False):
        """Outcome matrix [faults, images] (int8) for ``faults``; with ``with_correct`` also, per fault, the number
        of images whose faulty top-1 is their label (int64; 0 where labels are unknown, -1).

        Batches outside, faults inside: one golden cache alive at a time when they do not all fit.
        """
        n_img = sum(x.shape[0] for x in self.batches)
        out = torch.zeros((len(faults), n_img), dtype=torch.int8, device=self.device)
        right = torch.zeros(len(faults), dtype=torch.int64, device=self.device)
        col = 0
        for b, x in enumerate(self.batches):
            n = x.shape[0]
            if self.graph is not None:
                self._cache(b)  # the golden pass runs before any fault is written
            golden_right = (self.golden[b].argmax(1) == self.labels[b]).sum()
            for fi, fault in enumerate(faults):
                y = self._one(fault, b)
                if y is None:
                    right[fi] += golden_right
                    continue
                out[fi, col : col + n] = classify(y, self.golden[b])
                if with_correct:
                    finite = torch.isfinite(y.reshape(n, -1)).all(dim=1)
                    right[fi] += ((y.argmax(1) == self.labels[b]) & finite).sum()
            col += n
        if with_correct:
            return out.cpu().numpy(), right.cpu().numpy()
        return out.cpu().numpy()
