"""Output files of the commands: checked before the work, written to a temporary name and renamed after it.

A full disk, a read-only folder or a crash must never leave a file that looks complete but is not, and must
not cost a traceback: :func:`check_out_dir` refuses an unwritable folder before hours of work,
:func:`write_atomic` writes beside the target under a hidden temporary name, fsyncs it and renames it (the
rename is atomic within a file system), and removes the temporary file on any failure. A folder of outputs
(``diehard fit``, ``diehard pvf``) is built whole beside the old one and swapped in (:func:`replace_folder`), so
a reader never sees a mix of two runs' files. ``OSError`` becomes one :class:`~diehardlab.errors.ConfigError`
line naming the option, the path, the reason and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from diehardlab.errors import ConfigError

_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or choose another folder",
    errno.EDQUOT: "the disk quota is exhausted: free some space or choose another folder",
    errno.EFBIG: "the file is larger than this system allows (ulimit -f?)",
    errno.EROFS: "the file system is read-only: choose another folder",
    errno.EACCES: "no permission to write there: choose another folder",
    errno.EPERM: "no permission to write there: choose another folder",
    errno.ENOTDIR: "a path component is a file, not a folder",
    errno.EISDIR: "a folder has that name",
}


def cannot_write(option: str, path: str | Path, exc: OSError) -> ConfigError:
    """The one line for a failed write: ``--out results/x.csv: cannot write (No space left on device); ...``."""
    reason = exc.strerror or type(exc).__name__
    hint = _HINTS.get(exc.errno or 0, "choose another folder")
    where = f"{option} {path}" if option else str(path)
    return ConfigError(f"{where}: cannot write ({reason}); {hint}")


def check_out_file(path: str | Path, option: str) -> Path:
    """:func:`check_out_dir` on the folder of the output file ``path``; the error names the file."""
    path = Path(path)
    check_out_dir(path.parent, option, shown=path)
    return path


def check_out_dir(folder: str | Path, option: str, shown: str | Path | None = None) -> Path:
    """Prove a file can be written in ``folder`` (a byte, synced, then removed), creating nothing.

    A folder that does not exist yet is tested where it would be created: in its nearest existing ancestor
    (the same file system), so a refused command leaves no empty folder behind.
    """
    folder = Path(folder)
    where = folder
    while not where.exists() and where != where.parent:
        where = where.parent
    probe = where / f".diehard-write-test-{os.getpid()}"
    try:
        if not where.is_dir():
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        raise cannot_write(option, shown or folder, exc) from None
    return folder


def write_atomic(path: str | Path, write: Callable[[Path], object], option: str = "") -> Path:
    """``write(tmp)`` writes the whole file at ``tmp``; it is then fsynced and renamed onto ``path``.

    On any failure the temporary file is removed and ``path`` is left as it was (absent, or the previous
    complete version); an ``OSError`` becomes a :class:`ConfigError` naming ``option`` and ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the bytes are on disk before the name says the file is complete
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise cannot_write(option, path, exc) from None
    except BaseException:
        _remove(tmp)
        raise
    return path


def write_figure(path: str | Path, fig: Any, option: str = "", dpi: int = 120) -> Path:
    """A matplotlib figure saved as PNG with :func:`write_atomic`, then closed (its memory freed) either way."""
    import matplotlib.pyplot as plt

    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"), option)
    finally:
        plt.close(fig)


def write_text_atomic(path: str | Path, text: str, option: str = "", encoding: str = "utf-8") -> Path:
    return write_atomic(path, lambda p: p.write_text(text, encoding=encoding), option)


def write_bytes_atomic(path: str | Path, data: bytes, option: str = "") -> Path:
    return write_atomic(path, lambda p: p.write_bytes(data), option)


def _remove(tmp: Path) -> None:
    with contextlib.suppress(OSError):  # a read-only folder: nothing was created there anyway
        tmp.unlink(missing_ok=True)


def write_text_stream(
    path: str | Path, write: Callable[[IO[str]], None], option: str = "", newline: str | None = None
) -> Path:
    """:func:`write_atomic` for a text file produced by ``write(f)`` on an open UTF-8 file (a CSV writer, say)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option + ' ' if option else ''}{path}: is a folder; give a file name")

    def body(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline=newline) as f:
            write(f)

    return write_atomic(path, body, option)


def _usual_mode(folder: Path) -> None:
    """mkdtemp makes 0700 folders; outputs get the usual permissions."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(folder, 0o777 & ~mask)


def new_folder_beside(target: Path) -> Path:
    """An empty folder beside ``target`` to build its replacement in (see :func:`swap_in`)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    _usual_mode(tmp)
    return tmp


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


def replace_folder(
    out: str | Path, write: Callable[[Path], list[str]], what: str, ours: Callable[[str], bool], option: str = "--out"
) -> list[Path]:
    """Write a command's outputs into a new folder beside ``out`` (``write(folder)`` returns the names it wrote),
    then swap it in for ``out`` as a whole: a stale file of an earlier run cannot survive beside new ones.
    ``out`` may hold only files of ``what`` (``ours(name)``); anything else is refused, untouched."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{option} {out}: exists and is not a folder; give a folder")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if not ours(p.name))
        if foreign:
            raise ConfigError(
                f"{option} {out}: holds files that are not outputs of {what} ({', '.join(foreign[:5])}"
                f"{' ...' if len(foreign) > 5 else ''}); choose another folder or move them away"
            )
    tmp = None
    try:
        tmp = new_folder_beside(out)
        names = write(tmp)
        for name in names:
            with open(tmp / name, "rb+") as f:
                os.fsync(f.fileno())
        swap_in(tmp, out)
        tmp = None
    except OSError as exc:
        raise cannot_write(option, out, exc) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return [out / n for n in names]
