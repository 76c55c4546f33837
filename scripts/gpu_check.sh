#!/usr/bin/env bash
# The GPU check on the lent GPU machine (no network; torch, lightning, timm ... installed, Hydra, smp,
# albumentations and the rest carried in .whl/, made by scripts/gpu_wheels.sh). From the repo root:
#
#     bash scripts/gpu_check.sh                 # writes $OUT/gpu_check.json and $OUT/gpu_check.log
#     bash scripts/gpu_check.sh --parts overhead,data --budget 150   # a rerun of some parts
#
# segsweep is not installed there: it imports from src/ (PYTHONPATH), the configs through the package
# segsweep.conf (src/segsweep/conf, a symlink to conf/). The check's own output goes to the log (no pipe
# that a leftover worker could hold open); its tail and the table come last here, even if the check was
# killed at its time limit (the table is then made from the JSON, written after each part).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs}
PY=${PY:-python3}
SITE=${SITE:-/tmp/site}
BUDGET=${BUDGET:-400}  # seconds for the parts: the whole script stays under ~8 minutes
LOG=$OUT/gpu_check.log
mkdir -p "$OUT"

echo "== install .whl/ into $SITE"
rm -rf "$SITE"
if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl; then
  echo "pip failed: unpacking the wheels instead"  # wheels are zip files; none of these needs a build step
  "$PY" -c "import glob, sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in glob.glob('.whl/*.whl')]" "$SITE"
fi
export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true
if [ ! -f src/segsweep/conf/train.yaml ]; then  # the copy lost the symlink: make it again
  echo "src/segsweep/conf lacks the configs: linking it to conf/"
  rm -rf src/segsweep/conf && ln -s ../../conf src/segsweep/conf
fi

echo "== the machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "CPUs: $(nproc); C compiler (Triton builds its launcher with it): $(command -v cc || command -v gcc || echo none)"
"$PY" - <<'EOF'
import importlib, sys
import torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA available {torch.cuda.is_available()}")
for name in ["lightning", "torchmetrics", "hydra", "omegaconf", "segmentation_models_pytorch", "albumentations",
             "pydantic", "pycocotools", "optuna", "timm", "cv2", "numpy", "triton", "segsweep.train", "segsweep.conf"]:
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '')} {getattr(module, '__file__', '')}")
    except Exception as err:  # the check still runs: the parts that need it will say
        print(f"  {name}: NOT IMPORTABLE: {type(err).__name__}: {err}")
EOF

echo "== scripts/gpu_check.py (log: $LOG)"
timeout -k 15 $((BUDGET + 90)) "$PY" scripts/gpu_check.py --out "$OUT/gpu_check.json" --budget "$BUDGET" "$@" \
  > "$LOG" 2>&1 < /dev/null
status=$?
grep "^\[gpu_check\]" "$LOG"
echo "== the log's last lines (exit status $status)"
tail -n 40 "$LOG"
if [ $status -ne 0 ] && [ -f "$OUT/gpu_check.json" ]; then
  echo "== the parts it finished"
  "$PY" scripts/gpu_check.py --table "$OUT/gpu_check.json"
fi
exit $status
