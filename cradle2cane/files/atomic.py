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
from typing import Callable, Iterable, Iterator


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


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one existing file, however spelled (relative, ``..``, symlinks, hard
    links, case on case-insensitive systems)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path: str | os.PathLike[str], *, overwrite: bool = False, inputs: Iterable[str | os.PathLike[str]] = (),
                 option: str = "--out") -> Path:
    """Refuse, before any work is done, an output that is one of ``inputs``, that exists (unless
    ``overwrite``), that is a folder, or whose folder cannot be created or written. ``option`` is
    the flag that named the output, for the messages."""
    path = Path(path)
    for source in inputs:
        if same_file(path, source):
            raise FileExistsError(f"{option} {path} is the input file {source}: write the result to another name "
                                  f"(the input is never replaced, even with --overwrite)")
    if path.is_dir():
        raise IsADirectoryError(f"{option} {path} is a folder; give a file name")
    refuse_existing(path, overwrite)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"{option} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {path}: no permission to write in {folder}")
    return path


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
    tmp: Path | None = None
    try:  # the temporary is made inside the try, so an interrupt right after creating it removes it
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
            tmp = Path(name)
            os.close(fd)
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
                _link_new(tmp, path, option)
    finally:
        if tmp is None:
            pass
        elif directory:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _link_new(tmp: Path, path: Path, option: str) -> None:
    """Give ``tmp`` the name ``path`` only if that name is still free."""
    try:
        os.link(tmp, path)  # fails if path appeared meanwhile: nothing is clobbered
    except FileExistsError:
        refuse_existing(path, False, option)
        raise
    except OSError:  # no hard links on this file system (some network and FAT volumes)
        refuse_existing(path, False, option)
        os.replace(tmp, path)


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
