#!/usr/bin/env bash
# One-shot GPU benchmark for a machine with a CUDA GPU and torch already installed (< 8 minutes).
#
#   OUT=/some/folder bash scripts/gpu_bench.sh
#
# Writes into $OUT (default ./gpu-bench-out):
#   env.txt              GPU, driver, python / torch / diffusers versions
#   bench.json/.txt      full-size random SDXL-Turbo-shaped weights, fp16: the reference-style
#                        per-age loop vs the one-call sweep, 20 ages, 3 repeats
#   single.json/.txt     one image, both passes: default vs model CPU offload vs low-VRAM
#                        (time and peak VRAM = torch.cuda.max_memory_allocated)
#   summary.json         the headline numbers of both
#   *.log                stderr of each step
# No download: the weights are random, built from the configs in cradle2cane/loading/configs/sdxl-turbo.
# GPU_BENCH_DRY_RUN=1 checks the script on a CPU with the tiny model set (3 ages, 1 repeat).
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-bench-out}"
mkdir -p "$OUT"
log() { echo "[gpu_bench $(date +%H:%M:%S)] $*" | tee -a "$OUT/gpu_bench.log" >&2; }

# 1. install. When the bench's dependencies are already importable, install without touching
#    the network (the machine may be offline, and insightface would need a compiler); otherwise
#    a normal pip install -e . with short timeouts. PYTHONPATH is the last resort.
log "installing the package"
if python -c "import diffusers, transformers, peft, accelerate, safetensors, yaml" 2>/dev/null; then
    pip install -q --no-index --no-build-isolation --no-deps -e . >"$OUT/pip.log" 2>&1 \
        || { log "editable install failed; using PYTHONPATH=$PWD"; export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"; }
else
    pip install -q --timeout 15 --retries 1 -e . >"$OUT/pip.log" 2>&1 \
        || { log "pip install -e . failed (offline?); using PYTHONPATH=$PWD"; export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"; }
fi
if ! python -c "import torch, diffusers, transformers, peft, cradle2cane.tools.bench" 2>>"$OUT/pip.log"; then
    log "missing Python packages (see $OUT/pip.log); stopping"
    exit 3
fi

# 2. environment
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
    python - <<'EOF'
import platform, torch, diffusers, transformers
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| diffusers", diffusers.__version__, "| transformers", transformers.__version__)
print("cuda available:", torch.cuda.is_available(),
      "| device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
EOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >&2
MODEL_ARGS=(--full-size --dtype fp16)
AGES=20
REPEATS=3
if [ "${GPU_BENCH_DRY_RUN:-0}" = "1" ]; then
    log "dry run: tiny model set on $(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')"
    MODEL_ARGS=()
    AGES=3
    REPEATS=1
elif ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    log "no CUDA device visible; stopping"
    exit 4
fi

status=0
# 3. sequential (reference-style) vs one-call sweep, 20 ages, fp16
log "bench: sequential vs sweep ($AGES ages, $REPEATS repeats)"
timeout 300 python -m cradle2cane bench "${MODEL_ARGS[@]}" --ages "$AGES" --repeats "$REPEATS" --warmup 1 \
    --json "$OUT/bench.json" >"$OUT/bench.txt" 2>"$OUT/bench.log" || { status=$?; log "bench failed ($status), see bench.log"; }
cat "$OUT/bench.txt" >&2

# 4. one image, both passes: time and peak VRAM without and with model CPU offload / low-VRAM
log "bench: single image, default vs offload vs low-vram"
timeout 150 python -m cradle2cane bench "${MODEL_ARGS[@]}" --variants single --ages 1 \
    --memory default,offload,low-vram --repeats "$REPEATS" --warmup 1 \
    --json "$OUT/single.json" >"$OUT/single.txt" 2>"$OUT/single.log" || { status=$?; log "single failed ($status), see single.log"; }
cat "$OUT/single.txt" >&2

# 5. summary
python - "$OUT" <<'EOF' >"$OUT/summary.json" 2>>"$OUT/gpu_bench.log" || true
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = {}
for name in ("bench", "single"):
    path = out / f"{name}.json"
    if not path.is_file():
        summary[name] = None
        continue
    report = json.loads(path.read_text())
    summary[name] = {
        "device": report["device_name"], "dtype": report["dtype"], "ages": len(report["ages"]),
        "speedup_sequential_over_sweep": report["speedup_sequential_over_sweep"],
        "per_image_s": {k: v["per_image_s_median"] for k, v in report["variants"].items()},
        "peak_mib": {k: v["peak_mib"] for k, v in report["variants"].items()},
        "peak_kind": next(iter(report["variants"].values()))["peak_kind"],
        "max_abs_diff": report["max_abs_diff"],
    }
print(json.dumps(summary, indent=2))
EOF
cat "$OUT/summary.json" >&2
log "done (status $status); results in $OUT"
exit $status
