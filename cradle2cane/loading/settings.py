"""Typed view of a Cradle2Cane ``hparams.yml``.

The released ``hparams.yml`` is the whole training configuration dumped to YAML. Inference needs a
handful of its keys; the rest are known training keys that we accept silently. Keys we do not know
are reported (a typo in a hand-edited file should not pass unnoticed) and missing keys fall back to
the released defaults with a warning.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..method.identity import CLIP_MAP_METHODS

logger = logging.getLogger(__name__)



class SettingsError(ValueError):
    """A value in hparams.yml cannot be used."""


@dataclass(frozen=True)
class Settings:
    """The inference-relevant part of hparams.yml, with the released defaults."""

    t1: int = 10
    t2: int = 30
    one_threshold: bool = False
    id_strength: float = 0.25
    use_swr: bool = True
    swr_alpha: float = 0.01
    swr_beta: float = 1.1
    clip_map_model: str = "angle"
    infer_step: int = 4
    resolution: int = 512
    use_arcface_project: bool = True
    use_clip_project: bool = True
    face_project_use_hidden_state: bool = True
    arcface_network: str = "r100"
    rank: int = 40
    lora_alpha: float | None = None
    face_project_hidden_dim: int = 25088
    face_project_output_dim: int = 2048
    clip_project_input_dim: int = 768
    clip_project_output_dim: int = 2048
    face_project_save_name: str = "face_project.bin"
    clip_project_save_name: str = "clip_project.bin"

    def __post_init__(self) -> None:
        problem = range_problem(self.to_mapping())
        if problem is None and self.clip_map_model not in CLIP_MAP_METHODS:
            problem = f"clip_map_model must be one of {CLIP_MAP_METHODS}, got {self.clip_map_model!r}"
        if problem is None and not (self.use_arcface_project and self.use_clip_project
                                    and self.face_project_use_hidden_state):
            problem = ("this implementation needs use_arcface_project, use_clip_project and "
                       "face_project_use_hidden_state all true (the released configuration)")
        if problem is not None:
            raise SettingsError(problem)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "hparams.yml") -> "Settings":
        """Build settings from a parsed YAML mapping, warning about unknown and missing keys."""
        own = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(own) - KNOWN_TRAINING_KEYS)
        if unknown:
            logger.warning("%s: ignoring unknown keys %s", source, ", ".join(unknown))
        missing = sorted(k for k in REQUIRED_FOR_INFERENCE if k not in values)
        if missing:
            logger.warning("%s: missing keys %s; using the released defaults", source, ", ".join(missing))
        kwargs: dict[str, Any] = {}
        if "use_swr" not in values:  # the reference reads a missing use_swr as false
            logger.warning("%s: no use_swr key: SVR-ArcFace is off, as the reference reads it", source)
            kwargs["use_swr"] = False
        for name, f in own.items():
            if name not in values or values[name] is None:
                continue
            kwargs[name] = _coerce(values[name], f.type, name, source)
        try:
            return cls(**kwargs)
        except SettingsError as exc:
            raise SettingsError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "Settings":
        path = Path(path)
        return cls.from_mapping(read_yaml_mapping(path, SettingsError), source=str(path))

    def to_mapping(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Range:
    """Allowed values of one numeric setting: ``low..high`` (``low`` excluded when ``open_low``)."""

    low: float
    high: float
    why: str
    open_low: bool = False
    multiple_of: int = 1

    def problem(self, key: str, value: Any) -> str | None:
        """None when ``value`` is allowed, else one line naming ``key`` (NaN and infinities fail)."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            return f"{key} must be a number, got {value!r}"
        above = number > self.low if self.open_low else number >= self.low
        if not (above and number <= self.high) or (self.multiple_of > 1 and number % self.multiple_of):
            low = f"above {self.low:g}" if self.open_low else f"at least {self.low:g}"
            step = f" and a multiple of {self.multiple_of}" if self.multiple_of > 1 else ""
            return f"{key} must be {low} and at most {self.high:g}{step} ({self.why}), got {value!r}"
        return None


# The one table of bounds for the method's numeric settings; hparams.yml, the training
# configuration and per-call overrides are all checked against it.
RANGES: dict[str, Range] = {
    "t1": Range(0, 100, "an age gap in years"),
    "t2": Range(0, 100, "an age gap in years"),
    "id_strength": Range(0, 1, "an img2img strength", open_low=True),
    "swr_alpha": Range(-1, 1, "the SVR exponent; the released value is 0.01, larger ones overflow exp()"),
    "swr_beta": Range(0, 10, "the SVR scale; the released value is 1.1", open_low=True),
    "infer_step": Range(1, 50, "sampler steps; SDXL-Turbo is distilled for 1-4, the released value is 4"),
    "resolution": Range(64, 2048, "pixels per side; the released value is 512", multiple_of=8),
}


