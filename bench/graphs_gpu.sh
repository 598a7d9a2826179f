# GPU call for CUDA-graphed training steps and the search's fixed cost (issue 13 item 3), run
# through the device tool with carry [".gpu", "data/mitocheck"]; .gpu/wheels holds pytest's wheels.
# The code runs from .gpu/src.tar (git archive of the commit measured), not the working tree.
set -x
R=/tmp/res; mkdir -p $R
DATA=$PWD/data; mkdir -p /tmp/src && tar -xf .gpu/src.tar -C /tmp/src && cp -r .gpu /tmp/src/ && cd /tmp/src
echo "commit $(cat .gpu/src.commit)"
bash bench/real/device.sh true
for w in .gpu/wheels/*.whl; do python3 -m zipfile -e $w /tmp/site; done
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
mkdir -p /tmp/data && cp -r $DATA/mitocheck /tmp/data/
timeout 150 python3 -m pytest -q -p no:cacheprovider -p no:dash.testing.plugin tests/engine/test_graphs.py 2>&1 | grep -v Warn | tail -25
D="bash bench/real/device.sh"
$D python bench/step_profile.py /tmp/data/mitocheck 2>&1 | grep graphs=
for pre in 1; do
cat > /tmp/one$pre.yaml <<Y
name: one$pre
dataset: /tmp/data/mitocheck
folds: {name: k5-group, k: 5, group: group}
space: default
budget: {trials: 1, max_epochs: 40, max_concurrent: 1}
resources: {cpus: 1, gpus: 1}
objective: {metric: f1_weighted}
storage: /tmp/runs
Y
CYTOTUNE_PRELOAD=$pre $D python bench/timeline.py -- cytotune search --config /tmp/one$pre.yaml 2>&1 | grep -v "Warn\|warn" | head -24
done
$D python bench/timeline.py --imports engine.search.runner --top 12
cp -r $R $OUT/ ; for d in /tmp/runs/*/; do n=$(basename $d); mkdir -p $OUT/$n; cp $d/trials.parquet $d/study.json $OUT/$n/; done
