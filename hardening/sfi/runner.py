"""A fault-injection campaign on disk: fault list, progress checkpoints, resume, result tables.

The output folder holds ``run.json`` (what was run: model hash, image ids, fault-list hash, seed, versions),
``faults.csv`` (the list, reusable with ``--faults``), ``outcomes.npy`` (int8 [faults, images]) and ``done.npy``
(bool per fault), rewritten atomically after every chunk of faults, so an interrupted run loses at most one
chunk and ``--resume`` continues it. The tables are written at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diehardlab.hardening.sfi.engine import Images, Injector
from diehardlab.hardening.sfi.faultlist import Fault, write_csv
from diehardlab.hardening.sfi.plan import Layer
from diehardlab.hardening.sfi.results import write_tables

from diehardlab.errors import ConfigError


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def faults_hash(faults: list[Fault]) -> str:
    return _sha("\n".join(f"{f.tensor}|{f.index}|{f.bit}|{f.model}|{f.value}" for f in faults).encode())


def versions() -> dict[str, str]:
    from diehardlab import __version__

    return {
        "diehardlab": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


class Progress:
    """tqdm bar with ETA when tqdm is installed and stderr is a terminal; otherwise silent."""

    def __init__(self, total: int, done: int, desc: str):
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="fault", desc=desc, disable=None, smoothing=0.1)
        except ImportError:
            self.bar = None

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_campaign(
    model: torch.nn.Module,
    images: Images,
    faults: list[Fault],
    out: Path,
    layers: list[Layer],
    t: float,
    meta: dict[str, Any],
    model_hash: str,
    engine: str = "cached",
    batch_size: int = 32,
    device: str = "cpu",
    resume: bool = False,
    chunk: int = 64,
    on_chunk: Callable[[int], None] | None = None,
    ray_address: str | None = None,
    shards: int | None = None,
) -> dict:
    """Run (or resume) the campaign in ``out``; returns the summary also written to ``summary.json``."""
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = {
        "model_hash": model_hash,
        "faults_sha256": faults_hash(faults),
        "images_sha256": _sha("\n".join(images.ids).encode() + images.x.numpy().tobytes()),
        "faults": len(faults),
        "images": len(images.ids),
    }
    run_json = out / "run.json"
    outcomes_path, done_path = out / "outcomes.npy", out / "done.npy"
    if run_json.exists() and not resume:
        raise ConfigError(f"--out: {out} already holds a run; add --resume to continue it or choose another folder")
    if resume and run_json.exists():
        old = json.loads(run_json.read_text())
        if old.get("fingerprint") != fingerprint:
            diff = [k for k in fingerprint if old.get("fingerprint", {}).get(k) != fingerprint[k]]
            raise ConfigError(f"--resume: {out} holds a different run ({', '.join(diff)} differ); use another --out")
        outcomes = np.load(outcomes_path)
        done = np.load(done_path)
    else:
        write_csv(faults, out / "faults.csv")
        run_json.write_text(
            json.dumps({"fingerprint": fingerprint, "engine": engine, "versions": versions(), **meta}, indent=1)
        )
        outcomes = np.zeros((len(faults), len(images.ids)), dtype=np.int8)
        done = np.zeros(len(faults), dtype=bool)
        _save_npy(outcomes_path, outcomes)
        _save_npy(done_path, done)
    todo = np.flatnonzero(~done)
    started = time.perf_counter()
    bar = Progress(len(faults), int(done.sum()), "sfi")
    try:
        if engine == "ray" and len(todo):
            from diehardlab.hardening.sfi.distributed import run_ray

            for idx, block in run_ray(
                model, images, [faults[i] for i in todo], todo, batch_size, ray_address, shards, device
            ):
                outcomes[idx] = block
                done[idx] = True
                _save_npy(outcomes_path, outcomes)
                _save_npy(done_path, done)
                bar.update(len(idx))
        elif len(todo):
            inj = Injector(model, images, batch_size=batch_size, engine=engine, device=device)
            for k, start in enumerate(range(0, len(todo), chunk)):
                idx = todo[start : start + chunk]
                outcomes[idx] = inj.run([faults[i] for i in idx])
                done[idx] = True
                _save_npy(outcomes_path, outcomes)
                _save_npy(done_path, done)
                bar.update(len(idx))
                if on_chunk is not None:
                    on_chunk(k)
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    summary = write_tables(out, faults, outcomes, layers, t)
    summary.update(
        {
            "engine": engine,
            "seconds_this_call": round(elapsed, 3),
            "faults_per_s_this_call": round(len(todo) / elapsed, 2) if elapsed > 0 and len(todo) else None,
            "resumed_from": int(len(faults) - len(todo)),
        }
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
