"""``cradle2cane bench``: the reference-style per-age loop against this project's one-call sweep.

Variants (``--variants``), all on the same face, ages, seed and model, in one process:

* ``sequential``: what the reference inference script does for each target age: a plain diffusers
  ``StableDiffusionXLImg2ImgPipeline.__call__`` with the LoRA off (prompt, AdaNI strength, 4 steps,
  guidance 1), the prompt encoded again for its pooled embedding, the identity embedding of the
  input and the aged image (CLIP text cache cleared, so everything is re-encoded), and a second
  plain call with ``prompt_embeds``/``pooled_prompt_embeds`` and the LoRA on.
* ``sweep``: ``Cradle2Cane.__call__`` once for all ages (shared VAE encoding, prompts encoded once,
  batched UNet).
* ``single``: ``Cradle2Cane.__call__`` for the last age only (one image, both passes).

``sweep`` and ``single`` also run under each extra ``--memory`` mode (``offload``, ``low-vram``).
Repeats alternate the order of the variants. Times are medians over the repeats; peak memory is
CUDA's ``max_memory_allocated`` on a GPU and the process's peak RSS on the CPU, reset before each
variant where the OS allows it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..files.atomic import check_output, write_text_atomic
from .arguments import UsageError, add_model_arguments, load_model

logger = logging.getLogger(__name__)

VARIANTS = ("sequential", "sweep", "single")
DEFAULT_AGES = 20
MIN_SWEEP_AGE, MAX_SWEEP_AGE = 1, 80
JSON_VERSION = 1


# ----------------------------------------------------------------------------- arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="time the reference-style per-age loop against the one-call sweep",
        description="Time the reference-style per-age loop (plain diffusers calls) against this project's "
                    "one-call lifespan sweep on the same inputs, and report per-image time, the speed-up and "
                    "peak memory. Without --models it writes the tiny model set into a temporary folder.")
    # --models is optional here (the tiny set or --full-size stand in); --memory lists modes to compare.
    add_model_arguments(parser, models_help="models folder (default: the tiny model set, written to a "
                                            "temporary folder)", memory=False)
    parser.add_argument("--full-size", action="store_true",
                        help="random weights at the released sizes (SDXL-Turbo configs shipped in "
                             "cradle2cane/loading/configs/sdxl-turbo, CLIP-L, ArcFace r100, projectors); for a GPU")
    parser.add_argument("--ages", type=int, default=None,
                        help=f"number of target ages spread over {MIN_SWEEP_AGE}..{MAX_SWEEP_AGE} "
                             f"(default {DEFAULT_AGES})")
    parser.add_argument("--age-list", default=None, help="explicit comma-separated target ages, e.g. 10,40,70")
    parser.add_argument("--source-age", type=int, default=30, help="age of the input face (default 30)")
    parser.add_argument("--gender", default="male", help="male or female (default male)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8, help="sweep batch size (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per variant (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per variant first (default 1)")
    parser.add_argument("--variants", default="sequential,sweep",
                        help=f"comma-separated, from {', '.join(VARIANTS)} (default sequential,sweep)")
    parser.add_argument("--memory", default="default",
                        help="comma-separated memory modes for sweep/single: default, offload, low-vram "
                             "(default: default)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", dest="json_path", default=None,
                        help="also write the results as JSON to this file, or '-' for stdout (the table "
                             "then goes to stderr)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    parser.set_defaults(func=_cmd_bench)


@dataclass
class BenchOptions:
    ages: list[int]
    source_age: int
    gender: str
    seed: int
    batch_size: int
    repeats: int
    warmup: int
    variants: list[str]
    memory: list[str]


def _usage(message: str) -> Exception:
    return UsageError(message)


def spread_ages(count: int) -> list[int]:
    """``count`` distinct whole ages from 80 down to 1, evenly spaced, in ascending order."""
    span = MAX_SWEEP_AGE - MIN_SWEEP_AGE
    if not 1 <= count <= span + 1:
        raise _usage(f"--ages must be between 1 and {span + 1} (distinct ages in {MIN_SWEEP_AGE}..{MAX_SWEEP_AGE}), "
                     f"got {count}; use --age-list for other ages")
    if count == 1:
        return [MAX_SWEEP_AGE]
    return sorted({round(MIN_SWEEP_AGE + i * span / (count - 1)) for i in range(count)})


def _parse_list(value: str, allowed: Sequence[str], option: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise _usage(f"{option} is empty; choose from {', '.join(allowed)}")
    unknown = [v for v in items if v not in allowed]
    if unknown:
        raise _usage(f"{option}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def parse_options(args: argparse.Namespace) -> BenchOptions:
    """Check every bench option before anything is loaded; raise ``UsageError`` with the fix."""
    from ..runtime import MEMORY_MODES
    from ..method.prompts import check_age, check_gender

    for name in ("repeats", "batch_size"):
        if getattr(args, name) < 1:
            raise _usage(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise _usage(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads is not None and args.threads < 1:
        raise _usage(f"--threads must be >= 1, got {args.threads}")
    if args.full_size and (args.models is not None or args.base is not None):
        raise _usage("--full-size builds random weights; it cannot be combined with --models or --base")
    if args.base is not None and args.models is None:
        raise _usage("--base needs --models (the folder with the other released files)")
    if args.age_list is not None and args.ages is not None:
        raise _usage("give either --ages (a count) or --age-list (explicit ages), not both")
    if args.age_list is not None:
        try:
            raw = [int(v) for v in args.age_list.split(",") if v.strip()]
        except ValueError:
            raise _usage(f"--age-list must be comma-separated whole ages, got {args.age_list!r}") from None
        if not raw:
            raise _usage("--age-list is empty")
        try:
            ages = list(dict.fromkeys(check_age(a, "--age-list age") for a in raw))
        except ValueError as exc:
            raise _usage(str(exc)) from None
    else:
        ages = spread_ages(DEFAULT_AGES if args.ages is None else args.ages)
    try:
        source_age = check_age(args.source_age, "--source-age")
        gender = check_gender(args.gender, "--gender")
    except ValueError as exc:
        raise _usage(str(exc)) from None
    variants = _parse_list(args.variants, VARIANTS, "--variants")
    memory = _parse_list(args.memory, MEMORY_MODES, "--memory")
    if "sequential" in variants and "default" not in memory:
        raise _usage("the sequential variant runs plain diffusers calls, only in the default memory mode; "
                     "add default to --memory or drop sequential from --variants")
    if args.json_path not in (None, "-"):
        if not Path(args.json_path).parent.exists():
            raise _usage(f"--json: the folder {Path(args.json_path).parent} does not exist")
        check_output(args.json_path, overwrite=args.overwrite, option="--json")
    return BenchOptions(ages=ages, source_age=source_age, gender=gender, seed=args.seed, batch_size=args.batch_size,
                        repeats=args.repeats, warmup=args.warmup, variants=variants, memory=memory)


# ----------------------------------------------------------------------------- full-size random weights


# ----------------------------------------------------------------------------- the two ways


def reference_loop(model, face, ages: Sequence[int], source_age: int, gender: str, seed: int,
                   id_strength: float | None = None):
    """The reference inference's per-age loop on plain diffusers calls; returns (final, aged),
    each [N,3,H,W] float32 on the CPU."""
    import torch

    from ..pipeline import FirstPassOutput
    from ..method.prompts import aging_prompt
    from ..method.lora import lora_enabled
    from ..method.plan import second_pass_seed

    pipe = model.pipe
    steps = model.settings.infer_step
    id_strength = model.settings.id_strength if id_strength is None else id_strength
    face = model.prepare_faces(face)
    finals, ageds = [], []
    for age in ages:
        prompt = aging_prompt(age, gender)
        strength = model.strength_for(source_age, age)
        with lora_enabled(pipe.unet, False):
            aged = pipe(prompt=prompt, image=face, strength=strength, num_inference_steps=steps, guidance_scale=1.0,
                        generator=torch.Generator("cpu").manual_seed(seed), output_type="pt").images
            _, _, pooled, _ = pipe.encode_prompt(prompt, device=model.device, num_images_per_prompt=1,
                                                 do_classifier_free_guidance=False)
        model.clip.clear_cache()
        first = FirstPassOutput(aged=aged.float().cpu(), pooled_embeds=pooled,
                                plan=model.plan(1, age, source_age, gender, seed, strength))
        conditioning = model.identity_embeddings(face, first)
        with lora_enabled(pipe.unet, True):
            final = pipe(prompt_embeds=conditioning, pooled_prompt_embeds=pooled.to(conditioning.dtype), image=aged,
                         strength=id_strength, num_inference_steps=steps, guidance_scale=1.0,
                         generator=torch.Generator("cpu").manual_seed(second_pass_seed(seed)), output_type="pt").images
        finals.append(final.float().cpu())
        ageds.append(aged.float().cpu())
    return torch.cat(finals), torch.cat(ageds)


# ----------------------------------------------------------------------------- measuring


class CallCounter:
    """Counts forward calls and input rows of the expensive modules while active."""

    def __init__(self, model) -> None:
        pipe = model.pipe
        self.modules = {"unet": pipe.unet, "vae_encoder": pipe.vae.encoder, "vae_decoder": pipe.vae.decoder,
                        "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2,
                        "clip_vision": model.clip.model.vision_model, "clip_text": model.clip.model.text_model}
        self.calls = {name: 0 for name in self.modules}
        self.rows = {name: 0 for name in self.modules}
        self._handles: list = []

    def __enter__(self) -> "CallCounter":
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name), with_kwargs=True))
        return self

    def _hook(self, name: str):
        import torch

        def count(module, args, kwargs):
            self.calls[name] += 1
            first = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)
            self.rows[name] += int(first.shape[0]) if first is not None and first.ndim else 0

        return count

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@dataclass
class VariantResult:
    name: str
    variant: str
    memory: str
    images: int
    times_s: list[float] = field(default_factory=list)
    peaks_mib: list[float] = field(default_factory=list)
    peak_kind: str = ""
    calls: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return statistics.median(self.times_s)

    @property
    def per_image_s(self) -> float:
        return self.seconds / self.images

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(seconds_median=self.seconds, per_image_s_median=self.per_image_s,
                    peak_mib=max(self.peaks_mib) if self.peaks_mib else None)
        return data


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


class Bench:
    def __init__(self, model, face, options: BenchOptions) -> None:
        self.model = model
        self.face = face
        self.o = options
        self.device = model.device
        self.outputs: dict[str, tuple] = {}

    def run_variant(self, variant: str):
        o = self.o
        if variant == "sequential":
            return reference_loop(self.model, self.face, o.ages, o.source_age, o.gender, o.seed)
        ages = o.ages if variant == "sweep" else o.ages[-1:]
        result = self.model(self.face, ages, o.source_age, o.gender, seed=o.seed, batch_size=o.batch_size)
        return result.images, result.aged

    def measure(self, result: VariantResult, timed: bool) -> None:
        from ..runtime.diagnostics import peak_memory_mib, reset_peak_memory

        self.model.clip.clear_cache()  # every run starts cold: no age texts from an earlier run
        reset_peak_memory(self.device)
        with CallCounter(self.model) as counter:
            _sync(self.device)
            start = time.perf_counter()
            outputs = self.run_variant(result.variant)
            _sync(self.device)
            elapsed = time.perf_counter() - start
        peak, kind = peak_memory_mib(self.device)
        if timed:
            result.times_s.append(elapsed)
            result.peaks_mib.append(peak)
            result.peak_kind = kind
            result.calls, result.rows = dict(counter.calls), dict(counter.rows)
            self.outputs[result.name] = outputs
        logger.info("%s: %.3f s%s", result.name, elapsed, "" if timed else " (warm-up)")

    def phase(self, variants: Sequence[str], memory: str, progress) -> list[VariantResult]:
        o = self.o
        results = [VariantResult(name=v if memory == "default" else f"{v}+{memory}", variant=v, memory=memory,
                                 images=len(o.ages) if v in ("sequential", "sweep") else 1) for v in variants]
        for _ in range(o.warmup):
            for result in results:
                self.measure(result, timed=False)
        for repeat in range(o.repeats):
            order = results if repeat % 2 == 0 else results[::-1]  # alternate to cancel drift
            for result in order:
                self.measure(result, timed=True)
            progress(f"repeat {repeat + 1}/{o.repeats} [{memory}]: " +
                     ", ".join(f"{r.name} {r.times_s[-1]:.3f} s" for r in results))
        return results

    def run(self, progress) -> list[VariantResult]:
        from ..runtime.offload import set_memory_mode

        results = []
        for memory in self.o.memory:
            variants = [v for v in self.o.variants if memory == "default" or v != "sequential"]
            if not variants:
                continue
            if memory != "default":
                set_memory_mode(self.model, memory, self.device)
            try:
                results += self.phase(variants, memory, progress)
            finally:
                if memory != "default":
                    set_memory_mode(self.model, "default", self.device)
                    self.model.release_memory()
        return results

    def differences(self) -> dict[str, dict[str, float | None]]:
        """Max |difference| between variants' images (same seed: they should agree to fp precision):
        sweep vs sequential, single vs the sweep's (or sequential's) last age, and each memory mode
        against the default mode of the same variant."""
        outputs = self.outputs
        pairs = []
        if "sweep" in outputs and "sequential" in outputs:
            pairs.append(("sweep_vs_sequential", outputs["sweep"], outputs["sequential"]))
        reference = "sweep" if "sweep" in outputs else "sequential" if "sequential" in outputs else None
        if "single" in outputs and reference is not None:
            pairs.append((f"single_vs_{reference}", outputs["single"], tuple(t[-1:] for t in outputs[reference])))
        for name, value in outputs.items():
            base = name.split("+")[0]
            if "+" in name and base in outputs:
                pairs.append((f"{name}_vs_{base}", value, outputs[base]))
        return {label: {"final": _finite_or_none(float((a[0] - b[0]).abs().max())),
                        "aged": _finite_or_none(float((a[1] - b[1]).abs().max()))}
                for label, a, b in pairs}


# ----------------------------------------------------------------------------- report


def make_report(results: Sequence[VariantResult], context: dict[str, Any], diffs: dict) -> dict[str, Any]:
    by_name = {r.name: r for r in results}
    speedup = None
    if "sequential" in by_name and "sweep" in by_name:
        speedup = by_name["sequential"].per_image_s / by_name["sweep"].per_image_s
    peaks = [p for r in results for p in r.peaks_mib]
    context = dict(context)
    if context.get("device", "").startswith("cpu"):
        context["process_peak_rss_mib"] = max([context.get("process_peak_rss_mib") or 0.0, *peaks])
    return {"version": JSON_VERSION, **context, "speedup_sequential_over_sweep": speedup,
            "variants": {r.name: r.to_json() for r in results}, "max_abs_diff": diffs}


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"cradle2cane bench: {report['models']} | {report['device_name']} | {report['dtype']} | "
        f"torch threads {report['torch_threads']}",
        f"{len(report['ages'])} target ages {report['ages'][0]}..{report['ages'][-1]}, source {report['source_age']} "
        f"{report['gender']}, batch {report['batch_size']}, {report['repeats']} repeats "
        f"(+{report['warmup']} warm-up), medians",
        "",
        f"{'variant':<22}{'images':>7}{'s/image':>11}{'s/run':>10}{'UNet calls':>12}{'peak MiB':>11}",
    ]
    for name, v in report["variants"].items():
        lines.append(f"{name:<22}{v['images']:>7}{v['per_image_s_median']:>11.4f}{v['seconds_median']:>10.3f}"
                     f"{v['calls'].get('unet', 0):>12}{(v['peak_mib'] or 0):>11.0f}")
    kind = next(iter(report["variants"].values()), {}).get("peak_kind", "")
    lines.append(f"(peak: {kind})")
    if report["speedup_sequential_over_sweep"] is not None:
        lines.append(f"speed-up, sequential / sweep per image: {report['speedup_sequential_over_sweep']:.2f}x")
    for label, d in report["max_abs_diff"].items():
        fmt = lambda x: "non-finite" if x is None else f"{x:.2e}"  # noqa: E731
        lines.append(f"max |diff| {label}: final {fmt(d['final'])}, aged {fmt(d['aged'])}")
    return "\n".join(lines)


def _write_json(report: dict[str, Any], target: str, overwrite: bool) -> None:
    text = json.dumps(report, indent=2, allow_nan=False)
    if target == "-":
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return
    write_text_atomic(target, text + "\n", overwrite=overwrite, option="--overwrite")


# ----------------------------------------------------------------------------- command


@contextlib.contextmanager
def _models_folder(args: argparse.Namespace) -> Iterator[tuple[Path | None, str]]:
    if args.full_size:
        yield None, "full-size random weights (cradle2cane/loading/configs/sdxl-turbo + released sizes)"
    elif args.models is not None:
        yield Path(args.models), str(args.models)
    else:
        from ..testing.tiny import write_tiny_models

        with tempfile.TemporaryDirectory(prefix="c2c-bench-") as tmp:
            yield write_tiny_models(Path(tmp) / "models"), "tiny set (temporary)"


def _device_name(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores)"


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from ..runtime import diagnostics as M
    from ..runtime.precision import dtype_name, parse_dtype
    from ..testing.full_size import build_full_size_model

    options = parse_options(args)
    if not args.debug:  # the loaders' per-file progress bars would bury the table
        import diffusers
        import transformers

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.full_size and device.type != "cuda" and args.device is None:
        raise _usage("--full-size needs a GPU (about 9 GB of weights in fp16) and none was found; pass "
                     "--device cpu to force it anyway (very slow, about 20 GB of RAM in fp32)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise _usage(f"--device {args.device}: CUDA is not available in this torch build")
    table_out = sys.stderr if args.json_path == "-" else sys.stdout

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with _models_folder(args) as (folder, label):
        start = time.perf_counter()
        if folder is None:
            model = build_full_size_model(device, parse_dtype(args.dtype))
        else:
            args.models = folder
            model = load_model(args)
        load_s = time.perf_counter() - start
        peak_after_load = M.process_peak_rss_mib()
        face = torch.rand(1, 3, model.resolution, model.resolution, generator=torch.Generator().manual_seed(args.seed))
        bench = Bench(model, face, options)
        results = bench.run(progress)
        import diffusers

        context = {
            "models": label, "device": str(model.device), "device_name": _device_name(model.device),
            "dtype": dtype_name(model.dtype), "component_dtypes": M.component_dtypes(model),
            "parameters": M.parameter_counts(model), "attention": M.attention_report(model),
            "resolution": model.resolution, "ages": options.ages, "source_age": options.source_age,
            "gender": options.gender, "seed": options.seed, "batch_size": options.batch_size,
            "repeats": options.repeats, "warmup": options.warmup, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "load_s": load_s,
            "process_peak_rss_mib": peak_after_load,
        }
        report = make_report(results, context, bench.differences())
    print(format_table(report), file=table_out, flush=True)
    if args.json_path is not None:
        _write_json(report, args.json_path, args.overwrite)
    return 0
