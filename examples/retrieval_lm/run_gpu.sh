#!/usr/bin/env bash
# The GPU session of issue 8, as one command (see README.md): install, train, evaluate, everything into $OUT.
#
#   bash examples/retrieval_lm/run_gpu.sh                      # fresh run: TRAIN_MIN=5.5 EVAL_MIN=2
#   INIT_FROM=examples/retrieval_lm/runs/prev TRAIN_MIN=6 bash examples/retrieval_lm/run_gpu.sh   # go on
#   MODEL=examples/retrieval_lm/runs/prev TRAIN_MIN=0 EVAL_MIN=8 bash examples/retrieval_lm/run_gpu.sh  # eval only
#
# $OUT gets at most 8 files (the device tool's limit): model/{config.json, model.safetensors,
# generation_config.json, retrieval_lm.json}, train_log.json, eval.json, log.txt.
set -uo pipefail
export PYTHONUNBUFFERED=1
HERE=examples/retrieval_lm
OUT=${OUT:?set OUT}
RUN=${RUN:-$HERE/runs/main}
TRAIN_MIN=${TRAIN_MIN:-5.5}
EVAL_MIN=${EVAL_MIN:-2}
STOP_AT=${STOP_AT:-0.995}
GRID=${GRID:-full}
EXTRA_TRAIN=${EXTRA_TRAIN:-}
EXTRA_EVAL=${EXTRA_EVAL:-}
exec > >(tee "$OUT/log.txt") 2>&1
t0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if [ "${SKIP_INSTALL:-0}" != "1" ]; then
  python -m pip install --no-deps --no-build-isolation -e . -q 2>&1 | tail -3
fi
python - <<'PY'
import torch, transformers, sparsekit
try:
    import triton; tv = triton.__version__
except ImportError:
    tv = None
print("torch", torch.__version__, "triton", tv, "transformers", transformers.__version__,
      "sparsekit", getattr(sparsekit, "__version__", "?"), "cuda", torch.cuda.is_available())
PY
echo "== setup done after $(( $(date +%s) - t0 ))s"

MODEL=${MODEL:-$RUN/model}
if [ "$TRAIN_MIN" != "0" ]; then
  INIT=()
  if [ -n "${INIT_FROM:-}" ]; then
    INIT=(--init-from "$INIT_FROM" --stages "0:1024:16384" --lr "${LR:-1e-3}" --warmup 0.05 --seed 1)
  fi
  # the training loop stops itself at TRAIN_MIN; the timeout only guards against a hang (and leaves the eval its time)
  TRAIN_S=$(python -c "print(int(float('$TRAIN_MIN') * 60 + 60))")
  timeout "$TRAIN_S" python $HERE/train.py --out "$RUN" --minutes "$TRAIN_MIN" --stop-at-acc "$STOP_AT" \
      "${INIT[@]}" $EXTRA_TRAIN
  echo "== train exit $? after $(( $(date +%s) - t0 ))s"
  MODEL=$RUN/model
  cp "$RUN/train_log.json" "$OUT/" || true
fi
mkdir -p "$OUT/model"
cp "$MODEL"/config.json "$MODEL"/model.safetensors "$MODEL"/generation_config.json "$MODEL"/retrieval_lm.json \
   "$OUT/model/" || true

RESUME_EVAL=()
if [ "$TRAIN_MIN" = "0" ] && [ -f "$MODEL/eval.json" ]; then
  RESUME_EVAL=(--resume-from "$MODEL/eval.json")   # eval only: keep the finished units of an earlier eval.json
fi
EVAL_S=$(python -c "print(int(float('$EVAL_MIN') * 60 + 40))")
timeout "$EVAL_S" python $HERE/evaluate.py --model "$MODEL" --out "$OUT/eval.json" --max-minutes "$EVAL_MIN" \
    --grid "$GRID" "${RESUME_EVAL[@]}" $EXTRA_EVAL
echo "== evaluate exit $? after $(( $(date +%s) - t0 ))s"
