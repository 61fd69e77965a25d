#!/usr/bin/env bash
# The GPU checks, as one prepared run on a lent accelerator machine (never a CI need):
#   1. training-step benchmark, dot vs MoL (scripts/bench_train.py),
#   2. full-matrix top-k methods (scripts/bench_topk.py), the fused Pallas MoL scorer against
#      XLA (scripts/bench_mol_kernel.py),
#   3. two-stage retrieval, Figure 3 (scripts/bench_retrieval.py) on the MoL seed-0 checkpoint,
#   4. then, in the time left, resume an unfinished MoL seed of a reproduction table from
#      results/in_progress (its checkpoints come back in the archive).
# Every stage has its own time cap inside GPU_BUDGET_S; whatever finished is packed into
# $OUT/gpu_results.tgz after each stage, so a stage cut short loses only itself.
#
#   OUT=/tmp/gpu_out JAXRET_DATA_DIR=../shared/data bash scripts/gpu_checks.sh
#
# Knobs (environment): GPU_BUDGET_S (default 560), RETRIEVAL_S (cap of stage 3, default 250),
# TRAIN_S (cap of stage 4, default: the time left), STAGES (default 'step topk kernel retrieval train';
# a second call on a warm machine can run 'train' alone: it continues from $GPU_WORK/runs),
# GPU_SMOKE=1 (tiny sizes: checks the script itself on a CPU in a minute or two).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_out}"
WORK="${GPU_WORK:-/tmp/gpu_work}"
BUDGET="${GPU_BUDGET_S:-560}"
TRAIN_S="${TRAIN_S:-100000}"
RETRIEVAL_S="${RETRIEVAL_S:-250}"
SMOKE="${GPU_SMOKE:-0}"
STAGES=" ${STAGES:-step topk kernel retrieval train} "
mkdir -p "$OUT" "$WORK"
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
say() { echo "[$(( $(date +%s) - START ))s] $*"; }
pack() { tar czf "$OUT/gpu_results.tgz" --exclude=./cache -C "$WORK" . ; }
want() { [[ "$STAGES" == *" $1 "* ]]; }
cap() { local limit=$1 rest; rest=$(( $(left) - 15 )); echo $(( limit < rest ? limit : rest )); }

if compgen -G ".whl/*.whl" > /dev/null; then          # packages the machine lacks
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export JAXRET_DATA_DIR="${JAXRET_DATA_DIR:-$PWD/.devdata}"
export JAXRET_CACHE_DIR="${JAXRET_CACHE_DIR:-$WORK/cache}"
PY="${PYTHON:-python3}"
nvidia-smi -L 2>/dev/null || true
$PY -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, \
'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" | tee "$WORK/versions.txt"

# 1. Training step, dot vs MoL, fp32, full-length batches (one compilation per head).
if want step; then
steps=20; [ "$SMOKE" = 1 ] && steps=2
say "stage 1: bench_train"
timeout "$(cap 110)" $PY scripts/bench_train.py --heads=dot,mol --losses=ss --steps=$steps \
  --warmup=3 --out="$WORK/bench_train_gpu.json" > "$WORK/bench_train.log" 2>&1
say "stage 1 exit $?"
# The trainer's automatic MoL score chunk (32) was tuned on the CPU: MoL unchunked, appended.
timeout "$(cap 60)" $PY scripts/bench_train.py --heads=mol --losses=ss --steps=$steps \
  --warmup=3 --score_chunk=0 --append --out="$WORK/bench_train_gpu.json" >> "$WORK/bench_train.log" 2>&1
say "stage 1b exit $?"; cat "$WORK/bench_train.log"; pack
fi

# 2. Top-k of a full score matrix: lax.top_k vs grouped (select is a host method: CPU only).
if want topk; then
pool=1000000; [ "$SMOKE" = 1 ] && pool=20000
say "stage 2: bench_topk"
timeout "$(cap 40)" $PY scripts/bench_topk.py --methods=grouped --groups=16 \
  --ks=100,1000,10000 --pool=$pool --out="$WORK/bench_topk_gpu.json" > "$WORK/bench_topk.log" 2>&1
say "stage 2 exit $?"; cat "$WORK/bench_topk.log"; pack
fi

# 2b. The fused Pallas MoL scorer against XLA (all pairs, B=256, N=1e5).
if want kernel; then
say "stage 2b: bench_mol_kernel"
timeout "$(cap 60)" $PY scripts/bench_mol_kernel.py --pool=$(( SMOKE == 1 ? 1024 : 100000 )) \
  --out="$WORK/bench_mol_kernel.json" > "$WORK/bench_mol_kernel.log" 2>&1
say "stage 2b exit $?"; cat "$WORK/bench_mol_kernel.log"; pack
fi

# 3. Two-stage retrieval on the MoL seed-0 checkpoint: Figure 3 on the GPU.
if want retrieval; then
# Session 16's run finished the 1e4 / 1e5 pools only (results/gpu/README.md): the large pools
# now, with fewer quantisations and k' (each (quantisation, k', N) is its own compilation).
pools=1000000,10000000; steps=3000
[ "$SMOKE" = 1 ] && pools=2000,5000 && steps=5
say "stage 3: bench_retrieval for at most $(cap "$RETRIEVAL_S") s"
timeout "$(cap "$RETRIEVAL_S")" $PY scripts/bench_retrieval.py \
  --checkpoint=results/runs/paper_ml1m/sasrec_mol_ss/s0 --pool_sizes=$pools \
  --generators=hindexer --quantizations=fp32,int8 --k_primes=1000,2000,5000,10000,20000 \
  --throughput_k_primes=1000,2000,5000,10000,20000 \
  --exact_mol_max_pool=10000000 --hindexer_steps=$steps --repeats=5 \
  --out_dir="$WORK/retrieval" > "$WORK/bench_retrieval.log" 2>&1
say "stage 3 exit $?"; tail -40 "$WORK/bench_retrieval.log"; pack
fi

# 4. An unfinished MoL seed, resumed from its committed checkpoints (or, on a warm machine,
# from where an earlier call left it).
TABLE="${RESUME_TABLE:-paper_ml1m}" ROW="${RESUME_ROW:-sasrec_mol_ss}" SEED="${RESUME_SEED:-2}"
if want train && [ -d "results/in_progress/repro20/$TABLE/$ROW/s$SEED" ]; then
  [ -d "$WORK/runs/repro20" ] || { mkdir -p "$WORK/runs" && cp -r results/in_progress/repro20 "$WORK/runs/"; }
  extra=()
  [ "$SMOKE" = 1 ] && extra=(--epochs=33)
  say "stage 4: $TABLE/$ROW seed $SEED for at most $(cap "$TRAIN_S") s"
  timeout "$(cap "$TRAIN_S")" $PY -m experiments.reproduce --table="$TABLE" --rows="$ROW" \
    --seeds="$SEED" --workdir_root="$WORK/runs/repro20" --out_dir="$WORK/repro_out" \
    "${extra[@]}" > "$WORK/train.log" 2>&1
  say "stage 4 exit $?"; tail -5 "$WORK/train.log"; pack
fi

say "done"
