"""Labelled face datasets: preparing a manifest, and reading it for training.

A manifest is a JSON-lines file, one face per line::

    {"image": "00000.png", "age": 23, "gender": "male"}

``image`` is relative to the manifest's folder (or absolute). A CSV with the columns
``image,age,gender`` is read the same way. ``prepare_ffhq`` builds one from FFHQ and the
ffhq-features labels, ``prepare_folder`` from any folder of images plus a CSV/JSON of labels; both
skip what cannot be used and say why (also in ``<manifest>.skipped.csv``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from cradle2cane.files.atomic import check_output, write_text_atomic
from cradle2cane.files.images import IMAGE_EXTENSIONS
from cradle2cane.files.labels import check_label, read_label_file

logger = logging.getLogger(__name__)



class DatasetError(ValueError):
    """A dataset, manifest or label file cannot be used."""


@dataclass(frozen=True)
class Sample:
    image: Path
    age: int
    gender: str


@dataclass
class PrepareReport:
    """What a ``prepare_*`` call kept and what it skipped, with the reason for each skip."""

    manifest: Path
    kept: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image or label, reason)

    def reasons(self) -> Counter:
        return Counter(reason.split(":")[0] for _, reason in self.skipped)

    def summary(self) -> str:
        lines = [f"{self.kept} labelled images written to {self.manifest}"]
        if self.skipped:
            lines.append(f"{len(self.skipped)} skipped (details in {skipped_path(self.manifest)}):")
            lines += [f"  {count:6d}  {reason}" for reason, count in self.reasons().most_common()]
        return "\n".join(lines)


def skipped_path(manifest: Path) -> Path:
    return manifest.with_name(manifest.stem + ".skipped.csv")


# ----------------------------------------------------------------------------- samples


def _sample(image: Path, age: Any, gender: Any, check_images: bool, where: str) -> tuple[Sample | None, str | None]:
    """A labelled sample, or why the image is skipped (bad label, unreadable image)."""
    try:
        age_value, gender_value = check_label(age, gender)
    except ValueError as exc:
        reason = str(exc)
        kind = "no age/gender" if reason.startswith("no ") else "bad label"
        return None, f"{kind}: {reason} {where}"
    if check_images and (problem := image_problem(image)):
        return None, problem
    return Sample(image, age_value, gender_value), None


def image_problem(path: Path) -> str | None:
    """None when the image is a file in one of the formats we read and decodes fully, else why
    it cannot be used."""
    from PIL import Image

    from cradle2cane.files.images import READ_FORMATS, load_image

    try:
        rgb, _ = load_image(path)  # formats, pixel budget, folders and pipes: the one image reader
        with Image.open(path, formats=READ_FORMATS) as image:
            image.verify()  # chunk checksums, which decoding alone does not read
    except FileNotFoundError:
        return f"image missing: {path} does not exist"
    except Exception as exc:  # PIL raises many types for broken files
        return f"unreadable image: {exc}"
    height, width = rgb.shape[:2]
    if width < 8 or height < 8:
        return f"unreadable image: {width}x{height} is too small"
    return None


def check_manifest_images(samples: Sequence[Sample], manifest: Path, share: tuple[int, int] = (0, 1),
                          workers: int | None = None) -> None:
    """Every image of ``samples`` (this process's ``share`` = (index, count) of them) exists and
    decodes, with a progress bar; one error listing the first few bad ones otherwise. Run before
    training, so a broken file is found in minutes rather than when a batch first draws it."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    index, count = share
    mine = list(samples)[index::count]
    workers = workers or min(8, os.cpu_count() or 1)  # Pillow releases the GIL while decoding
    bad: list[str] = []
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(mine), desc="checking training images", unit="image",
                                                   disable=index != 0 or len(mine) < 2) as bar:
        for sample, problem in zip(mine, pool.map(lambda s: image_problem(s.image), mine)):
            bar.update(1)
            if problem:
                bad.append(problem if str(sample.image) in problem else f"{sample.image}: {problem}")
    if bad:
        raise DatasetError(f"{manifest}: {len(bad)} of {len(mine)} images cannot be used ({'; '.join(bad[:3])}"
                           f"{' ...' if len(bad) > 3 else ''}); fix or remove them (`cradle2cane train prepare` "
                           f"skips such images), or skip this check with --set check_images=false")


def _images_under(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist")
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                   and not p.name.startswith("."))
    if not found:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}")
    return found


# ----------------------------------------------------------------------------- writing


def _relative(path: Path, base: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), base.resolve()).replace(os.sep, "/")
    except ValueError:  # another drive on Windows
        return str(path.resolve())


