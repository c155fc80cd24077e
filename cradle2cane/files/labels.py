"""Age and gender labels of face images: label files (CSV or JSON) and ``23_male.png``-style names.

Read the same way by ``cradle2cane evaluate`` and by training's dataset preparation.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..method.prompts import MAX_AGE, MIN_AGE, check_gender

FILE_COLUMNS = ("image", "file", "filename", "path", "name")
AGE_COLUMNS = ("age",)
GENDER_COLUMNS = ("gender", "sex")

LabelRow = tuple[int, str, Any, Any]
"""(row number in the file, image name as written, age, gender), not yet checked."""


def check_label(age: Any, gender: Any) -> tuple[int, str]:
    """(age rounded to whole years, ``male``/``female``), or ``ValueError`` saying what is wrong."""
    if age is None or (isinstance(age, str) and not age.strip()):
        raise ValueError("no age")
    if gender is None or (isinstance(gender, str) and not gender.strip()):
        raise ValueError("no gender")
    try:
        value = float(age)
    except (TypeError, ValueError):
        raise ValueError(f"age {age!r} is not a number") from None
    if math.isnan(value) or not MIN_AGE <= value <= MAX_AGE:
        raise ValueError(f"age {age} outside {MIN_AGE}..{MAX_AGE}")
    try:
        gender = check_gender(gender)
    except ValueError:
        raise ValueError(f"gender {gender!r} is not male/female") from None
    return int(round(value)), gender


def labels_from_name(path: str | Path) -> tuple[int, str] | None:
    """``23_male.png``, ``23.0_female_01234.png`` -> (23, gender); None when the name is not like
    that; ``ValueError`` when it is, but the age is outside 0..100."""
    parts = Path(path).stem.split("_")
    if len(parts) < 2:
        return None
    try:
        float(parts[0])
        check_gender(parts[1])
    except ValueError:
        return None
    try:
        return check_label(parts[0], parts[1])
    except ValueError as exc:
        raise ValueError(f"{Path(path).name}: {exc}") from None


def _column(header: Sequence[str], names: Sequence[str]) -> str | None:
    lowered = {h.strip().lower(): h for h in header}
    for name in names:
        if name in lowered:
            return lowered[name]
    return None


def read_label_file(path: str | Path, error: type[Exception] = ValueError) -> list[LabelRow]:
    """Rows from a CSV with a header (``image,age,gender``; ``file``/``sex`` ... also accepted) or a
    JSON file (a list of objects, or a mapping image -> {age, gender}). A file that cannot be read,
    lacks a column or has no rows raises ``error`` naming the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise error(f"label file {path} does not exist")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise error(f"{path}: cannot read the JSON ({exc})") from exc
        if isinstance(data, Mapping):
            data = [{"image": k, **(v if isinstance(v, Mapping) else {})} for k, v in data.items()]
        if not isinstance(data, list) or not all(isinstance(d, Mapping) for d in data):
            raise error(f"{path}: expected a list of {{image, age, gender}} objects or a mapping "
                        f"image -> {{age, gender}}")
        header = sorted({str(k).lower() for d in data for k in d})
        records = [{str(k).lower(): v for k, v in d.items()} for d in data]
        first_row = 1
    else:
        try:
            with path.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                header = [h.strip().lower() for h in (reader.fieldnames or [])]
                records = [{(k or "").strip().lower(): v for k, v in r.items()} for r in reader]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise error(f"{path}: cannot read the CSV ({exc})") from exc
        first_row = 2  # the header is row 1
    file_col = _column(header, FILE_COLUMNS)
    age_col = _column(header, AGE_COLUMNS)
    gender_col = _column(header, GENDER_COLUMNS)
    missing = [what for what, col in (("image/file", file_col), ("age", age_col), ("gender", gender_col))
               if col is None]
    if missing:
        raise error(f"{path}: has no {', '.join(missing)} column (columns found: {', '.join(header) or 'none'}); "
                    f"expected image,age,gender")
    rows = [(i + first_row, str(record.get(file_col) or "").strip(), record.get(age_col), record.get(gender_col))
            for i, record in enumerate(records)]
    if not rows:
        raise error(f"{path}: no label rows")
    return rows
