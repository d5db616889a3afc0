"""Writing outputs so that a reader never sees a half-written file or a mix of two runs' files.

Every output is written beside its place under a temporary name, flushed to disk, and renamed into place; a
folder of outputs (``diehard fit``, ``diehard pvf``) is built whole beside the old one and swapped in. A full or
read-only disk is one :class:`~diehardlab.errors.DataError` naming the path, and what was there stays.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from diehardlab.errors import DataError


def _mode(folder: Path) -> None:
    """mkdtemp makes 0700 folders; outputs get the usual permissions."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(folder, 0o777 & ~mask)


def swap_in(new: Path, target: Path) -> None:
    """Put the folder ``new`` in place of ``target`` (which may not exist): the old one is moved away first
    and deleted after, so ``target`` holds the old set or the new one, never a mix."""
    if target.is_dir():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / "x")
        os.rename(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, target)


def _cannot(path: Path, exc: OSError, what: str, option: str = "--out") -> DataError:
    return DataError(
        f"{path}: cannot write {what} ({exc.strerror or exc}); nothing there was replaced. Free space or give a "
        f"writable {option}"
    )


def replace_folder(out: Path, write: Callable[[Path], list[str]], what: str, ours: Callable[[str], bool]) -> list[Path]:
    """Write a command's outputs into a new folder beside ``out`` (``write(folder)`` returns the names it wrote),
    then swap it in for ``out`` as a whole: a stale file of an earlier run cannot survive beside new ones.
    ``out`` may hold only files of ``what`` (``ours(name)``); anything else is refused, untouched."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; give a folder with --out")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if not ours(p.name))
        if foreign:
            raise DataError(
                f"{out}: holds files that are not outputs of {what} ({', '.join(foreign[:5])}"
                f"{' ...' if len(foreign) > 5 else ''}); choose another --out folder or move them away"
            )
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
        names = write(tmp)
        for name in names:
            with open(tmp / name, "rb+") as f:
                os.fsync(f.fileno())
        _mode(tmp)
        swap_in(tmp, out)
        tmp = None
    except OSError as exc:
        raise _cannot(out, exc, f"the outputs of {what}") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return [out / n for n in names]


def write_file(
    path: Path, write: Callable[[IO[str]], None], what: str, newline: str | None = None, option: str = "--out"
) -> Path:
    """Write a text file through ``write(f)`` under a temporary name beside it, fsync, rename into place."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; give a file name with {option}")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8", newline=newline) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise _cannot(path, exc, what, option) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def new_folder_beside(target: Path) -> Path:
    """An empty folder beside ``target`` to build its replacement in (see :func:`swap_in`)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    _mode(tmp)
    return tmp
