#!/usr/bin/env bash
# The three benchmarks at accelerator sizes, in one go (under 10 minutes on one GPU or TPU):
#
#   bash experiments/accelerator_check.sh [OUT_DIR]
#
# OUT_DIR (default $OUT, else ./accelerator_check_out) receives every output: devices.txt
# first (nvidia-smi, jax.devices()), then per benchmark NAME.txt (its table) and NAME.log (its
# stderr): step_efficiency, scale_benchmark, episode_run (a smoke-world run trained here,
# which episode_benchmark reads) and episode_benchmark; status.txt has each one's seconds and
# exit status. Each runs under a time limit that keeps the total under 10 minutes; one that
# fails or runs out of time does not stop the others, and the script then exits 1.
# Assumes only the repository (the venv is installed with `make install` when missing).
# QUICK=1 shrinks every size and limit (a check of the script itself on a CPU).
set -euo pipefail

cd "$(dirname "$0")/.."
out="${1:-${OUT:-./accelerator_check_out}}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
[[ -x .venv/bin/python ]] || make install
py=.venv/bin/python

if [[ "${QUICK:-0}" == 1 ]]; then
  step_args=(--config=configs/synthetic.py:smoke --steps=2 --matmul_n=512 --profile_steps=1)
  scale_args=(--sizes=1000,100000 --queries=128 --batch=64 --repeats=1)
  world=(--config.data.synthetic.test_videos=128)
  episode_args=(--queries=128 --batch=64 --per_query=4)
  limits=(600 600 600 600)
else
  # The default config's real step sizes and its whole 12,000-video train split; a matmul
  # large enough to reach the chip's peak.
  step_args=(--config=configs/synthetic.py --train_videos=0 --steps=20 --matmul_n=8192)
  # 1e4 to 1e6 videos (1e4 -> 1e6 is the 100x check) at the :smoke dims: 1e6 takes ~8 GB of
  # host memory and 4 GB on the device.
  scale_args=(--sizes=10000,100000,1000000 --queries=512 --batch=256 --repeats=2)
  world=(--config.data.synthetic.test_videos=2000)
  episode_args=(--queries=1024 --batch=256 --per_query=64)
  limits=(220 200 90 60)
fi

failed=0
run() {   # run NAME LIMIT COMMAND...: stdout to NAME.txt, stderr to NAME.log
  local name=$1 limit=$2 start=$SECONDS status=0
  shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" > "$out/$name.txt" 2> "$out/$name.log" || status=$?
  echo "$name: $((SECONDS - start)) s, exit $status" | tee -a "$out/status.txt"
  if (( status )); then
    failed=1
    tail -n 5 "$out/$name.log"
  fi
}

{
  date -u
  git rev-parse HEAD 2>/dev/null || true
  nvidia-smi 2>&1 || echo "(no nvidia-smi)"
  $py -c 'import jax; print(jax.__version__, jax.default_backend(), jax.devices())'
} > "$out/devices.txt" 2>&1
cat "$out/devices.txt"
: > "$out/status.txt"

run step_efficiency "${limits[0]}" $py experiments/step_efficiency.py "${step_args[@]}"
run scale_benchmark "${limits[1]}" $py experiments/scale_benchmark.py "${scale_args[@]}"
# episode_benchmark reads a trained run: the smoke world (seconds to train) with a test split
# large enough for its batches; its stage-1 agent (the same network, so the same episode cost
# as stage 2's, without GRPO's compile and training), evaluated on the engine row alone.
rows="{'engine_single_shot': {'kind': 'engine', 'stage': 'engine', 'turns': 0, 'refine': ''}}"
run episode_run "${limits[2]}" $py -m vsr_jax.main --config=configs/synthetic.py:smoke \
  --workdir="$out/episode_run" "${world[@]}" --config.stages="('engine', 'sft')" \
  --config.eval.rows="$rows"
run episode_benchmark "${limits[3]}" $py experiments/episode_benchmark.py \
  --workdir="$out/episode_run" --stage=sft "${episode_args[@]}"

for name in step_efficiency scale_benchmark episode_benchmark; do
  echo "== $name"
  cat "$out/$name.txt"
done
cat "$out/status.txt"
exit "$failed"
