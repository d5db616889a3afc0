"""The device under test as the runner sees it: which torch device, its name, its ECC state.

Kept free of anything model-specific so ``diehard golden``, ``diehard run`` and the NVBitFI setup agree on
the device they describe. ``nvidia-smi`` is asked with a timeout: a wedged driver (common after a beam
upset) must not hang the benchmark before it has opened its log.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from dataclasses import dataclass

import torch

from diehardlab.errors import ConfigError

NVIDIA_SMI_TIMEOUT_S = 10.0


def pick_device(requested: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU. An explicit device that is not available is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(requested)
    except RuntimeError as exc:
        raise ConfigError(f"--device: {requested!r} is not a torch device (use auto, cpu, cuda or cuda:N)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {requested}: CUDA is not available on this machine; use --device cpu or auto")
    return dev


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu {platform.machine()} {platform.processor() or ''}".strip()


def synchronize(dev: torch.device) -> None:
    """Wait for the device: kernel time must include the work, not just its launch."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@dataclass(frozen=True)
class EccState:
    enabled: bool
    source: str  # "nvidia-smi", "flag" or "default"
    detail: str = ""


def query_nvidia_smi_ecc(index: int = 0, exe: str | None = None) -> bool | None:
    """ECC mode of GPU ``index`` from ``nvidia-smi``; None when it cannot say (no tool, no GPU, N/A)."""
    exe = exe or shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, f"--id={index}", "--query-gpu=ecc.mode.current", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    value = out.stdout.strip().splitlines()[0].strip().lower() if out.stdout.strip() else ""
    if value == "enabled":
        return True
    if value == "disabled":
        return False
    return None  # "[N/A]": boards without ECC (Jetson, consumer GPUs) say so


def parse_ecc_flag(value: str) -> str:
    v = value.strip().lower()
    if v not in ("auto", "on", "off"):
        raise ConfigError(f"--ecc: {value!r} is not one of auto, on, off")
    return v


def detect_ecc(flag: str, dev: torch.device, exe: str | None = None) -> EccState:
    """The ECC state for the log file name: ``nvidia-smi`` when it answers, else the flag.

    An explicit ``on``/``off`` that contradicts ``nvidia-smi`` keeps the measured value (the file name
    must say what the hardware did) and the detail says so, for the log's ``#INF`` line.
    """
    flag = parse_ecc_flag(flag)
    measured = query_nvidia_smi_ecc(dev.index or 0, exe) if dev.type == "cuda" else None
    if measured is not None:
        detail = ""
        if flag != "auto" and (flag == "on") != measured:
            detail = f"--ecc {flag} ignored: nvidia-smi reports ECC {'ON' if measured else 'OFF'}"
        return EccState(measured, "nvidia-smi", detail)
    if flag == "auto":
        return EccState(False, "default", "no ECC state from nvidia-smi; ECC_OFF in the file name")
    return EccState(flag == "on", "flag")
