"""The training configuration: ``defaults.yaml`` + an optional YAML file + ``--set`` overrides.

Every key must exist in ``defaults.yaml``; values are checked against the type of their default
(or the table below for keys whose default is null), so a typo or a wrong type stops the run before
any model is loaded.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from cradle2cane.loading.settings import RANGES, coerce_scalar, range_problem, read_yaml_mapping

DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")

# Keys whose default is null (or whose type is not the default's type): (kind, nullable).
_EXPLICIT_TYPES: dict[str, tuple[str, bool]] = {
    "models_dir": ("path", False),
    "pretrained_model_name_or_path": ("path", True),
    "pretrained_vae_model_name_or_path": ("path", True),
    "clip_L_path": ("path", True),
    "arcface_weight": ("path", True),
    "lpips_model_path": ("path", True),
    "lpips_alexnet_path": ("path", True),
    "age_model_path": ("str", True),  # a file, or "package.module:factory"
    "train_data_list": ("path", False),
    "output_dir": ("path", False),
    "max_load_num": ("int", True),
    "max_train_steps": ("int", True),
    "checkpoints_total_limit": ("int", True),
    "resume_from_checkpoint": ("str", True),
    "validation_image": ("list[str]", True),
    "validation_target_age": ("list[int]", False),
    "lora_target_modules": ("list[str]", False),
    "age_model_mean": ("list[float]", False),
    "age_model_std": ("list[float]", False),
}
REQUIRED = ("models_dir", "train_data_list", "output_dir")
CHOICES: dict[str, tuple[str, ...]] = {
    "mixed_precision": ("no", "fp16", "bf16"),
    "report_to": ("tensorboard", "none"),
    "age_sample_mode": ("uniform", "normal"),
    "clip_map_model": ("angle", "vector"),
}


class ConfigError(ValueError):
    """A configuration key or value cannot be used."""


def default_values() -> dict[str, Any]:
    data = yaml.safe_load(DEFAULTS_FILE.read_text(encoding="utf-8"))
    if not isinstance(data, dict):  # pragma: no cover - the shipped file is a mapping
        raise ConfigError(f"{DEFAULTS_FILE} is not a YAML mapping")
    return data


def _kind(key: str, default: Any) -> tuple[str, bool]:
    if key in _EXPLICIT_TYPES:
        return _EXPLICIT_TYPES[key]
    if isinstance(default, bool):
        return "bool", False
    if isinstance(default, int):
        return "int", False
    if isinstance(default, float):
        return "float", False
    if isinstance(default, str):
        return "str", False
    raise ConfigError(f"defaults.yaml: no type known for {key!r}")  # pragma: no cover


def _coerce(key: str, value: Any, kind: str, nullable: bool, source: str) -> Any:
    def bad() -> ConfigError:
        return ConfigError(f"{source}: {key} must be {kind}{' or null' if nullable else ''}, got {value!r}")

    if kind == "str" and isinstance(value, bool) and key in CHOICES:
        value = "yes" if value else "no"  # YAML reads an unquoted no/yes as a boolean: mixed_precision=no
    if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "~") and kind != "str"):
        if nullable or key in REQUIRED:
            return None
        raise bad()
    if kind.startswith("list["):
        inner = kind[5:-1]
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise bad()
        return [_coerce(key, v, inner, False, source) for v in value]
    try:
        return coerce_scalar(value, kind)
    except (TypeError, ValueError, OverflowError):
        raise bad() from None


def _unknown(keys: Iterable[str], known: Iterable[str], source: str) -> None:
    known = list(known)
    unknown = [k for k in keys if k not in known]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ConfigError(f"{source}: unknown configuration key{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
                      f"the keys are those of {DEFAULTS_FILE}")


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as YAML (``1e-4``, ``[20, 40]``, ``true``, ``null``)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: the key is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


@dataclass
class Config:
    """All training hyper-parameters; read them as attributes (``cfg.learning_rate``)."""

    values: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values")
        if values is not None and name in values:
            return values[name]
        raise AttributeError(f"no training setting {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def path(self, key: str) -> Path | None:
        value = self.values[key]
        return None if value is None else Path(value).expanduser()

    def replace(self, **changes: Any) -> "Config":
        return build_config(overrides=changes, base=self.values)


def build_config(config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                 set_args: Iterable[str] = (), base: Mapping[str, Any] | None = None) -> Config:
    """Defaults, then ``config_file``, then ``overrides`` (a mapping), then ``--set`` strings."""
    defaults = default_values()
    values = dict(base) if base is not None else dict(defaults)
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if config_file is not None:
        path = Path(config_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        layers.append((str(path), read_yaml_mapping(path, ConfigError)))
    if overrides:
        layers.append(("settings", overrides))
    sets = [parse_override(s) for s in set_args]
    if sets:
        layers.append(("--set", dict(sets)))
    for source, layer in layers:
        _unknown(layer.keys(), defaults.keys(), source)
        for key, value in layer.items():
            kind, nullable = _kind(key, defaults[key])
            values[key] = _coerce(key, value, kind, nullable, source)
            if key in RANGES and (problem := RANGES[key].problem(key, values[key])):
                raise ConfigError(f"{source}: {problem}")  # name the file (or --set) the value came from
    for key, value in values.items():  # the defaults themselves, once
        kind, nullable = _kind(key, defaults[key])
        values[key] = _coerce(key, value, kind, nullable or key in REQUIRED, "defaults")
    cfg = Config(values)
    check_values(cfg)
    return cfg


def check_values(cfg: Config) -> None:
    """Range and consistency checks that do not need any file."""
    v = cfg.values
    for key, choices in CHOICES.items():
        if v[key] not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {v[key]!r}")
    positive = ("train_batch_size", "num_train_epochs", "gradient_accumulation_steps", "rank",
                "checkpointing_steps", "d_loss_update_step", "age_model_input_size", "d_base_channels")
    for key in positive:
        if v[key] < 1:
            raise ConfigError(f"{key} must be >= 1, got {v[key]}")
    if problem := range_problem(v):  # the method's settings: the same bounds as hparams.yml
        raise ConfigError(problem)
    for key in ("max_train_steps", "max_load_num", "checkpoints_total_limit"):
        if v[key] is not None and v[key] < 1:
            raise ConfigError(f"{key} must be >= 1 or null, got {v[key]}")
    if v["validation_steps"] < 0 or v["num_validation_images"] < 0 or v["dataloader_num_workers"] < 0:
        raise ConfigError("validation_steps, num_validation_images and dataloader_num_workers must be >= 0")
    if not 0 <= v["min_age"] <= v["max_age"] <= 100:
        raise ConfigError(f"need 0 <= min_age <= max_age <= 100, got min_age={v['min_age']}, max_age={v['max_age']}")
    if not 0 < v["aged_strength"] <= 1:
        raise ConfigError(f"aged_strength must be in (0, 1], got {v['aged_strength']}")
    if not 0 <= v["same_age_rate"] <= 1:
        raise ConfigError(f"same_age_rate must be in 0..1, got {v['same_age_rate']}")
    if v["age_scale"] < 0:
        raise ConfigError(f"age_scale must be >= 0, got {v['age_scale']}")
    if v["learning_rate"] <= 0 or v["d_learning_rate"] <= 0:
        raise ConfigError("learning_rate and d_learning_rate must be > 0")
    for key in [k for k in v if k.endswith("_loss_weight")]:
        if v[key] < 0:
            raise ConfigError(f"{key} must be >= 0, got {v[key]}")
    for age in v["validation_target_age"]:
        if not 0 <= age <= 100:
            raise ConfigError(f"validation_target_age: {age} is outside 0..100")
    if len(v["age_model_mean"]) != 3 or len(v["age_model_std"]) != 3 or min(v["age_model_std"]) <= 0:
        raise ConfigError("age_model_mean and age_model_std need three values each (std > 0)")
    if not v["lora_target_modules"]:
        raise ConfigError("lora_target_modules is empty")


def require(cfg: Config) -> None:
    """The keys a training run cannot do without."""
    missing = [k for k in REQUIRED if cfg.values.get(k) in (None, "")]
    if missing:
        flags = {"models_dir": "--models", "train_data_list": "--data", "output_dir": "--output"}
        raise ConfigError("missing " + ", ".join(f"{k} (set it in the config or with {flags[k]})" for k in missing))


def dump(values: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(values), sort_keys=False, allow_unicode=True)
