#!/usr/bin/env bash
# The CUDA paths, checked in one run on a GPU machine (CI has none, so this is not a test).
#
#   bash bench/gpu_check.sh OUTDIR [SECONDS]
#
# 1. the environment (GPU, torch, onnxruntime providers);
# 2. training smoke runs on the GPU: the particle model in 16-mixed and bf16-mixed, DDP with
#    NCCL, the README's GPU example (its test, skipped without a GPU), and the detector;
# 3. the default experiment for 3 epochs (timed), then `infer.py backend=torch` with that
#    checkpoint on device=cuda and on device=cpu, compared particle by particle;
# 4. the default experiment again, for as many epochs as fit in what is left of SECONDS
#    (default 480) counted from the start; its best and last checkpoints are written to OUTDIR
#    without optimizer state, weights in float16, split into parts under 16 MB
#    (`cat OUTDIR/last.ckpt.part-* > last.ckpt`; cast the weights back to float32).
#
# Checking the script itself on a CPU, on a small set:
#   ACCEL=cpu DEVICE=cpu EXTRA="data.synth.n_crops=40 data.synth.n_field_particles=0" bash bench/gpu_check.sh /tmp/x 200
set -uo pipefail
out=${1:?usage: bash bench/gpu_check.sh OUTDIR [SECONDS]}
budget=${2:-480}
accel=${ACCEL:-gpu}
device=${DEVICE:-cuda}
workers=${WORKERS:-8}
py=${PYTHON:-python3}
read -r -a extra <<<"${EXTRA:-}"   # overrides added to every experiment=default run
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=${WORK:-/tmp/fracscope_gpu_check}
mkdir -p "$work"
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
start=$(date +%s)
log="$out/gpu_check.log"
status=0

step() {  # step NAME CMD...: run, log, time, keep going on failure
  local name=$1; shift
  local t0=$(date +%s)
  echo "=== $name: $*" | tee -a "$log"
  "$@" >>"$log" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc in $(( $(date +%s) - t0 )) s" | tee -a "$log"
  [ $rc -eq 0 ] || status=1
  return $rc
}

train() { "$py" train.py trainer.accelerator="$accel" trainer.enable_progress_bar=false logger=csv "$@"; }

step env "$py" - <<'EOF'
import torch, onnxruntime as ort, lightning
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0))
print("lightning", lightning.__version__, "onnxruntime", ort.__version__, ort.get_available_providers())
EOF

# The default experiment's synthetic set, generated and cached before anything is timed.
step prepare_data "$py" - <<'EOF2'
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
import os
with initialize_config_dir(config_dir=os.path.abspath("conf"), version_base="1.3"):
    cfg = compose("train", overrides=["experiment=default", *os.environ.get("EXTRA", "").split()])
dm = instantiate(cfg.data)
dm.prepare_data()
dm.setup("fit")
print(dm.synth_dir(), "train", len(dm.train_dataset()), "val", len(dm.val_dataset()))
EOF2

if [ "$accel" = gpu ]; then
  step smoke_fp16 train experiment=smoke trainer.precision=16-mixed paths.output_dir="$work/smoke16"
  step smoke_bf16 train experiment=smoke trainer.precision=bf16-mixed paths.output_dir="$work/smokebf16"
  step smoke_ddp_nccl train experiment=smoke trainer=ddp trainer.accelerator=gpu trainer.devices=1 \
    trainer.strategy.process_group_backend=nccl paths.output_dir="$work/smokeddp"
  step readme_gpu_line "$py" -m pytest -q -p no:cacheprovider "tests/test_readme_overrides.py::test_readme_line_runs[10]"
  step smoke_detector train experiment=detector_smoke trainer.precision=bf16-mixed paths.output_dir="$work/smokedet"
fi

# The default experiment for 3 epochs: its time sets the long run's epochs, its checkpoint
# drives the inference comparison.
t0=$(date +%s)
step default_3ep train experiment=default "${extra[@]}" trainer.max_epochs=3 data.loader.num_workers="$workers" \
  paths.output_dir="$work/default3"
