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
#    -> $OUT/gpu_check/: env.txt, tests.txt, benchmark.json and .txt, one log per
#       training run, summary.txt (examples/s and accuracies, one line each).
#
# Steps (each under its own time limit; a failed step is recorded, the rest go on):
# the model and train-step tests on the device; the benchmark against PyTorch (cuDNN on
# a GPU) for the four preset models; one full seed_lstm.py run; a few hundred steps of
# the pixel LRU and the pixel LayerNorm LSTM.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
CARRY=$REPO/benchmarks/gpu_carry

if [[ "${1:-}" == "--prepare" ]]; then
  set -e
  rm -rf "$CARRY" && mkdir -p "$CARRY/wheels"
  CARRY=$CARRY python - "${2:-}" <<'PY'
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
  pip download --quiet --no-deps -d "$CARRY/wheels" ml_collections pytest pluggy pygments \
    iniconfig packaging tqdm
  du -sh "$CARRY"
  exit 0
fi

OUT=${OUT:-/tmp}/gpu_check
mkdir -p "$OUT"
SITE=$(mktemp -d)
python -m pip install --quiet --no-index --no-deps --target "$SITE" "$CARRY"/wheels/*.whl
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

SCALE=${SCALE:-1}  # Time limits x SCALE: the CPU rehearsal is slower than a GPU.
step() {  # step NAME SECONDS COMMAND...: runs it, logs it, records its exit status.
  local name=$1 limit=$(( $2 * SCALE )); shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "$name: exit $rc, $((SECONDS - start)) s" | tee -a "$OUT/steps.txt"
}

{
  date -u; nvidia-smi 2>/dev/null || echo "no nvidia-smi"
  python -c "import jax, flax, optax, orbax.checkpoint as o, sys; print(sys.version);
print('jax', jax.__version__, jax.devices()); print('flax', flax.__version__,
'optax', optax.__version__)"
  python -c "import torch; print('torch', torch.__version__, 'cuda',
torch.cuda.is_available(), 'cudnn', torch.backends.cudnn.version())" || true
} > "$OUT/env.txt" 2>&1
: > "$OUT/steps.txt"

step tests 100 python -m pytest -q -p no:cacheprovider -m "not slow" \
  tests/test_models.py tests/test_models_research.py tests/test_train.py \
  -k "not (padding or predict_equals or early_stopping or best_checkpoint)"
step benchmark 150 python benchmarks/benchmark.py --preset=all --compare=torch \
  --torch_device=$TORCH_DEVICE --repeats=3 --min_repeat_s=1 \
  --json_out="$OUT/benchmark.json"
step seed_lstm 100 python -m mnist_jax.main --config=experiments/seed_lstm.py \
  --workdir="$OUT/seed_lstm" $DATA --compilation_cache=
for exp in smnist_lru smnist_lstm; do
  step "$exp" 60 python -m mnist_jax.main --config=experiments/$exp.py \
    --workdir="$OUT/$exp" $DATA --config.num_epochs=1 --compilation_cache= \
    --config.max_train_examples=$PIXEL_EXAMPLES --config.max_eval_examples=1000 \
    --config.log_every_steps=20 --config.checkpoint_every_steps=100000
done

{
  cat "$OUT/steps.txt"
  grep -h "passed\|failed" "$OUT/tests.txt" | tail -1
  tail -n 14 "$OUT/benchmark.txt"
  for exp in seed_lstm smnist_lru smnist_lstm; do
    echo "$exp: $(grep -ho '[0-9,]* ex/s' "$OUT/$exp.txt" | tail -1)," \
      "$(grep -h '^accuracy' "$OUT/$exp.txt" | tail -1)"
  done
} > "$OUT/summary.txt"
cat "$OUT/summary.txt"
