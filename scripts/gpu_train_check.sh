#!/usr/bin/env bash
# GPU correctness after scripts/gpu_check.sh (which installs .whl/ into $SITE): real training runs on
# the GPU with the shipped presets, each short, each printing its metrics.json summary:
#   - trainer=gpu (bf16-mixed, channels-last, cuDNN autotuning) on the default binary task, and the
#     same run in fp32 (trainer.precision=32-true): both must learn, to about the same IoU;
#   - the 3D U-Net under trainer=gpu (channels_last_3d weights);
#   - trainer=ddp on the GPUs there are (NCCL), and a DDP job's test metrics against one process
#     evaluating its checkpoint (exact: integer counts).
#     bash scripts/gpu_train_check.sh          # after scripts/gpu_check.sh; logs in $OUT/train_*.log
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs}
PY=${PY:-python3}
SITE=${SITE:-/tmp/site}
export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=offline
RUNS=$OUT/train_runs
mkdir -p "$RUNS"

train() {  # name, overrides...
  local name=$1; shift
  local started=$SECONDS
  timeout -k 10 150 "$PY" -m segsweep.train logger=csv "hydra.run.dir=$RUNS/$name" "$@" > "$OUT/train_$name.log" 2>&1
  echo "== $name: exit $? in $((SECONDS - started)) s"
  summary "$RUNS/$name"
}

summary() {
  "$PY" - "$1" <<'EOF'
import json, sys
try:
    m = json.load(open(sys.argv[1] + "/metrics.json"))
except Exception as err:
    print(f"   no metrics.json: {err}"); sys.exit()
keys = [k for k in ("val/iou", "val/dice", "test/iou", "test/dice") if k in (m.get("final") or {})]
print(f"   status {m.get('status')}, epochs {m.get('epochs')}, {m.get('images_per_second') or 0:.0f} img/s, "
      f"peak {m.get('peak_memory_mb') or 0:.0f} MiB, " + ", ".join(f"{k} {m['final'][k]:.4f}" for k in keys)
      + (f"; error: {m.get('error')}" if m.get("error") else ""))
EOF
}

train gpu_bf16 trainer=gpu
train gpu_fp32 trainer=gpu trainer.precision=32-true
train gpu_3d experiment=synthetic3d trainer=gpu trainer.max_epochs=4
train ddp_cuda trainer=ddp trainer.max_epochs=4
best=$(ls "$RUNS"/ddp_cuda/checkpoints/epoch*.ckpt 2>/dev/null | head -n 1)
if [ -n "$best" ]; then
  timeout -k 10 120 "$PY" -m segsweep.eval trainer=gpu logger=csv "ckpt_path='$best'" \
    split=test "hydra.run.dir=$RUNS/ddp_cuda_eval" > "$OUT/train_ddp_cuda_eval.log" 2>&1
  echo "== one-process eval of the DDP checkpoint (exit $?)"
  summary "$RUNS/ddp_cuda_eval"
fi
grep -h -m3 -i "error\|Traceback" "$OUT"/train_*.log | head -n 20
