#!/usr/bin/env bash
# One-shot GPU benchmark: full-size random SDXL-Turbo-shaped weights in fp16, no download, < 8 minutes.
#
#   OUT=/some/folder bash scripts/gpu_bench.sh
#
# Steps (each `cradle2cane bench`, 20 target ages, 3 repeats after 1 warm-up, medians, CUDA-synchronised
# wall time), in order of importance; a step that would overrun the time budget is skipped:
#   eager       sweep, per-age calls, reference loop, single image; the floor and the sweep's efficiency
#   offload     sweep and single image under model CPU offload (peak VRAM)
#   compiled    sweep and single image, UNet under torch.compile (default mode) + channels-last
#   cudagraphs  the same with mode reduce-overhead (CUDA graphs)
#   profile     one sweep split by module (synchronises around each module, so timed apart)
# Writes $OUT/gpu_bench.json (environment, every step's report, a summary against the targets) and,
# per step, steps/<step>.txt (the table) and steps/<step>.log (stderr). Default OUT: ./gpu-bench-out.
#
# Environment: PYTHON (default python), GPU_BENCH_BUDGET_S (default 450: the whole run, seconds),
# GPU_BENCH_STEPS (default all, e.g. eager,compiled), GPU_BENCH_INSTALL=0 (use the package as it is),
# GPU_BENCH_DRY_RUN=1 (check this script on a CPU in about a minute: tiny model set, 2 ages,
# 1 repeat, the compile steps with torch.compile's eager backend; no install).
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-bench-out}"
PYTHON="${PYTHON:-python}"
BUDGET_S="${GPU_BENCH_BUDGET_S:-450}"
STEPS="${GPU_BENCH_STEPS:-eager,offload,compiled,cudagraphs,profile}"
DRY_RUN="${GPU_BENCH_DRY_RUN:-0}"
rm -rf "$OUT/steps"  # this script's own folder: no step of an earlier run may leak into this one's JSON
mkdir -p "$OUT/steps"
log() { echo "[gpu_bench $(date +%H:%M:%S)] $*" | tee -a "$OUT/gpu_bench.log" >&2; }

# 1. install: without network when the dependencies already import (the machine may be offline).
if [ "$DRY_RUN" = "1" ] || [ "${GPU_BENCH_INSTALL:-1}" = "0" ]; then
    log "using the package as installed"
elif "$PYTHON" -c "import diffusers, transformers, peft, accelerate, safetensors, yaml" 2>/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-build-isolation --no-deps -e . >"$OUT/pip.log" 2>&1 \
        || { log "editable install failed; using PYTHONPATH=$PWD"; export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"; }
else
    "$PYTHON" -m pip install -q --timeout 15 --retries 1 -e . >"$OUT/pip.log" 2>&1 \
        || { log "pip install -e . failed (offline?); using PYTHONPATH=$PWD"; export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"; }
fi
"$PYTHON" -c "import sys, torch, diffusers, transformers, peft, cradle2cane.tools.bench
sys.exit(0 if torch.cuda.is_available() else 10)" 2>>"$OUT/gpu_bench.log"
found=$?
if [ "$found" -ne 0 ] && [ "$found" -ne 10 ]; then
    log "missing Python packages (see $OUT/gpu_bench.log); stopping"
    exit 3
fi

# 2. what to run
COMMON=(--ages 20 --repeats 3 --warmup 1)
MODEL=(--full-size --dtype fp16)
BACKEND=inductor
if [ "$DRY_RUN" = "1" ]; then
    log "dry run: tiny model set on the CPU"
    COMMON=(--ages 2 --repeats 1 --warmup 0 --threads 1)
    MODEL=(--device cpu)
    BACKEND=eager
elif [ "$found" -eq 10 ]; then
    log "no CUDA device visible; stopping (GPU_BENCH_DRY_RUN=1 checks the script on a CPU)"
    exit 4
fi

# 3. the steps: name, time limit (s), bench arguments
START=$SECONDS
status=0
step() {
    local name=$1 limit=$2
    shift 2
    case ",$STEPS," in *",$name,"*) ;; *) return 0 ;; esac
    local left=$((BUDGET_S - (SECONDS - START)))
    if [ "$left" -lt 30 ]; then
        log "$name: skipped, ${left}s of the ${BUDGET_S}s budget left"
        echo "skipped: time budget" >"$OUT/steps/$name.status"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    log "$name: up to ${limit}s"
    timeout "$limit" "$PYTHON" -m cradle2cane bench "${MODEL[@]}" "${COMMON[@]}" "$@" \
        --json "$OUT/steps/$name.json" --overwrite >"$OUT/steps/$name.txt" 2>"$OUT/steps/$name.log"
    local rc=$?
    echo "exit $rc" >"$OUT/steps/$name.status"
    if [ "$rc" -ne 0 ]; then
        status=1
        log "$name failed (exit $rc; 124 = time limit), see steps/$name.log"
    fi
    cat "$OUT/steps/$name.txt" >&2
}
step eager 150 --variants sweep,per-age,reference,single
step offload 60 --variants sweep,single --memory offload --no-floor
step compiled 180 --variants sweep,single --no-floor --channels-last --compile default --compile-backend "$BACKEND"
step cudagraphs 150 --variants sweep,single --no-floor --channels-last --compile reduce-overhead \
    --compile-backend "$BACKEND"
