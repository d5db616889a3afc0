"""Real full and read-only folders for the bad-input battery: small tmpfs mounts (as root), filled or read-only.

``full_folder(path, free=0)`` mounts a 256 KiB tmpfs at ``path`` and fills it with a filler file until exactly
``free`` bytes (rounded down to pages) can still be written; ``readonly_folder(path)`` mounts a read-only tmpfs.
Both are the kernel's real ENOSPC and EROFS. Without root, a read-only folder falls back to mode 0555 (which
root would ignore), and a full one cannot be made: the test is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

PAGE = os.sysconf("SC_PAGE_SIZE")


def _mount(path: Path, options: str) -> bool:
    """Mount a tmpfs at ``path``; False when not root (skip when root cannot: no CAP_SYS_ADMIN here)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "diehard-test", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
    return True


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def full_folder(path: Path, free: int = 0, size_kib: int = 256) -> Iterator[Path]:
    if not _mount(path, f"size={size_kib}k,mode=0755"):
        pytest.skip("a full disk needs a small tmpfs, which needs root (mount -t tmpfs)")
    try:
        filler = path / "filler"
        with open(filler, "wb", buffering=0) as f:
            chunk = b"\0" * PAGE
            with contextlib.suppress(OSError):  # ENOSPC: the file system is full
                while True:
                    f.write(chunk)
        # Give back what the test asks for, in whole pages (tmpfs allocates pages).
        pages = -(-free // PAGE)
        if pages:
            os.truncate(filler, max(0, filler.stat().st_size - pages * PAGE))
        yield path
    finally:
        _umount(path)


@contextlib.contextmanager
def readonly_folder(path: Path) -> Iterator[Path]:
    if _mount(path, "size=64k,ro"):
        try:
            yield path
        finally:
            _umount(path)
        return
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)
