# The 2-GPU call behind BENCHMARKS.md "Scale-out": run through the device tool with kind
# nvidia-h100-x2 (or h200-x2) and carry [".gpu"]; the code runs from .gpu/src.tar (git archive).
# MODE=long TIMEOUT=300: the longer workload (24 epochs; Integrated Gradients in the explain job).
# MODE=explain SCALE_ARGS="--search-gpus 1": the explain job of "long" after a 1-GPU short search.
# SCALE_ARGS="--explain-runs 1:local 2:local 2:ray": which explain runs (GPUs:executor).
# TIMEOUT (default 240) kills each child run (it is not the study's budget): MODE=many needs
# about 220 s on one GPU, so give it TIMEOUT=300 (a run of session 14 cut at 190 s returned nothing).
# MODE=many: 48 trials x 8 epochs, seeded random sampler (BENCHMARKS.md "Session 13": 1.85x);
# add --weak-fraction 0.7 to SCALE_ARGS for a task without a perfect score (time to best).
# MODE=explain SCALE_ARGS="--search-gpus 1 --explain-runs 1:local 2:local --explain-top-k 8
#   --big-explain 31250 16": the explain jobs of "Session 13" (top 8 trials; 500k maps).
set -x
mkdir -p /tmp/src && tar -xf .gpu/src.tar -C /tmp/src && cp -r .gpu /tmp/src/ && cd /tmp/src
echo "commit $(cat .gpu/src.commit)"
bash bench/real/device.sh true
export PYTHONPATH=/tmp/site:$PWD
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache  # see bench/real/device.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# WALL bounds the whole benchmark (rows are written as they come) so they come back in time
timeout ${WALL:-560} bash bench/real/device.sh python bench/scale.py --out /tmp/scale.json --timeout ${TIMEOUT:-240} --mode ${MODE:-gpu} ${SCALE_ARGS} 2>&1 | grep -v "Warn\|warn" | tail -25
cp /tmp/scale.json $OUT/ 2>/dev/null; ls /tmp/cytotune-scale
