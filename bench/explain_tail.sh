# The explain job's tail (population figures + overlays, the stages that read the finished maps)
# with threads vs stage processes (CYTOTUNE_TAIL_PROCESSES), on a CPU. MitoCheck (data/mitocheck,
# 3,277 cells, 16 classes), 3 tiny trials (backbone, mhl_attention, protopnet; tests/studies.py)
# x 5 methods; the maps are computed once (about 4 min on 2 cores), then each variant reruns only
# the tail. BASE=<commit> adds the tail of that commit (a git worktree). RUNS (default 2).
#   bash bench/explain_tail.sh
set -e
ROOT=$(cd "$(dirname "$0")/.." && pwd); W=${WORK:-/tmp/explain_tail}; mkdir -p $W
STUDY=$W/study/export-test
if [ ! -d $STUDY/explain ]; then
  rm -rf $W/mito $W/study && cp -r $ROOT/data/mitocheck $W/mito
  cytotune folds $W/mito --name k5-group --k 5 --group group > /dev/null
  python - <<PY
import sys
from pathlib import Path
sys.path.insert(0, "$ROOT")
from tests.studies import make_study, sample
make_study(Path("$W/study"), Path("$W/mito"), {"b0000001": sample("backbone"),
           "m0000002": sample("mhl_attention"), "p0000003": sample("protopnet")},
           "f1_weighted", "k5-group", k=5, epochs=1)
PY
fi
ARGS="--study $STUDY --top-k 3 --methods gradcam gradcam++ layercam smoothgrad integrated_gradients:n_steps=8 --quiet --executor local"
[ -d $STUDY/explain/maps ] || cytotune explain $ARGS > /dev/null 2>&1
if [ -n "$BASE" ]; then rm -rf $W/base; git -C $ROOT worktree add -f -q $W/base $BASE; fi
reset() {  # forget the finished tail parts: the next run redoes them
  python -c "
import json; p='$STUDY/explain/explain.json'; d=json.load(open(p))
d['parts'] = {k: v for k, v in d['parts'].items() if not k.startswith(('population/', 'overlays/'))}
json.dump(d, open(p, 'w'))"
}
for run in $(seq ${RUNS:-2}); do
  for v in ${BASE:+base} threads processes; do
    reset
    C="cytotune"; [ $v = base ] && C="env PYTHONPATH=$W/base python -P -m cytotune.engine.cli"
    P=1; [ $v = processes ] && P=2
    t0=$(date +%s.%N)
    CYTOTUNE_TAIL_PROCESSES=$P $C explain $ARGS --stages population overlays > $W/$v.log 2>&1
    echo "$v run $run: $(python -c "print(round($(date +%s.%N) - $t0, 1))") s;" \
      "$(grep -E '^\s+(population|overlays)' $W/$v.log | tr -s ' ' | tr '\n' ';')"
  done
done
[ -z "$BASE" ] || git -C $ROOT worktree remove --force $W/base