t3=$(( $(date +%s) - t0 ))
ckpt3=$(ls "$work"/default3/checkpoints/last.ckpt 2>/dev/null)

if [ -n "$ckpt3" ]; then
  step infer_torch_$device "$py" infer.py backend=torch device="$device" model_path="$ckpt3" output="$work/infer_$device"
  step infer_torch_cpu_ref "$py" infer.py backend=torch device=cpu model_path="$ckpt3" output="$work/infer_cpu_ref"
  step compare_infer "$py" - "$work/infer_$device" "$work/infer_cpu_ref" <<'EOF'
import sys
import pandas as pd
a, b = (pd.read_csv(f"{d}/particles.csv") for d in sys.argv[1:3])
key = ["image", "page", "particle_id"]
m = a.merge(b, on=key, suffixes=("_gpu", "_cpu"))
print(f"particles: gpu {len(a)}, cpu {len(b)}, matched {len(m)}")
print(f"class agreement: {(m.class_gpu == m.class_cpu).mean():.4f}")
for col in ("p_intact", "p_mildly_damaged", "p_broken", "porosity_pct", "crack_pct"):
    if f"{col}_gpu" in m:
        d = (m[f"{col}_gpu"] - m[f"{col}_cpu"]).abs()
        print(f"{col}: max |gpu - cpu| {d.max():.4g}, mean {d.mean():.3g}")
EOF
fi

# The long run: as many epochs as fit, one-cycle annealed to the end (max_epochs is the plan,
# not max_time), early stopping off.
# Seconds per epoch from the 3-epoch run's Lightning Timer (its whole run, startup included, took t3).
per_epoch=$("$py" -c "import sys, torch; t = torch.load(sys.argv[1], map_location='cpu', weights_only=True)['callbacks']['Timer']['time_elapsed']; print(max(1, round((t['train'] + t['validate']) / 3 * 1.15)))" "$ckpt3" 2>/dev/null || echo "$t3")
startup=$(( t3 - 3 * per_epoch > 10 ? t3 - 3 * per_epoch : 10 ))
left=$(( budget - ($(date +%s) - start) - 40 - startup ))
epochs=$(( left / per_epoch ))
[ $epochs -gt 150 ] && epochs=150
echo "=== long run: ${left} s left after ${startup} s startup, ~${per_epoch} s per epoch -> ${epochs} epochs" | tee -a "$log"
if [ $epochs -ge 6 ]; then
  step default_long train experiment=default "${extra[@]}" trainer.max_epochs=$epochs trainer.max_time=null \
    callbacks.early_stopping.patience=$epochs data.loader.num_workers="$workers" paths.output_dir="$work/default_long"
  cp "$work"/default_long/metrics.csv "$out/metrics_long.csv"   # logger=csv writes it there
  for ckpt in $(ls "$work"/default_long/checkpoints/best-epoch*.ckpt "$work"/default_long/checkpoints/last.ckpt 2>/dev/null); do
    name=$(basename "$ckpt" .ckpt)
    name=${name%%-epoch*}   # best | last
    step strip_$name "$py" - "$ckpt" "$work/$name.ckpt" <<'EOF'
import sys, torch
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
for k in ("optimizer_states", "lr_schedulers", "loops", "callbacks"):
    ckpt.pop(k, None)
# float16 for the trip back (files come back in parts under 16 MB); cast back to float32 on arrival.
ckpt["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
torch.save(ckpt, sys.argv[2])
print(sys.argv[1], "epoch", ckpt.get("epoch"))
EOF
    split -b 15M "$work/$name.ckpt" "$out/$name.ckpt.part-"
    echo "$name: $(basename "$ckpt")" >> "$out/checkpoints.txt"
  done
fi
echo "=== done in $(( $(date +%s) - start )) s, status $status" | tee -a "$log"
exit $status