step profile 60 --variants sweep --no-floor --profile --repeats 1

# 4. one JSON: environment, every step, the summary against the targets in docs/performance.md
"$PYTHON" - "$OUT" "$DRY_RUN" <<'EOF' || { status=1; log "could not write gpu_bench.json"; }
import json, platform, sys
from pathlib import Path

import torch

out, dry_run = Path(sys.argv[1]), sys.argv[2] == "1"
steps = {}
for status_file in sorted((out / "steps").glob("*.status")):
    name = status_file.stem
    report = out / "steps" / f"{name}.json"
    steps[name] = {"status": status_file.read_text().strip(),
                   "report": json.loads(report.read_text()) if report.is_file() else None}

def per_image(step, variant):
    report = (steps.get(step) or {}).get("report") or {}
    v = report.get("variants", {}).get(variant)
    return v["per_image_s_median"] if v else None

def peak_mib(step, variant):
    report = (steps.get(step) or {}).get("report") or {}
    v = report.get("variants", {}).get(variant)
    return v["peak_mib"] if v else None

device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
eager = (steps.get("eager") or {}).get("report") or {}
summary = {
    "device": device,
    "sweep_s_per_image": {s: per_image(s, "sweep") for s in ("eager", "compiled", "cudagraphs")},
    "single_image_s": {s: per_image(s, "single") for s in ("eager", "compiled", "cudagraphs")},
    "per_image_ratios": eager.get("per_image_ratios"),
    "sweep_efficiency": (eager.get("floor") or {}).get("sweep_efficiency"),
    "peak_mib": {"sweep": peak_mib("eager", "sweep"), "sweep+offload": peak_mib("offload", "sweep+offload"),
                 "single+offload": peak_mib("offload", "single+offload")},
}
# The targets of docs/performance.md (512 px, fp16, 20 ages); checked only on the GPUs they name.
targets = {"H100": {"sweep_eager_s": 0.060, "sweep_compiled_s": 0.050, "single_s": 0.15, "offload_peak_mib": 8192},
           "A100": {"sweep_eager_s": 0.100}}
met = {}
for gpu, t in targets.items():
    if gpu not in device:
        continue
    checks = {"sweep_eager_s": per_image("eager", "sweep"), "sweep_compiled_s": per_image("compiled", "sweep"),
              "single_s": per_image("eager", "single"), "offload_peak_mib": peak_mib("offload", "sweep+offload")}
    met = {k: (None if checks[k] is None else checks[k] <= limit) for k, limit in t.items()}
summary["targets"] = {"values": targets, "met_on_this_device": met or None}
result = {"dry_run": dry_run, "python": platform.python_version(), "torch": torch.__version__,
          "cuda": torch.version.cuda, "device": device, "summary": summary, "steps": steps}
(out / "gpu_bench.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(summary, indent=2))
EOF
log "done (status $status) in $((SECONDS - START))s; results in $OUT/gpu_bench.json"
exit $status