def check_manifest_path(manifest: Path, inputs: Sequence[Path], overwrite: bool) -> None:
    """Before any work: the manifest is ``.jsonl``, neither it nor its skip list is one of the
    ``inputs`` (however the path is spelled), a folder or unwritable, and neither exists unless
    ``overwrite``."""
    if manifest.suffix.lower() != ".jsonl":
        raise DatasetError(f"--out {manifest}: a manifest is JSON lines; give it the extension .jsonl")
    check_output(manifest, overwrite=overwrite, inputs=inputs)
    check_output(skipped_path(manifest), overwrite=overwrite, inputs=inputs, option=f"--out {manifest.name}'s skip list")


def write_manifest(samples: Sequence[Sample], manifest: Path, skipped: Sequence[tuple[str, str]] = (),
                   overwrite: bool = True) -> None:
    """Write the manifest (and the skip list) through the atomic writer: no half-written file, the
    usual file mode, and with ``overwrite`` off an existing file is never replaced."""
    manifest = Path(manifest)
    lines = [json.dumps({"image": _relative(s.image, manifest.parent), "age": s.age, "gender": s.gender})
             for s in samples]
    write_text_atomic(manifest, "".join(line + "\n" for line in lines), overwrite=overwrite)
    skip = skipped_path(manifest)
    if skipped:
        rows = io.StringIO(newline="")
        writer = csv.writer(rows)
        writer.writerow(["item", "reason"])
        writer.writerows(skipped)
        write_text_atomic(skip, rows.getvalue(), overwrite=overwrite)
    elif skip.exists() and overwrite:
        skip.unlink()  # from an earlier run of the same manifest


def _finish(samples: list[Sample], skipped: list[tuple[str, str]], manifest: Path, what: str,
            overwrite: bool) -> PrepareReport:
    report = PrepareReport(Path(manifest), len(samples), skipped)
    if not samples:
        reasons = ", ".join(f"{n} {r}" for r, n in report.reasons().most_common()) or "nothing found"
        raise DatasetError(f"{what}: no usable labelled image ({reasons}); no manifest written")
    write_manifest(samples, Path(manifest), skipped, overwrite=overwrite)
    return report


