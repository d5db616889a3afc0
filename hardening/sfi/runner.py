"""A fault-injection campaign on disk: fault list, progress checkpoints, resume, result tables.

The output folder holds ``run.json`` (what was run: model hash, image ids, fault-list hash, the numerics of
every layer, seed, versions), ``faults.csv`` (the list, reusable with ``--faults``), ``outcomes.npy`` (int8
[faults, images]), ``correct.npy`` (per fault, images whose faulty top-1 is the label) and ``done.npy`` (bool
per fault), rewritten atomically after every chunk of faults, so an interrupted run loses at most one chunk and
``--resume`` continues it (and rebuilds progress files that were lost or cut). The tables are written at the
end, with ``suite_results.csv`` (the benchmark suite's 8-column form) when every fault is a weight bit flip.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diehardlab.hardening.numerics import NumericsPolicy, parse_numerics
from diehardlab.hardening.sfi.engine import Images, Injector
from diehardlab.hardening.sfi.faultlist import Fault, check_against, write_csv
from diehardlab.hardening.sfi.plan import Layer
from diehardlab.hardening.sfi.results import write_tables

from diehardlab.errors import ConfigError
from diehardlab.outfiles import cannot_write, check_out_dir, write_atomic


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
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to a name
            np.save(fh, arr)

    write_atomic(path, write, "--out")


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text), "--out")


def _load_npy(path: Path, shape: tuple[int, ...], dtype) -> np.ndarray | None:
    """A progress array, or None when it is missing, cut short or not the run's shape."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return arr if arr.shape == shape and arr.dtype == dtype else None


