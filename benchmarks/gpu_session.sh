#!/usr/bin/env bash
# Everything issue 5 measures on a GPU, in one call: session.log and JSON/PNG files under $OUT
# (six files: the device tool brings back at most eight).
#
# Prepare here (once, from the project root):
#   ../shared/tools/gpu-wheels.sh                       # pyro-ppl, arviz, ... into .whl/
#   grep -qx '/.data/' .git/info/exclude || echo '/.data/' >> .git/info/exclude
#   mkdir -p .data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz .data/fashion-mnist/
# Then run on the device machine, carrying .whl and .data:
#   bash benchmarks/gpu_session.sh
# Environment: DEVICE (cuda), PEAK_TFLOPS (the fp32 peak recorded beside the achieved rate;
# H100 SXM about 67 without TF32), QUICK=1 for the short versions, SKIP_WHEELS=1 where
# pyro-ppl and arviz are installed already. Exits non-zero if any step fails.
set -uo pipefail
out=${OUT:-gpu-out}
device=${DEVICE:-cuda}
quick=${QUICK:+--quick}
mkdir -p "$out"
if [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYRO_VAE_DATA=${PYRO_VAE_DATA:-$PWD/.data} PYTHONUNBUFFERED=1
status=0
log="$out/session.log"
step() {  # step NAME COMMAND...: run, append to session.log, remember a failure
  local name=$1
  shift
  echo "== $name: $*" | tee -a "$log"
  "$@" 2>&1 | tee -a "$log" | tail -25
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc" | tee -a "$log"
  [ "$rc" -eq 0 ] || status=1
}
{ nvidia-smi 2>/dev/null || true; python3 -c 'import torch, pyro; print(torch.__version__, pyro.__version__, torch.cuda.is_available())'; } 2>&1 | tee "$log"
# the whole fast suite; on a GPU the CUDA tests run (-rs lists any skip)
step tests python3 -m pytest -q -p no:cacheprovider -rs
step bench python3 benchmarks/bench.py --device "$device" $quick \
  ${PEAK_TFLOPS:+--peak-tflops "$PEAK_TFLOPS"} --json "$out/bench_$device.json"
step scaling python3 benchmarks/scaling.py --device "$device" $quick \
  --json "$out/scaling_$device.json" --png "$out/scaling_$device.png"
step alternatives python3 benchmarks/alternatives.py --device "$device" \
  --json "$out/alternatives_$device.json"
# the workflow checks on the device (their CUDA paths have not run anywhere else)
step check bash -c "python3 -m pyro_vae train --device $device --epochs 5 --no-progress \
  --out /tmp/gpu-check-run && python3 -m pyro_vae check /tmp/gpu-check-run --no-progress"
# conv against MLP at equal wall-clock on the device (issue 15's target; the CPU's answer is in
# docs/results.md): EQUAL_SECONDS of training each, scored with K = 100 on 2000 test images
step equal_time python3 experiments/equal_time.py --dataset fashion-mnist --device "$device" \
  --seconds "${EQUAL_SECONDS:-45}" --latent-dim 16 --hidden 512,512 --conv-hidden 512 --conv-channels 32,64 16,32 \
  --test-points 2000 --out /tmp/gpu-equal-time
cp /tmp/gpu-equal-time/equal_time.png "$out/equal_time_$device.png" 2>/dev/null || true
exit $status