def range_problem(values: Mapping[str, Any]) -> str | None:
    """The first setting in ``values`` outside ``RANGES`` (or t1 > t2), as one line; else None."""
    for key, allowed in RANGES.items():
        if key in values and values[key] is not None and (problem := allowed.problem(key, values[key])):
            return problem
    if "t1" in values and "t2" in values and values["t1"] > values["t2"]:
        return f"need t1 <= t2, got t1={values['t1']}, t2={values['t2']}"
    return None


def read_yaml_mapping(path: Path, error: type[Exception]) -> dict[str, Any]:
    """A YAML file that must hold a mapping (an empty file is an empty mapping); any other
    content raises ``error`` naming the file."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise error(f"{path}: cannot read the YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise error(f"{path}: expected a YAML mapping of key: value, got {type(data).__name__}")
    return dict(data)


def coerce_scalar(value: Any, kind: str) -> Any:
    """A YAML value as ``bool``/``int``/``float``/``str``; ``ValueError`` when it is not one.

    Strings that spell a value are accepted (``"true"``, ``"yes"``, ``"1e-4"``, ``"4.0"`` for an int),
    booleans are never numbers. Shared by hparams.yml and the training configuration.
    """
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.strip().lower() in ("true", "yes", "1")
        raise ValueError(value)
    if kind in ("int", "float"):
        if isinstance(value, bool):
            raise ValueError(value)
        number = float(value)  # TypeError/ValueError for anything that is not a number
        if kind == "float":
            return number
        if number != int(number):
            raise ValueError(value)
        return int(number)
    if kind in ("str", "path"):
        if isinstance(value, (dict, list, tuple, bool)):
            raise ValueError(value)
        return str(value)
    raise ValueError(f"unknown kind {kind!r}")


def _coerce(value: Any, annotation: str, name: str, source: str) -> Any:
    kind = annotation.split("|")[0].strip()
    try:
        return coerce_scalar(value, kind)
    except (TypeError, ValueError, OverflowError):
        raise SettingsError(f"{source}: {name} must be {kind}, got {value!r}") from None


# Keys the inference code needs to see; absent ones get defaults and a warning.
REQUIRED_FOR_INFERENCE = frozenset({"t1", "t2", "id_strength", "use_swr", "swr_alpha", "swr_beta", "clip_map_model"})

# Keys of the reference training configuration that inference does not use.
KNOWN_TRAINING_KEYS = frozenset(
    """
    pretrained_model_name_or_path pretrained_vae_model_name_or_path arcface_weight clip_L_path lpips_model_path
    age_model_path train_data_list lpips_net revision dataset_name center_crop random_flip max_load_num
    train_batch_size num_train_epochs max_train_steps learning_rate scale_lr lr_scheduler lr_warmup_steps
    gradient_accumulation_steps gradient_checkpointing mixed_precision variant pixel_mse_loss_weight
    lpips_loss_weight ssim_loss_weight id_cos_loss_weight age_loss_weight age_loss_2_weight g_loss_weight
    start_g_loss_weigth end_g_loss_weigth d_loss_weight d_loss_update_step min_age max_age same_age_rate
    age_scale aged_strength all_strength gender_strength use_avg sort use_four_image_swr use_gan_loss
    pixel_mse_loss_use_weight lpips_loss_use_weight use_adaptive_noise_inject prompt_mode age_sample_mode
    use_8bit_adam adam_beta1 adam_beta2 adam_weight_decay adam_epsilon max_grad_norm train_text_encoder
    snr_gamma prediction_type enable_xformers_memory_efficient_attention noise_offset allow_tf32
    dataloader_num_workers output_dir checkpointing_steps checkpoints_total_limit resume_from_checkpoint
    validation_image validation_target_age validation_target_gender num_validation_images validation_steps
    push_to_hub hub_token hub_model_id logging_dir report_to debug_loss debug_index embedding_fuse_save_name
    face_project_feature_dim seed local_rank config models_dir diffusion_loss_weight
    id_cos_loss_weight_base age_loss_weight_base age_loss_2_weight_base
    overwrite_output_dir check_images
    lpips_alexnet_path age_model_input_size age_model_mean age_model_std vae_gradient_checkpointing
    lora_target_modules d_learning_rate d_adam_beta1 d_adam_beta2 d_base_channels
    """.split()
)
