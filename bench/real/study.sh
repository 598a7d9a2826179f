#!/usr/bin/env bash
# A full study on one of the real datasets, exactly as a user runs it, with wall time per stage:
# ingest -> grouped folds + leakage audit -> search -> explain top 3 -> pull -> plain-torch predict
# (bbbc021 also: the winner retrained on naive per-cell folds).
#
#   bash bench/real/study.sh mitocheck [RUNS]      # RUNS defaults to runs/real
#   bash bench/real/study.sh bbbc021   [RUNS]
#   STAGES="explain pull predict" bash bench/real/study.sh mitocheck   # some stages only
#
# Reads ../shared/datasets/NAME/index.csv (or a dataset already ingested in data/NAME) and writes
# data/NAME, RUNS/NAME (study + explain/), RUNS/NAME-bundle and RUNS/NAME-*.json|tsv|txt.
set -euo pipefail
name=${1:?usage: study.sh mitocheck|bbbc021 [RUNS]}
runs=${2:-runs/real}
case $name in
  mitocheck) channels=chromatin ;;
  bbbc021) channels=dna,tubulin,actin ;;
  *) echo "unknown dataset $name (mitocheck or bbbc021)" >&2; exit 2 ;;
esac
data=data/$name
mkdir -p "$runs"
timings=$runs/$name-timings.tsv
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
[ -f "$timings" ] || printf 'stage\twall_s\tgpus\n' > "$timings"
stages=" ${STAGES:-ingest folds search explain pull predict naive} "
want() { [[ $stages == *" $1 "* ]]; }

stage() {  # stage NAME command...: run, log its output, record wall seconds and GPUs held
  local label=$1; shift
  local t0; t0=$(date +%s%N)
  echo "== $label: $*"
  "$@" 2>&1 | tee "$runs/$name-$label.txt"
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '%s\t%d.%03d\t%s\n' "$label" $((ms / 1000)) $((ms % 1000)) "$gpus" >> "$timings"
}

if want ingest && [ ! -f "$data/manifest.json" ]; then
  stage ingest cytotune ingest "../shared/datasets/$name/index.csv" --out "$data" --channels "$channels"
fi
want folds && { [ -f "$data/folds/k5-group.json" ] || stage folds cytotune folds "$data" --k 5 --group group --name k5-group --audit-naive; }
want search && stage search cytotune search --config "${CONFIG:-bench/real/$name.yaml}" --storage "$runs" --quiet
want explain && stage explain cytotune explain --study "$runs/$name" --top-k 3 --quiet ${EXPLAIN_ARGS:-}
if want pull; then
  rm -rf "$runs/$name-bundle"
  stage pull cytotune pull --study "$runs/$name" --out "$runs/$name-bundle" --format state_dict,torchscript
fi
want predict && stage predict python bench/real/plain_predict.py "$runs/$name-bundle" "$data" --out "$runs/$name-predict.json"
if want naive && [ "$name" = bbbc021 ]; then
  [ -f "$data/folds/k5-cell.json" ] || cytotune folds "$data" --k 5 --group none --name k5-cell
  stage naive python bench/real/naive_cv.py --study "$runs/$name" --folds k5-cell --out "$runs/$name-naive.json"
fi
cytotune pull --study "$runs/$name" --list > "$runs/$name-leaderboard.txt"
cat "$timings"
