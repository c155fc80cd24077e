"""``cradle2cane bench``: the one-call sweep against per-age calls, the reference loop and the floor.

All variants (``tools.bench_runs``) age the same face to the same ages with the same seed and model
in one process; repeats alternate their order and the report keeps medians. Time is the process's
CPU time on the CPU (wall time on a shared machine measures the neighbours) and wall time between
CUDA synchronisations on a GPU. The floor (``tools.bench_floor``) is what the sweep cannot avoid:
every UNet row and VAE pass at its cheapest batch size, plus the encoders; the sweep's efficiency
is floor / sweep. ``--profile`` splits every run by module.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..files.atomic import check_output, write_text_atomic
from .arguments import UsageError, add_model_arguments, load_model
from .bench_runs import VARIANTS, Bench, RunSettings, VariantResult

DEFAULT_AGES = 20
DEFAULT_VARIANTS = "sweep,per-age,reference"
MIN_SWEEP_AGE, MAX_SWEEP_AGE = 1, 80
JSON_VERSION = 2


# ----------------------------------------------------------------------------- arguments


def register(subparsers) -> None:
    from ..runtime.acceleration import COMPILE_MODES

    parser = subparsers.add_parser(
        "bench", help="time the one-call sweep against per-age calls, the reference loop and the floor",
        description="Age one face to many target ages in several ways on the same inputs and report time per "
                    "image, the ratios to the one-call sweep, the floor (every UNet row and VAE pass at its "
                    "cheapest batch size, plus the encoders), the sweep's efficiency against it and peak memory. "
                    "Time is process CPU time on the CPU and synchronised wall time on CUDA. Without --models "
                    "it writes the tiny model set into a temporary folder.")
    # --models is optional here (the tiny set or --full-size stand in); --memory lists modes to compare.
    add_model_arguments(parser, models_help="models folder (default: the tiny model set, written to a "
                                            "temporary folder)", memory=False)
    parser.add_argument("--full-size", action="store_true",
                        help="random weights at the released sizes (SDXL-Turbo configs shipped in "
                             "cradle2cane/loading/configs/sdxl-turbo, CLIP-L, ArcFace r100, projectors); for a GPU")
    parser.add_argument("--resolution", type=int, default=None,
                        help="run at this image size instead of the model's own (a multiple of 64), e.g. to "
                             "see where compute dominates with the tiny set, or full size on a CPU")
    parser.add_argument("--ages", type=int, default=None,
                        help=f"number of target ages spread over {MIN_SWEEP_AGE}..{MAX_SWEEP_AGE} "
                             f"(default {DEFAULT_AGES})")
    parser.add_argument("--age-list", default=None, help="explicit comma-separated target ages, e.g. 10,40,70")
    parser.add_argument("--source-age", type=int, default=30, help="age of the input face (default 30)")
    parser.add_argument("--gender", default="male", help="male or female (default male)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8, help="the sweep's batch size cap (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per variant (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per variant first (default 1)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                        help=f"comma-separated, from {', '.join(VARIANTS)} (default {DEFAULT_VARIANTS})")
    parser.add_argument("--memory", default="default",
                        help="comma-separated memory modes for sweep, per-age and single: default, offload, "
                             "low-vram (default: default)")
    parser.add_argument("--reference-inference", action="store_true",
                        help="run sweep, per-age and single with reference_inference=True (the reference script's "
                             "input conversions), so their images match the reference loop's up to 8-bit rounding")
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip measuring the floor (each component alone at each batch size)")
    parser.add_argument("--profile", action="store_true",
                        help="split every run by module (UNet, VAE encoder/decoder, text encoders, ArcFace, CLIP, "
                             "projectors, other); on CUDA this synchronises around each module")
    parser.add_argument("--compile", dest="compile_mode", default=None, choices=COMPILE_MODES,
                        help="torch.compile the UNet in this mode (reduce-overhead adds CUDA graphs); the warm-up "
                             "runs pay the compilation")
    parser.add_argument("--compile-backend", default="inductor", choices=("inductor", "aot_eager", "eager"),
                        help="torch.compile backend (default inductor; eager checks the mechanics without a compiler)")
    parser.add_argument("--channels-last", action="store_true",
                        help="convolution weights in the channels-last memory format (GPUs; CPUs without native "
                             "bf16/fp16 need it for --dtype bf16/fp16)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", dest="json_path", default=None,
                        help="also write the results as JSON to this file, or '-' for stdout (the table "
                             "then goes to stderr)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    parser.set_defaults(func=_cmd_bench)


@dataclass
class BenchOptions:
    run: RunSettings
    variants: list[str]
    memory: list[str]
    floor: bool


def spread_ages(count: int) -> list[int]:
    """``count`` distinct whole ages from 80 down to 1, evenly spaced, in ascending order."""
    span = MAX_SWEEP_AGE - MIN_SWEEP_AGE
    if not 1 <= count <= span + 1:
        raise UsageError(f"--ages must be between 1 and {span + 1} (distinct ages in "
                         f"{MIN_SWEEP_AGE}..{MAX_SWEEP_AGE}), got {count}; use --age-list for other ages")
    if count == 1:
        return [MAX_SWEEP_AGE]
    return sorted({round(MIN_SWEEP_AGE + i * span / (count - 1)) for i in range(count)})


def _parse_list(value: str, allowed: Sequence[str], option: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise UsageError(f"{option} is empty; choose from {', '.join(allowed)}")
    unknown = [v for v in items if v not in allowed]
    if unknown:
        raise UsageError(f"{option}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def _parse_ages(args: argparse.Namespace) -> list[int]:
    from ..method.prompts import check_age

    if args.age_list is not None and args.ages is not None:
        raise UsageError("give either --ages (a count) or --age-list (explicit ages), not both")
    if args.age_list is None:
        return spread_ages(DEFAULT_AGES if args.ages is None else args.ages)
    try:
        raw = [int(v) for v in args.age_list.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--age-list must be comma-separated whole ages, got {args.age_list!r}") from None
    if not raw:
        raise UsageError("--age-list is empty")
    try:
        return list(dict.fromkeys(check_age(a, "--age-list age") for a in raw))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def parse_options(args: argparse.Namespace) -> BenchOptions:
    """Check every bench option before anything is loaded; raise ``UsageError`` with the fix."""
    from ..method.prompts import check_age, check_gender
    from ..runtime import MEMORY_MODES

    for name in ("repeats", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.resolution is not None and (args.resolution < 64 or args.resolution % 64):
        raise UsageError(f"--resolution must be a multiple of 64 and at least 64, got {args.resolution}")
    if args.full_size and (args.models is not None or args.base is not None):
        raise UsageError("--full-size builds random weights; it cannot be combined with --models or --base")
    if args.base is not None and args.models is None:
        raise UsageError("--base needs --models (the folder with the other released files)")
    ages = _parse_ages(args)
    try:
        source_age = check_age(args.source_age, "--source-age")
        gender = check_gender(args.gender, "--gender")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    variants = _parse_list(args.variants, VARIANTS, "--variants")
    memory = _parse_list(args.memory, MEMORY_MODES, "--memory")
    if "reference" in variants and "default" not in memory:
        raise UsageError("the reference variant runs plain diffusers calls, only in the default memory mode; "
                         "add default to --memory or drop reference from --variants")
    if args.json_path not in (None, "-"):
        if not Path(args.json_path).parent.exists():
            raise UsageError(f"--json: the folder {Path(args.json_path).parent} does not exist")
        check_output(args.json_path, overwrite=args.overwrite, option="--json")
    run = RunSettings(ages=ages, source_age=source_age, gender=gender, seed=args.seed, batch_size=args.batch_size,
                      repeats=args.repeats, warmup=args.warmup, profile=args.profile,
                      reference_inference=args.reference_inference)
    return BenchOptions(run=run, variants=variants, memory=memory, floor=args.floor and "default" in memory)


# ----------------------------------------------------------------------------- report


def make_report(results: Sequence[VariantResult], context: dict[str, Any], diffs: dict,
                floor: dict[str, Any] | None) -> dict[str, Any]:
    by_name = {r.name: r for r in results}
    sweep = by_name.get("sweep")
    ratios = {f"{name}_over_sweep": by_name[name].per_image_s / sweep.per_image_s
              for name in ("per-age", "reference") if sweep is not None and name in by_name}
    peaks = [p for r in results for p in r.peaks_mib]
    context = dict(context)
    if context.get("device", "").startswith("cpu"):
        context["process_peak_rss_mib"] = max([context.get("process_peak_rss_mib") or 0.0, *peaks])
    return {"version": JSON_VERSION, **context, "per_image_ratios": ratios, "floor": floor,
            "variants": {r.name: r.to_json() for r in results}, "max_abs_diff": diffs}


def _format_profile(report: dict[str, Any]) -> list[str]:
    lines = []
    for name, v in report["variants"].items():
        profile = v.get("profile_s")
        if profile:
            total = v["seconds_median"] or 1.0
            parts = sorted(profile.items(), key=lambda kv: -kv[1])
            lines.append(f"profile {name}: " + ", ".join(f"{k} {100 * s / total:.0f}%" for k, s in parts if s > 0))
    return lines


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"cradle2cane bench: {report['models']} | {report['device_name']} | {report['dtype']} | "
        f"{report['resolution']} px | torch threads {report['torch_threads']} | time: {report['clock']}",
        f"{len(report['ages'])} target ages {report['ages'][0]}..{report['ages'][-1]}, source {report['source_age']} "
        f"{report['gender']}, batch cap {report['batch_size']} (policy: {report['batch_sizes']}), "
        f"{report['repeats']} repeats (+{report['warmup']} warm-up), medians",
        "",
        f"{'variant':<22}{'images':>7}{'s/image':>11}{'s/run':>10}{'UNet calls':>12}{'peak MiB':>11}",
    ]
    for name, v in report["variants"].items():
        lines.append(f"{name:<22}{v['images']:>7}{v['per_image_s_median']:>11.4f}{v['seconds_median']:>10.3f}"
                     f"{v['calls'].get('unet', 0):>12}{(v['peak_mib'] or 0):>11.0f}")
    floor = report["floor"]
    if floor is not None:
        lines.append(f"{'floor':<22}{'':>7}{floor['per_image_s']:>11.4f}{floor['seconds']:>10.3f}")
    kind = next(iter(report["variants"].values()), {}).get("peak_kind", "")
    lines.append(f"(peak: {kind})")
    for label, ratio in report["per_image_ratios"].items():
        lines.append(f"per image, {label.replace('_over_', ' / ')}: {ratio:.2f}x")
    if floor is not None and floor["sweep_efficiency"] is not None:
        lines.append(f"sweep efficiency (floor / sweep): {100 * floor['sweep_efficiency']:.0f}%")
    lines += _format_profile(report)
    for label, d in report["max_abs_diff"].items():
        fmt = lambda x: "non-finite" if x is None else f"{x:.2e}"  # noqa: E731
        lines.append(f"max |diff| {label}: final {fmt(d['final'])}, aged {fmt(d['aged'])}")
    return "\n".join(lines)


def _write_json(report: dict[str, Any], target: str, overwrite: bool) -> None:
    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_text_atomic(target, text, overwrite=overwrite, option="--overwrite")


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


def _device(args: argparse.Namespace):
    import torch

    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.full_size and device.type != "cuda" and args.device is None:
        raise UsageError("--full-size needs a GPU (about 9 GB of weights in fp16) and none was found; pass "
                         "--device cpu to force it anyway (slow; use --dtype bf16, about 9 GB of RAM)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available in this torch build")
    return device


def _device_name(device) -> str:
    import os
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores)"


def _prepare(model, args: argparse.Namespace):
    """Apply --resolution and the speed options; returns the face to age ([1,3,R,R], 8-bit values)."""
    import torch

    from ..runtime.acceleration import compile_unet, set_channels_last

    if args.resolution is not None:
        model.settings = dataclasses.replace(model.settings, resolution=args.resolution)
    if args.channels_last:
        set_channels_last(model)
    if args.compile_mode is not None:
        compile_unet(model, args.compile_mode, backend=args.compile_backend)
    size = model.resolution
    face = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(args.seed))
    return (face * 255).round() / 255  # the PIL input of the reference loop is then the same face


def _cmd_bench(args: argparse.Namespace) -> int:
    import diffusers
    import torch

    from ..runtime import diagnostics as M
    from ..runtime.acceleration import keep_freed_memory
    from ..runtime.batching import batch_sizes
    from ..runtime.precision import dtype_name, parse_dtype
    from ..testing.full_size import build_full_size_model
    from .bench_floor import floor_report, measure_floor

    options = parse_options(args)
    keep_freed_memory()  # the bench owns its process: no page-fault storm on the CPU (runtime.acceleration)
    if not args.debug:  # the loaders' per-file progress bars would bury the table
        import transformers

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = _device(args)
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
        face = _prepare(model, args)
        run = options.run
        policy = batch_sizes(model.pipe.vae, model.device, run.batch_size, model.resolution)
        bench = Bench(model, face, run)
        results = bench.run(options.variants, options.memory, progress)
        floor = None
        if options.floor:
            costs = measure_floor(model, run.ages, run.source_age, run.gender, run.batch_size, run.repeats,
                                  bench.clock, progress=progress,
                                  policy={"unet_pass1": policy.unet, "unet_pass2": policy.unet,
                                          "vae_encoder": policy.vae, "vae_decoder": policy.vae})
            sweep = next((r for r in results if r.name == "sweep"), None)
            floor = floor_report(costs, len(run.ages), sweep.seconds if sweep else None)
        from ..runtime.acceleration import is_channels_last, unet_compile_mode

        context = {
            "models": label, "device": str(model.device), "device_name": _device_name(model.device),
            "dtype": dtype_name(model.dtype), "component_dtypes": M.component_dtypes(model),
            "parameters": M.parameter_counts(model), "attention": M.attention_report(model),
            "resolution": model.resolution, "ages": run.ages, "source_age": run.source_age,
            "gender": run.gender, "seed": run.seed, "reference_inference": run.reference_inference,
            "batch_size": run.batch_size,
            "batch_sizes": dataclasses.asdict(policy), "repeats": run.repeats, "warmup": run.warmup,
            "clock": bench.clock.kind, "torch_threads": torch.get_num_threads(),
            "compile": unet_compile_mode(model), "channels_last": is_channels_last(model.pipe.unet),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "load_s": load_s,
            "process_peak_rss_mib": peak_after_load,
        }
        report = make_report(results, context, bench.differences(), floor)
    print(format_table(report), file=table_out, flush=True)
    if args.json_path is not None:
        _write_json(report, args.json_path, args.overwrite)
    return 0
