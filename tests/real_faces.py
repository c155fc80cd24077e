"""A real face detector and real photos for the tests, fetched from PyPI at test time.

The source archive of the ``scrfd`` package (``scrfd==0.3.0``, 8.7 MB) holds ``models/scrfd.onnx``,
insightface's SCRFD-2.5G with five key points (exported with a fixed 640x640 input, 9 outputs),
and public-domain photos: the 1927 Solvay conference (29 people, a greyscale scan, 3000x2171),
and portraits of Newton and Gauss. The detector's weights carry insightface's non-commercial terms,
so they are never committed: the archive is downloaded once with pip (as a user downloads
``buffalo_l``), kept in ``$XDG_CACHE_HOME/cradle2cane-tests`` (default ``~/.cache/...``) and
checked against its published hash; each test session unpacks what it needs into a temporary folder.

The pack built from it has the real detector beside the *planted* genderage and recognition models
of ``cradle2cane.testing.planted_faces``: no package on any registry ships a real genderage model,
so age and gender estimates in these tests are the planted model's (brightness and colour), while
every box, landmark and score is the real detector's.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REQUIREMENT = "scrfd==0.3.0"
ARCHIVE = "scrfd-0.3.0.tar.gz"
SHA256 = "35855c664d565492aab0068f1c64b4957a15ca6cd106b9c8b1642d67cfeeb5fc"  # as published on PyPI
PROBE_URL = "https://pypi.org/simple/scrfd/"
DETECTOR = "models/scrfd.onnx"
PHOTOS = {
    "group": "images/solvay_conference_1927.jpg",
    "newton": "images/newton.png",
    "gauss": "images/gauss.png",
}
PACK_NAME = "buffalo_l"  # the name the CLI and the nodes look for first


@dataclass(frozen=True)
class RealFaces:
    pack: Path  # <root>/insightface/models/buffalo_l: scrfd.onnx + planted genderage.onnx and w600k_r50.onnx
    photos: dict[str, Path]  # "group", "newton", "gauss"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cradle2cane-tests"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _registry_reachable() -> str | None:
    """``None`` when PyPI answers, else why not."""
    try:
        with urllib.request.urlopen(PROBE_URL, timeout=20):
            return None
    except (urllib.error.URLError, OSError) as error:
        return str(getattr(error, "reason", error))


def fetch_archive() -> Path:
    """The cached source archive, downloaded with pip on first use. Skips the calling test only
    when the registry cannot be reached; any other failure is an error."""
    cache = cache_dir()
    archive = cache / ARCHIVE
    if archive.is_file() and _sha256(archive) == SHA256:
        return archive
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", REQUIREMENT,
                   "-d", tmp]
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        fetched = Path(tmp) / ARCHIVE
        if done.returncode != 0 or not fetched.is_file():
            unreachable = _registry_reachable()
            if unreachable is not None:
                pytest.skip(f"the package registry cannot be reached ({unreachable}), so the real face detector "
                            f"({REQUIREMENT}'s source archive) cannot be fetched")
            pytest.fail(f"`{' '.join(command)}` failed although PyPI answers:\n{done.stdout}\n{done.stderr}")
        digest = _sha256(fetched)
        if digest != SHA256:
            pytest.fail(f"{ARCHIVE} from the registry has sha256 {digest}, expected {SHA256}")
        os.replace(fetched, archive)  # atomic: a parallel session sees the whole file or none
    return archive


def unpack(archive: Path, root: Path) -> RealFaces:
    """The detector and the photos from ``archive`` under ``root``, and the pack built from them."""
    from cradle2cane.testing.planted_faces import write_insightface_pack

    pack = root / "insightface" / "models" / PACK_NAME
    write_insightface_pack(pack, detector=False)
    wanted = {DETECTOR: pack / "scrfd.onnx"}
    wanted.update({member: root / "photos" / Path(member).name for member in PHOTOS.values()})
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            inner = member.name.partition("/")[2]  # below the scrfd-0.3.0/ folder
            if inner in wanted and member.isfile():
                target = wanted.pop(inner)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    assert not wanted, f"{ARCHIVE} lacks {sorted(wanted)}"
    photos = {name: root / "photos" / Path(member).name for name, member in PHOTOS.items()}
    return RealFaces(pack=pack, photos=photos)
