"""Files written so that an interrupted write leaves nothing half-done: a run folder or a table
appears whole or not at all (a hidden sibling, then a rename), with the modes the user's umask
gives any other file (so a cluster group can read them). The grid, the toy and LLM tracks and the
lab write through these; :mod:`treemdp.runs` re-exports them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import UserError


def check_writable(out_dir: str | Path) -> Path:
    """Fail early (UserError) if ``out_dir`` cannot be created or written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {str(out)!r} exists and is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=out.parent)
        os.rmdir(probe)
    except OSError as e:
        raise UserError(f"cannot write to output directory {str(out)!r}: {e.strerror or e}") from None
    return out


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_modes(folder: str | Path) -> None:
    """Give every file under ``folder`` the mode a plain ``open()`` would (0666 less the umask):
    libraries that write through ``mkstemp`` (safetensors, some tokenizers) leave 0600 files."""
    mode = 0o666 & ~current_umask()
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink() and (path.stat().st_mode & 0o777) != mode:
            os.chmod(path, mode)


def remove_partial_writes(folder: str | Path) -> list[Path]:
    """Remove the hidden ``.NAME.tmp-*`` files and folders that an interrupted
    :func:`atomic_directory` or :func:`atomic_file` left in ``folder``; returns them."""
    removed = []
    for path in sorted(Path(folder).glob(".*.tmp-*")):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_directory(out_dir: str | Path) -> Iterator[Path]:
    """Write a folder all at once: yields a hidden sibling folder; on success it replaces ``out_dir``.

    An interrupted write leaves at most a hidden ``.NAME.tmp-*`` folder (removed here on errors,
    and on resume by sweeps and :func:`remove_partial_writes`), never a half-written ``out_dir``.
    The folder and its files get the modes of ordinary ones (the umask's), not mkdtemp's 0700. Both tracks' run folders and
    checkpoints are written through this.
    """
    out = check_writable(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; a run is shared like any folder
        yield tmp
        share_modes(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Write a file all at once: yields a hidden sibling path to write; on success it replaces ``path``.

    A kill leaves at most a hidden ``.NAME.tmp-*`` file (removed here on errors, and by sweeps on
    resume), never a truncated ``path``. Results tables, the LLM track's reference cache and its
    ``config.json`` are written through this.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
