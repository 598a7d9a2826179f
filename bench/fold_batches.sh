# The maps stage with the cells regrouped into batches of one fold (default) vs the row groups'
# batches as they come (CYTOTUNE_FOLD_BATCHES=0), on the MitoCheck study of
# bench/explain_tail.sh (3 tiny trials x 5 methods x 3,277 cells; local executor), then the
# kernel's operations per cell for one batch of each kind (bench/fold_batch_ops.py).
# RUNS (default 1); DEVICE (default cpu) for the operation count.
#   bash bench/fold_batches.sh
set -e
ROOT=$(cd "$(dirname "$0")/.." && pwd); W=${WORK:-/tmp/explain_tail}
STUDY=${STUDY:-$W/study/export-test}
[ -d $STUDY ] || { echo "run bash bench/explain_tail.sh first (it makes the study)"; exit 1; }
M="gradcam gradcam++ layercam smoothgrad integrated_gradients:n_steps=8"
for run in $(seq ${RUNS:-1}); do
  for f in 1 0; do
    t0=$(date +%s.%N)
    CYTOTUNE_FOLD_BATCHES=$f cytotune explain --study $STUDY --top-k 3 --methods $M --quiet \
      --executor local --overwrite --stages maps > $W/fold$f.log 2>&1
    echo "fold batches=$f run $run: wall $(python -c "print(round($(date +%s.%N) - $t0, 1))") s;" \
      "$(python -c "import json; print('maps %.1f s' % json.load(open('$STUDY/explain/explain.json'))['timings']['maps'])")"
  done
done
python $ROOT/bench/fold_batch_ops.py --study $STUDY --device ${DEVICE:-cpu} --out $W/fold_batch_ops.json \
  2>&1 | grep -v Warn | tail -3