def _load_progress(out: Path, n_faults: int, n_images: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """outcomes, correct, done of an interrupted run; what is damaged is reset (and named), the rest kept.

    The files are written outcomes, correct, done in that order after each chunk, so an intact done.npy never
    claims a fault whose outcomes were not saved; a damaged outcomes or correct file loses every result.
    """
    outcomes = _load_npy(out / "outcomes.npy", (n_faults, n_images), np.int8)
    correct = _load_npy(out / "correct.npy", (n_faults,), np.int64)
    done = _load_npy(out / "done.npy", (n_faults,), np.bool_)
    damaged = [
        name for name, arr in (("outcomes.npy", outcomes), ("correct.npy", correct), ("done.npy", done)) if arr is None
    ]
    if damaged:
        outcomes = np.zeros((n_faults, n_images), dtype=np.int8)
        correct = np.zeros(n_faults, dtype=np.int64)
        done = np.zeros(n_faults, dtype=bool)
    return outcomes, correct, done, damaged


def _read_run_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(
            f"--resume: {path} is not readable as a run description ({exc}); it was not written by this "
            "'diehard sfi run' or is damaged: use another --out"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("fingerprint"), dict):
        raise ConfigError(f"--resume: {path} is not a run description of 'diehard sfi run'; use another --out")
    return data


@torch.no_grad()
def golden_predictions(
    model: torch.nn.Module,
    images: Images,
    policy: NumericsPolicy,
    device: str,
    batch_size: int,
    input_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Fault-free top-1 of every image in the run's arithmetic (for the golden accuracy of the tables)."""
    from diehardlab.hardening.numerics import numerics

    model = model.to(device).eval()
    with numerics(model, policy, device):
        preds = [
            model(images.x[i : i + batch_size].to(device, input_dtype or images.x.dtype)).argmax(1).cpu()
            for i in range(0, len(images.ids), batch_size)
        ]
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


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
    numerics: NumericsPolicy | None = None,
    fault_lines: list[int] | None = None,
    unsampled: dict[str, int] | None = None,
    input_dtype: torch.dtype | None = None,
    number_format: dict[str, Any] | None = None,
) -> dict:
    """Run (or resume) the campaign in ``out``; returns the summary also written to ``summary.json``.

    Nothing is written before the fault list and the numerics map are checked against the model; run.json is
    written last, so a folder that has one has its progress files (and --resume rebuilds damaged ones).
    ``number_format`` (formats.Deployment.record) says which stored format the model is in (``--dtype``,
    ``--quantize``), ``input_dtype`` the dtype its input takes.
    """
    for opt, value in (("--batch-size", batch_size), ("--chunk", chunk), ("--shards", shards)):
        if value is not None and value < 1:
            raise ConfigError(f"{opt} must be >= 1, got {value}")
    policy = numerics or parse_numerics("fp32")
    policy.check(model)
    fmt = (number_format or {}).get("format", "float32")
    if engine == "ray" and fmt != "float32":
        raise ConfigError(f"--engine ray runs float32 models only; this model is in {fmt} (use cached or naive)")
    shapes = None
    if any(f.is_activation for f in faults) and len(images.ids):
        from diehardlab.hardening.sfi.targets import output_shapes

        first = next(iter(model.parameters()), None)
        dev = first.device if first is not None else torch.device(device)
        shapes = output_shapes(model, images.x[:1].to(dev, input_dtype or images.x.dtype))
    check_against(faults, model, shapes, source=str(meta.get("faults_file") or "the fault list"), lines=fault_lines)
    fingerprint = {
        "model_hash": model_hash,
        "faults_sha256": faults_hash(faults),
        "images_sha256": _sha("\n".join(images.ids).encode() + images.x.numpy().tobytes()),
        "faults": len(faults),
        "images": len(images.ids),
        "numerics": policy.spec(),
    }
    if fmt != "float32":  # float32 runs keep the fingerprint they had before formats existed (resume)
        fingerprint["format"] = number_format
    run_json = out / "run.json"
    n_f, n_i = len(faults), len(images.ids)
    damaged: list[str] = []
    if run_json.exists() and not resume:
        raise ConfigError(f"--out: {out} already holds a run; add --resume to continue it or choose another folder")
    if resume and run_json.exists():
        old = _read_run_json(run_json)
        if old["fingerprint"] != fingerprint:
            diff = [k for k in fingerprint if old["fingerprint"].get(k) != fingerprint[k]]
            raise ConfigError(f"--resume: {out} holds a different run ({', '.join(diff)} differ); use another --out")
        outcomes, correct, done, damaged = _load_progress(out, n_f, n_i)
        if damaged:
            print(
                f"sfi run: {', '.join(damaged)} in {out} missing or damaged: the {n_f} faults run again",
                file=sys.stderr,
            )
            _save_npy(out / "outcomes.npy", outcomes)
            _save_npy(out / "correct.npy", correct)
            _save_npy(out / "done.npy", done)
    else:
        # before the folder is made: a read-only or full --out is one line, and leaves no empty folder
        check_out_dir(out, "--out")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise cannot_write("--out", out, exc) from None
        outcomes = np.zeros((n_f, n_i), dtype=np.int8)
        correct = np.zeros(n_f, dtype=np.int64)
        done = np.zeros(n_f, dtype=bool)
        _save_npy(out / "outcomes.npy", outcomes)
        _save_npy(out / "correct.npy", correct)
        _save_npy(out / "done.npy", done)
        write_csv(faults, out / "faults.csv")
        record = {
            "fingerprint": fingerprint,
            "engine": engine,
            "numerics": numerics_record(policy, model, device),
            "format": number_format or {"format": "float32", "dtype": "float32"},
            "versions": versions(),
            **meta,
        }
        _write_text(run_json, json.dumps(record, indent=1))

    def save(idx: np.ndarray, block: np.ndarray, right: np.ndarray) -> None:
        outcomes[idx] = block
        correct[idx] = right
        done[idx] = True
        _save_npy(out / "outcomes.npy", outcomes)
        _save_npy(out / "correct.npy", correct)
        _save_npy(out / "done.npy", done)

    todo = np.flatnonzero(~done)
    started = time.perf_counter()
    bar = Progress(n_f, int(done.sum()), "sfi")
    kernels = None
    try:
        if engine == "ray" and len(todo):
            from diehardlab.hardening.sfi.distributed import run_ray

            for idx, (block, right) in run_ray(
                model, images, [faults[i] for i in todo], todo, batch_size, ray_address, shards, device, policy
            ):
                save(idx, block, right)
                bar.update(len(idx))
        elif len(todo):
            inj = Injector(
                model,
                images,
                batch_size=batch_size,
                engine=engine,
                device=device,
                numerics=policy,
                input_dtype=input_dtype,
            )
            kernels = inj.numerics.kernels if inj.numerics else None
            for k, start in enumerate(range(0, len(todo), chunk)):
                idx = todo[start : start + chunk]
                block, right = inj.run([faults[i] for i in idx], with_correct=True)
                save(idx, block, right)
                bar.update(len(idx))
                if on_chunk is not None:
                    on_chunk(k)
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    labels = images.y
    known = bool(len(labels)) and bool((labels >= 0).all())
    golden_acc = None
    if known:
        pred = golden_predictions(model, images, policy, device, batch_size, input_dtype)
        golden_acc = float((pred == labels).float().mean())
    summary = write_tables(out, faults, outcomes, layers, t, unsampled)
    summary["suite_table"] = suite_table(outcomes, correct if known else None, golden_acc)
    if all(f.model == "bitflip" and f.tensor.endswith(".weight") for f in faults):
        counts = np.stack([np.full(n_f, n_i)] + [(outcomes == k).sum(axis=1) for k in range(3)], axis=1)
        write_csv(faults, out / "suite_results.csv", form="suite-results", counts=counts)
        summary["suite_results"] = str(out / "suite_results.csv")
    summary.update(
        {
            "engine": engine,
            "numerics": policy.spec(),
            "format": fmt,
            "seconds_this_call": round(elapsed, 3),
            "faults_per_s_this_call": round(len(todo) / elapsed, 2) if elapsed > 0 and len(todo) else None,
            "resumed_from": int(n_f - len(todo)),
            "recovered_damaged_files": damaged,
        }
    )
    if kernels is not None:
        summary["cuda_kernels"] = kernels
    _write_text(out / "summary.json", json.dumps(summary, indent=1))
    return summary


def suite_table(outcomes: np.ndarray, correct: np.ndarray | None, golden_accuracy: float | None) -> dict:
    """The suite's result table (its Tables VI-IX) over every (fault, image) inference of the run."""
    n = int(outcomes.size)
    share = {
        name: (int((outcomes == k).sum()) / n if n else math.nan)
        for k, name in enumerate(("masked", "non_critical", "sdc1"))
    }
    return {
        "golden_accuracy": golden_accuracy,
        "inferences": n,
        "masked_pct": 100 * share["masked"],
        "non_critical_pct": 100 * share["non_critical"],
        "sdc1_pct": 100 * share["sdc1"],
        "faulty_accuracy": (float(correct.sum()) / n if n else math.nan) if correct is not None else None,
    }


def numerics_record(policy: NumericsPolicy, model: torch.nn.Module, device: str) -> dict[str, Any]:
    """What run.json records of the arithmetic: the policy, every layer's arithmetic, how, and the flags."""
    from diehardlab.hardening.numerics import AppliedNumerics

    return AppliedNumerics(policy, policy.layer_map(model), str(torch.device(device))).record()
