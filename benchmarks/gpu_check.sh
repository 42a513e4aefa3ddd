#!/usr/bin/env bash
# The first GPU session's checks, in one script of at most ~8 minutes.
#
# A lent GPU machine has no network, and its Python has jax (CUDA), flax, optax,
# orbax and torch but neither tensorflow-datasets, TensorFlow nor ml_collections. So:
#
# 1. Here, with the data prepared (MNIST_JAX_MANUAL_DIR set, or a tfds dir holding
#    mnist), build what travels with the working tree (~15 MB, git-ignored):
#        bash benchmarks/gpu_check.sh --prepare [TFDS_DIR]
#    -> benchmarks/gpu_carry/tfds/mnist/  the splits as mnist_jax's array cache (read
#                                         without tfds or TensorFlow)
#       benchmarks/gpu_carry/wheels/      ml_collections, pytest and what they need
# 2. There (or here first, on the CPU: JAX_PLATFORMS=cpu ... --simulate hides tfds,
#    TensorFlow and the installed ml_collections as the device lacks them):
#        OUT=/some/folder bash benchmarks/gpu_check.sh
#    -> $OUT/gpu_check/: env.txt, steps.txt, one log per step (NAME.txt), the
#       benchmarks' JSON, summary.txt (examples/s and accuracies, one line each).
#
# Steps (each under its own time limit; a failed step is recorded, the rest go on):
# the model, train-step and cuDNN LSTM tests on the device; the benchmark against
# PyTorch (cuDNN on a GPU) for the seed RNN, GRU and pixel LSTM; the seed LSTM as our
# scan, as cuDNN through JAX and as PyTorch's cuDNN LSTM (lstm_impls; off a CUDA GPU
# the cuDNN row is skipped with its reason); the seed LSTM in float32 and bfloat16
# (lstm_dtypes); one full seed_lstm.py run; a few hundred steps of the pixel LRU and
# the pixel LayerNorm LSTM. The whole script keeps to BUDGET seconds (x SCALE): a step
# gets at most what is left of it, and is skipped (and recorded) when nothing is.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
CARRY=$REPO/benchmarks/gpu_carry
PY=${PYTHON:-python3}  # The device's python3 (3.12) holds jax, torch and flax.

if [[ "${1:-}" == "--prepare" ]]; then
  set -e
  rm -rf "$CARRY" && mkdir -p "$CARRY/wheels"
  CARRY=$CARRY $PY - "${2:-}" <<'PY'
import os, sys, shutil, numpy as np
from mnist_jax import config as config_lib, data
cfg = config_lib.get_config()
if sys.argv[1]:
    cfg.data.tfds_dir = sys.argv[1]
cfg = config_lib.resolve(cfg)
data.load_splits(cfg)  # Prepares the dataset and writes the array cache if needed.
from mnist_jax import datasets
root = datasets._tfds_dataset_root("mnist", cfg.data.tfds_dir)
dest = os.path.join(os.environ["CARRY"], "tfds", "mnist")
with np.load(os.path.join(root, "mnist_jax_arrays.npz")) as f:
    arrays = {k: f[k] for k in f.files}
version = str(arrays["source_version"])
os.makedirs(os.path.join(dest, version))
shutil.copy(os.path.join(root, version, "dataset_info.json"),
            os.path.join(dest, version, "dataset_info.json"))
np.savez_compressed(os.path.join(dest, "mnist_jax_arrays.npz"), **arrays)
print("array cache:", os.path.getsize(os.path.join(dest, "mnist_jax_arrays.npz")), "bytes")
PY
  # For the device's CPython 3.12 on x86-64, whatever Python runs here: wheels only,
  # pure ones (py3-none-any) or built for cp312 on manylinux.
  $PY -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 --platform manylinux2014_x86_64 \
    --platform manylinux_2_28_x86_64 -d "$CARRY/wheels" ml_collections pytest pluggy \
    pygments iniconfig packaging tqdm
  foreign=$(ls "$CARRY/wheels" | grep -v -e '-none-any\.whl$' -e '-cp312-' || true)
  if [[ -n "$foreign" ]]; then
    echo "not for the device's Python 3.12: $foreign" >&2; exit 1
  fi
  du -sh "$CARRY"
  exit 0
fi

