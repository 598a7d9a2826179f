# The population stage following the maps (its processes add each map part as it is written)
# vs reading the tables after the maps (CYTOTUNE_FOLLOW_MAPS=0), both with 2 stage processes.
# The MitoCheck study of bench/explain_tail.sh (3 tiny trials x 5 methods x 3,277 cells), the
# maps and population stages of one job each time; prints the wall time and, from explain.json,
# the maps' end and the population figures' end. RUNS (default 1).
#   bash bench/population_follow.sh
set -e
ROOT=$(cd "$(dirname "$0")/.." && pwd); W=${WORK:-/tmp/explain_tail}
STUDY=$W/study/export-test
[ -d $STUDY ] || { echo "run bash bench/explain_tail.sh first (it makes the study)"; exit 1; }
ARGS="--study $STUDY --top-k 3 --methods gradcam gradcam++ layercam smoothgrad integrated_gradients:n_steps=8 --quiet --executor local --overwrite --stages maps population"
for run in $(seq ${RUNS:-1}); do
  for follow in 1 0; do
    t0=$(date +%s.%N)
    CYTOTUNE_TAIL_PROCESSES=2 CYTOTUNE_FOLLOW_MAPS=$follow cytotune explain $ARGS > $W/follow$follow.log 2>&1
    wall=$(python -c "print(round($(date +%s.%N) - $t0, 1))")
    python - <<PY
import json
d = json.load(open("$STUDY/explain/explain.json"))
s = d["maps_run"]["started"]; marks = d.get("marks", {}); t = d.get("timings", {})
maps_end = s + t["maps"]
print("follow=$follow run $run: wall $wall s; maps %.1f s; population drawn %.1f s after the maps' end"
      % (t["maps"], marks["population/drawn"] - maps_end))
PY
  done
done
