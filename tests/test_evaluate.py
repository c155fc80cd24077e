"""`cradle2cane evaluate` on the tiny model set (planted insightface genderage model)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cradle2cane.tools.cli import main
from cradle2cane.tools.evaluate import collect_faces, harmonic, labels_from_name

NAMES = ["23_male.png", "41.0_female_00012.png", "60_male_x.jpg"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("eval_faces")
    rng = np.random.default_rng(5)
    for name in NAMES:
        Image.fromarray((rng.random((128, 128, 3)) * 255).astype(np.uint8)).save(folder / name)
    return folder


def test_evaluate_writes_the_json_report(faces, tiny_models, tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = main(["evaluate", str(faces), "--models", str(tiny_models), "--device", "cpu", "--target-age", "10,70",
               "--json", str(out), "--quiet", "--save-images", str(tmp_path / "images")])
    assert rc == 0
    table = capsys.readouterr().out
    assert "age MAE" in table and "harmonic" in table and "     all " in table
    report = json.loads(out.read_text())
    assert report["target_ages"] == [10, 70] and report["estimator"] == "genderage"
    assert set(report["per_target"]) == {"10", "70"}
    items = report["items"]
    assert len(items) == len(NAMES) * 2
    by_name = {(i["image"], i["target_age"]): i for i in items}
    assert by_name[("41.0_female_00012.png", 70)]["source_age"] == 41
    assert by_name[("41.0_female_00012.png", 70)]["gender"] == "female"
    for item in items:
        assert -1.0 <= item["identity"] <= 1.0
        assert item["estimated_age"] is not None and 0 <= item["estimated_age"] <= 100
        assert item["age_error"] == pytest.approx(abs(item["estimated_age"] - item["target_age"]))
        assert item["age_score"] == pytest.approx(max(0.0, 1 - item["age_error"] / 10))
        assert item["harmonic"] == pytest.approx(harmonic(item["age_score"], item["identity"]))
    overall = report["overall"]
    assert overall["count"] == overall["estimated"] == 6
    assert overall["age_mae"] == pytest.approx(sum(i["age_error"] for i in items) / 6)
    assert overall["identity"] == pytest.approx(sum(i["identity"] for i in items) / 6)
    assert math.isfinite(overall["harmonic"])
    assert len(list((tmp_path / "images").glob("*.png"))) == 6


def test_evaluate_with_labels_file_and_no_estimator(faces, tiny_models, tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("image,age,gender\n" + "".join(f"{n},30,female\n" for n in NAMES))
    rc = main(["evaluate", str(faces), "--models", str(tiny_models), "--device", "cpu", "--target-age", "50",
               "--labels", str(labels), "--estimator", "none", "--json", "-", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    assert {i["source_age"] for i in report["items"]} == {30}
    assert report["overall"]["age_mae"] is None and report["overall"]["harmonic"] is None
    assert report["overall"]["estimated"] == 0


def test_bad_evaluation_input(faces, tiny_models, tmp_path, capsys):
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    Image.new("RGB", (64, 64)).save(unlabelled / "portrait.png")
    assert main(["evaluate", str(unlabelled), "--models", str(tiny_models), "--target-age", "30"]) == 1
    assert "portrait.png: no source age/gender" in capsys.readouterr().err
    (unlabelled / "portrait.png").rename(unlabelled / "130_male.png")
    assert main(["evaluate", str(unlabelled), "--models", str(tiny_models), "--target-age", "30"]) == 1
    assert "outside 0..100" in capsys.readouterr().err
    assert main(["evaluate", str(faces), "--models", str(tiny_models), "--target-age", "101"]) == 1
    assert "between 0 and 100" in capsys.readouterr().err
    labels = tmp_path / "l.csv"
    labels.write_text("image,gender\n23_male.png,male\n")
    with pytest.raises(ValueError, match="no age column"):
        collect_faces(faces, labels)
    (unlabelled / "130_male.png").write_bytes(b"not an image")
    (unlabelled / "130_male.png").rename(unlabelled / "30_male.png")
    assert main(["evaluate", str(unlabelled), "--models", str(tiny_models), "--device", "cpu", "--target-age", "30",
                 "--estimator", "none", "--quiet"]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_labels_from_file_names():
    assert labels_from_name("23_male.png") == (23, "male")
    assert labels_from_name("23.0_female_01234_White.png") == (23, "female")
    assert labels_from_name("portrait.png") is None
    assert labels_from_name("abc_male.png") is None
