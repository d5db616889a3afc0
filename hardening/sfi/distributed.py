"""``--engine ray``: shard the fault list over a Ray cluster (a local one by default).

Each shard is a Ray task that runs the cached engine on its faults; the model and the images are put in the
object store once. Shards come back as they finish and the runner checkpoints each, so ``--resume`` works the
same as in-process. Ray is imported only here (``pip install ray``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
from diehardlab.hardening.numerics import NumericsPolicy
from diehardlab.hardening.sfi.engine import Images, Injector
from diehardlab.hardening.sfi.faultlist import Fault

from diehardlab.errors import ConfigError


def _shard(model, images, faults, batch_size, device, numerics):
    if device.startswith("cuda") and not torch.cuda.is_available():
        device = "cpu"
    torch.set_num_threads(1)  # one task per CPU: the tasks are the parallelism
    inj = Injector(model, images, batch_size=batch_size, device=device, numerics=numerics)
    return inj.run(faults, with_correct=True)


def run_ray(
    model: torch.nn.Module,
    images: Images,
    faults: list[Fault],
    index: np.ndarray,
    batch_size: int,
    address: str | None,
    shards: int | None,
    device: str,
    numerics: NumericsPolicy | None = None,
) -> Iterator[tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]]:
    """Yield (fault positions, (outcome block, correct counts)) per finished shard; each shard computes in the
    same numerics policy (applied inside the task, to the task's copy of the model)."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("--engine ray needs Ray: pip install ray (or use the default --engine cached)") from exc
    started_here = not ray.is_initialized()
    if started_here:
        kwargs = {"address": address} if address else {"num_cpus": os.cpu_count() or 1, "include_dashboard": False}
        ray.init(ignore_reinit_error=True, log_to_driver=False, **kwargs)
    try:
        gpus = 1 if device.startswith("cuda") else 0
        task = ray.remote(num_cpus=1, num_gpus=gpus)(_shard)
        n = shards or max(1, 4 * int(ray.cluster_resources().get("CPU", 1)))
        parts = [p for p in np.array_split(np.arange(len(faults)), min(n, len(faults))) if len(p)]
        model_ref = ray.put(model.cpu())
        images_ref = ray.put(images)
        pending = {
            task.remote(model_ref, images_ref, [faults[i] for i in part], batch_size, device, numerics): part
            for part in parts
        }
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                part = pending.pop(ref)
                yield index[part], ray.get(ref)
    finally:
        if started_here:
            ray.shutdown()
