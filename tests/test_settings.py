"""hparams.yml parsing: released defaults, unknown and missing keys, bad values."""

import logging

import pytest

from cradle2cane import Settings, SettingsError


def test_defaults_are_the_released_values():
    s = Settings()
    assert (s.t1, s.t2, s.id_strength, s.use_swr, s.swr_alpha, s.swr_beta, s.clip_map_model) == \
        (10, 30, 0.25, True, 0.01, 1.1, "angle")


def test_reads_the_reference_training_dump(tmp_path, caplog):
    path = tmp_path / "hparams.yml"
    path.write_text("t1: 5\nt2: 30\nid_strength: 0.25\nuse_swr: False\nswr_alpha: 0.01\nswr_beta: 1.1\n"
                    "clip_map_model: vector\nlearning_rate: 1e-4\nrank: 40\nvalidation_target_age: [1, 2]\n")
    with caplog.at_level(logging.WARNING):
        s = Settings.from_file(path)
    assert s.t1 == 5 and s.use_swr is False and s.clip_map_model == "vector" and s.rank == 40
    assert caplog.text == ""  # every key known, none missing


def test_unknown_and_missing_keys_warn_and_fall_back(tmp_path, caplog):
    path = tmp_path / "hparams.yml"
    path.write_text("t1: 8\nsvr_alpha: 0.5\n")
    with caplog.at_level(logging.WARNING):
        s = Settings.from_file(path)
    assert s.t1 == 8 and s.t2 == 30 and s.swr_alpha == 0.01
    assert "unknown keys svr_alpha" in caplog.text
    assert "missing keys" in caplog.text and "clip_map_model" in caplog.text


@pytest.mark.parametrize("text, match", [
    ("t1: 40\nt2: 30\n", "t1 <= t2"),
    ("clip_map_model: spiral\n", "clip_map_model"),
    ("id_strength: 0\n", "id_strength"),
    ("t1: ten\n", "t1 must be int"),
    ("use_swr: maybe\n", "use_swr must be bool"),
    ("- a\n- b\n", "YAML mapping"),
    ("t1: [unclosed\n", "cannot read"),
])
def test_bad_values_raise_naming_the_file(tmp_path, text, match):
    path = tmp_path / "hparams.yml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=match):
        Settings.from_file(path)


def test_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "hparams.yml"
    path.write_text("")
    assert Settings.from_file(path) == Settings(use_swr=False)  # a missing use_swr means off


def test_missing_use_swr_turns_svr_off_with_a_warning(tmp_path, caplog):
    """The reference reads a missing use_swr as false; a file that says it is followed."""
    path = tmp_path / "hparams.yml"
    path.write_text("t1: 10\nt2: 30\n")
    with caplog.at_level(logging.WARNING):
        assert Settings.from_file(path).use_swr is False
    assert "use_swr" in caplog.text and "SVR-ArcFace is off" in caplog.text
    path.write_text("use_swr: true\n")
    assert Settings.from_file(path).use_swr is True