def prepare_ffhq(images_dir: str | Path, features_dir: str | Path, manifest: str | Path,
                 check_images: bool = True, overwrite: bool = False) -> PrepareReport:
    """FFHQ images + ffhq-features json labels (``<features>/<stem>.json``: a list of faces).

    Only images whose json lists exactly one face are used (its ``faceAttributes.age`` and
    ``.gender``), as in the reference preparation. Background removal is not done here.
    """
    images_dir, features_dir = Path(images_dir).expanduser(), Path(features_dir).expanduser()
    manifest = Path(manifest).expanduser()
    check_manifest_path(manifest, [], overwrite)  # the label files are .json: never a .jsonl or .csv output
    if not features_dir.is_dir():
        raise DatasetError(f"ffhq-features folder {features_dir} does not exist")
    labels = {p.stem: p for p in sorted(features_dir.rglob("*.json"))}
    if not labels:
        raise DatasetError(f"no .json label files under {features_dir} (expected ffhq-features json/00000.json ...)")
    samples, skipped = [], []
    for image in _images_under(images_dir):
        name = str(image.relative_to(images_dir))
        label = labels.get(image.stem)
        if label is None:
            skipped.append((name, f"no features json: {image.stem}.json not in {features_dir}"))
            continue
        try:
            faces = json.loads(label.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            skipped.append((name, f"unreadable features json: {label}: {exc}"))
            continue
        if not isinstance(faces, list):
            skipped.append((name, f"unreadable features json: {label} is not a list of faces"))
            continue
        if len(faces) != 1:
            skipped.append((name, f"not exactly one face: {len(faces)} faces in {label.name}"))
            continue
        attributes = faces[0].get("faceAttributes") if isinstance(faces[0], Mapping) else None
        if not isinstance(attributes, Mapping):
            skipped.append((name, f"no age/gender: {label.name} has no faceAttributes"))
            continue
        sample, problem = _sample(image, attributes.get("age"), attributes.get("gender"), check_images,
                                  f"in {label.name}")
        if problem:
            skipped.append((name, problem))
            continue
        samples.append(sample)
    return _finish(samples, skipped, manifest, f"FFHQ in {images_dir}", overwrite)


def prepare_folder(images_dir: str | Path, labels: str | Path, manifest: str | Path,
                   check_images: bool = True, overwrite: bool = False) -> PrepareReport:
    """Any folder of aligned faces plus a CSV/JSON with the age and gender of each image.

    Label files name images relative to ``images_dir`` (or by file name alone when that is unique).
    """
    images_dir, labels, manifest = Path(images_dir).expanduser(), Path(labels).expanduser(), Path(manifest).expanduser()
    check_manifest_path(manifest, [labels], overwrite)
    images = _images_under(images_dir)
    by_relative = {str(p.relative_to(images_dir)).replace(os.sep, "/"): p for p in images}
    by_name: dict[str, list[Path]] = {}
    for p in images:
        by_name.setdefault(p.name, []).append(p)
    samples, skipped, matched = [], [], set()
    for row, name, age, gender in read_label_file(labels, DatasetError):
        where = f"{Path(labels).name} row {row}"
        if not name:
            skipped.append((where, "no image name"))
            continue
        key = name.replace("\\", "/")
        image = by_relative.get(key)
        if image is None:
            matches = by_name.get(Path(key).name, [])
            if len(matches) > 1:
                skipped.append((name, f"ambiguous image name: {where} matches several files; give the relative path"))
                continue
            image = matches[0] if matches else None
        if image is None:
            skipped.append((name, f"image missing: {where} names a file not under {images_dir}"))
            continue
        if image in matched:
            skipped.append((name, f"duplicate label: {where} labels an image already labelled"))
            continue
        matched.add(image)
        sample, problem = _sample(image, age, gender, check_images, f"({where})")
        if problem:
            skipped.append((name, problem))
            continue
        samples.append(sample)
    for p in images:
        if p not in matched:
            skipped.append((str(p.relative_to(images_dir)), f"no label: not in {Path(labels).name}"))
    return _finish(samples, skipped, manifest, f"{images_dir} with {labels}", overwrite)


# ----------------------------------------------------------------------------- reading


def read_manifest(path: str | Path, limit: int | None = None) -> list[Sample]:
    """Every sample of a manifest (JSONL or CSV), checked strictly: any bad line is an error."""
    path = Path(path).expanduser()
    if path.is_dir():
        candidate = path / "manifest.jsonl"
        if not candidate.is_file():
            raise DatasetError(f"{path} is a folder without manifest.jsonl; run `cradle2cane train prepare` first")
        path = candidate
    if not path.is_file():
        raise DatasetError(f"training manifest {path} does not exist; write it with `cradle2cane train prepare`")
    base = path.parent
    samples: list[Sample] = []
    if path.suffix.lower() == ".csv":
        entries = [(row, name, age, gender) for row, name, age, gender in read_label_file(path, DatasetError)]
    else:
        entries = []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path}: cannot read the manifest ({exc})") from exc
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path} line {number}: not JSON ({exc})") from exc
            if not isinstance(record, Mapping) or "image" not in record:
                raise DatasetError(f"{path} line {number}: expected {{\"image\", \"age\", \"gender\"}}")
            entries.append((number, str(record["image"]), record.get("age"), record.get("gender")))
    for number, name, age, gender in entries:
        try:
            age_value, gender_value = check_label(age, gender)
        except ValueError as exc:
            raise DatasetError(f"{path} line {number} ({name}): {exc}") from None
        image = Path(name).expanduser()
        image = image if image.is_absolute() else base / image
        samples.append(Sample(image, age_value, gender_value))
        if limit is not None and len(samples) >= limit:
            break
    if not samples:
        raise DatasetError(f"{path}: the dataset is empty (no labelled images)")
    return samples


def load_face(path: Path, resolution: int) -> torch.Tensor:
    """[3, R, R] float 0..1: RGB, centre-cropped to a square, resized with antialiasing."""
    import numpy as np
    from PIL import Image

    from cradle2cane.files.images import load_image

    image = Image.fromarray(load_image(path)[0])  # the one image reader: listed formats, EXIF orientation
    width, height = image.size
    if width != height:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


class FaceDataset(torch.utils.data.Dataset):
    """Manifest samples as {"image": [3,R,R] 0..1, "age": int, "gender": str, "index": int}."""

    def __init__(self, samples: Sequence[Sample], resolution: int, random_flip: bool = True) -> None:
        if not samples:
            raise DatasetError("the dataset is empty (no labelled images)")
        self.samples = list(samples)
        self.resolution = resolution
        self.random_flip = random_flip

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        try:
            image = load_face(sample.image, self.resolution)
        except Exception as exc:  # PIL raises many types; name the file whatever it was
            raise DatasetError(f"cannot read training image {sample.image} (sample {index}): "
                               f"{type(exc).__name__}: {exc}") from exc
        if self.random_flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return {"image": image, "age": sample.age, "gender": sample.gender, "index": index}


def collate(batch: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    batch = list(batch)
    return {"image": torch.stack([b["image"] for b in batch]),
            "age": torch.tensor([b["age"] for b in batch], dtype=torch.long),
            "gender": [b["gender"] for b in batch],
            "index": torch.tensor([b["index"] for b in batch], dtype=torch.long)}