OUT=${OUT:-/tmp}/gpu_check
mkdir -p "$OUT"
SITE=$(mktemp -d)
$PY -m pip install --quiet --no-index --no-deps --target "$SITE" "$CARRY"/wheels/*.whl
PYPATH="$SITE:$REPO"
if [[ "${1:-}" == "--simulate" ]]; then  # As on the device: no tfds, TensorFlow.
  BLOCK=$(mktemp -d)
  for pkg in tensorflow_datasets tensorflow; do
    mkdir -p "$BLOCK/$pkg"
    echo "raise ImportError('$pkg is not installed on the GPU machine')" \
      > "$BLOCK/$pkg/__init__.py"
  done
  PYPATH="$SITE:$BLOCK:$REPO"
fi
export PYTHONPATH=$PYPATH MNIST_JAX_COMPILATION_CACHE=$OUT/jax_cache
if nvidia-smi -L >/dev/null 2>&1; then
  TORCH_DEVICE=cuda; PIXEL_EXAMPLES=15000  # 300 steps of batch 50.
else
  TORCH_DEVICE=cpu; PIXEL_EXAMPLES=1000   # The CPU rehearsal: 20 steps.
fi
DATA="--config.data.tfds_dir=$CARRY/tfds"

# Time limits x SCALE: the CPU rehearsal is slower than a GPU (default 12 without one:
# there the limits only stop hangs, and on the project's 2 cores shared with training
# jobs the tests step alone took 15 minutes).
SCALE=${SCALE:-$([[ $TORCH_DEVICE == cuda ]] && echo 1 || echo 12)}
BUDGET=${BUDGET:-480}  # Seconds for the whole script on a GPU (x SCALE).
RESERVE=5  # Kept back for the summary.
step() {  # step NAME SECONDS COMMAND...: runs it, logs it, records its exit status.
  local name=$1 limit=$(( $2 * SCALE )); shift 2
  local left=$(( BUDGET * SCALE - RESERVE - SECONDS ))  # SECONDS: since the start.
  if (( left < 10 )); then
    echo "$name: skipped, the ${BUDGET} s budget is spent" | tee -a "$OUT/steps.txt"
    return
  fi
  (( limit > left )) && limit=$left
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "$name: exit $rc, $((SECONDS - start)) s" | tee -a "$OUT/steps.txt"
}
BENCH="$PY benchmarks/benchmark.py --torch_device=$TORCH_DEVICE --repeats=3"

{
  date -u; nvidia-smi 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import jax, flax, optax, orbax.checkpoint as o, sys; print(sys.version);
print('jax', jax.__version__, jax.devices()); print('flax', flax.__version__,
'optax', optax.__version__)"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda',
torch.cuda.is_available(), 'cudnn', torch.backends.cudnn.version())" || true
} > "$OUT/env.txt" 2>&1
: > "$OUT/steps.txt"

# Limits, in GPU seconds: 100 + 110 + 80 + 50 + 100 + 3 x 60 = 620 > BUDGET, so the
# last steps get what the first leave; a step added here (or below) shares the same.
# -o addopts=: no pytest-xdist there, and one GPU process per worker would share memory.
step tests 100 $PY -m pytest -q -p no:cacheprovider -o addopts= -m "not slow" \
  tests/test_models.py tests/test_models_research.py tests/test_train.py \
  tests/test_cudnn_lstm.py \
  -k "not (padding or predict_equals or early_stopping or best_checkpoint)"
step benchmark 110 $BENCH --preset=seed_rnn,gru,pixel_lstm --compare=torch \
  --min_repeat_s=1 --json_out="$OUT/benchmark.json"
step lstm_impls 80 $BENCH --preset=seed_lstm,seed_lstm_cudnn --compare=torch \
  --min_repeat_s=0.5 --json_out="$OUT/lstm_impls.json"
step lstm_dtypes 50 $BENCH --preset=seed_lstm,seed_lstm_bf16 --min_repeat_s=0.5 \
  --json_out="$OUT/lstm_dtypes.json"
step seed_lstm 100 $PY -m mnist_jax.main --config=experiments/seed_lstm.py \
  --workdir="$OUT/seed_lstm" $DATA --compilation_cache=
for exp in smnist_lru smnist_lstm; do
  step "$exp" 60 $PY -m mnist_jax.main --config=experiments/$exp.py \
    --workdir="$OUT/$exp" $DATA --config.num_epochs=1 --compilation_cache= \
    --config.max_train_examples=$PIXEL_EXAMPLES --config.max_eval_examples=1000 \
    --config.log_every_steps=20 --config.checkpoint_every_steps=100000
done
# Seeds as one program: examples/s per member for populations of 1, 4 and 16 seed
# LSTMs (random batches of the seed shapes, so no $DATA).
step population 60 $PY benchmarks/population.py --members=1,4,16 --steps=50 \
  --repeats=3 --json_out="$OUT/population.json"

table() {  # The benchmark table in $OUT/$1.txt less its notes, and what it skipped.
  sed -n '/^\(model \|nothing measured\)/,$p' "$OUT/$1.txt" | grep -v -e '^ex/s:' \
    -e '^eval uses' -e '^%peak:' -e '^RSS MiB:'
}
{
  cat "$OUT/steps.txt"
  grep -hs "passed\|failed" "$OUT/tests.txt" | tail -1 | grep . \
    || echo "tests: no pytest result line (stopped at its limit?); see tests.txt"
  for bench in benchmark lstm_impls lstm_dtypes; do
    echo "== $bench"; table "$bench"
  done
  echo "=="
  for exp in seed_lstm smnist_lru smnist_lstm; do
    echo "$exp: $(grep -ho '[0-9,]* ex/s' "$OUT/$exp.txt" | tail -1)," \
      "$(grep -h '^accuracy' "$OUT/$exp.txt" | tail -1)"
  done
  known=" tests benchmark lstm_impls lstm_dtypes seed_lstm smnist_lru smnist_lstm "
  for name in $(cut -d: -f1 "$OUT/steps.txt"); do  # Other steps: their last line.
    [[ $known == *" $name "* || ! -f "$OUT/$name.txt" ]] && continue
    echo "$name: $(tail -n 1 "$OUT/$name.txt")"
  done
} > "$OUT/summary.txt" 2>&1
cat "$OUT/summary.txt"
