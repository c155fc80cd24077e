"""Writing files and folders so that a failure, a kill or Ctrl-C never leaves a half-written one.

Everything is written under a hidden temporary name in the destination folder and renamed over
the destination at the end. The result gets the mode a plain ``open(path, "w")`` would give it
(0666 less the umask; 0777 for folders), not the 0600 of a temporary file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it back at once
    os.umask(mask)
    return mask


def refuse_existing(path: Path, overwrite: bool, option: str = "--overwrite") -> None:
    """Raise ``FileExistsError`` when ``path`` exists and ``overwrite`` is off."""
    if not overwrite and (path.exists() or path.is_symlink()):
        raise FileExistsError(f"{path} already exists; choose another name, or pass {option} to replace it")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, directory: bool = False, overwrite: bool = True,
                option: str = "--overwrite") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (a file, or a folder with ``directory``); when the
    block ends without error it replaces ``path``, otherwise it is removed.

    The temporary name keeps ``path``'s extension, so writers that choose the format by extension
    still work. With ``overwrite`` off an existing ``path`` is refused before anything is written
    and, for files, never replaced even if it appears meanwhile.
    """
    path = Path(path)
    refuse_existing(path, overwrite, option)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        umask = current_umask()
        if directory:
            os.chmod(tmp, 0o777 & ~umask)
            if path.exists():
                refuse_existing(path, overwrite, option)
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            os.rename(tmp, path)
        else:
            os.chmod(tmp, 0o666 & ~umask)
            if overwrite:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # fails if path appeared meanwhile: nothing is clobbered
    finally:
        if directory:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object], *, overwrite: bool = True,
                 option: str = "--overwrite") -> Path:
    """Call ``write(temporary_path)`` and move the result to ``path``; returns ``path``."""
    with atomic_path(path, overwrite=overwrite, option=option) as tmp:
        write(tmp)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str, *, overwrite: bool = True,
                      option: str = "--overwrite") -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=overwrite,
                        option=option)
