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
$D python bench/recipe_ablation.py /tmp/data/mitocheck --variant default --variant cuda_graphs=off --out $R/graphs_ablation.json 2>&1 | grep -v Warn | tail -4
# the search's fixed cost: one trial, all folds, with and without preloaded Ray workers
$D python bench/timeline.py --imports search_spaces,engine.search.runner --top 8
for pre in 1 0; do
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
CYTOTUNE_PRELOAD=$pre $D python bench/timeline.py -- cytotune search --config /tmp/one$pre.yaml 2>&1 | grep -v "Warn\|warn" | tail -14
done
V="$D python bench/vs_plain.py --data /tmp/data --runs /tmp/runs --out $R/vs_plain.json --gpus-per-trial 1 --max-concurrent 1"
$V --datasets mitocheck --budget-factor 2 2>&1 | grep -v Warn | tail -3
$V --datasets metastasis --budget-factor 2 2>&1 | grep -v Warn | tail -3
cp -r $R $OUT/ ; for d in /tmp/runs/*/; do n=$(basename $d); mkdir -p $OUT/$n; cp $d/trials.parquet $d/study.json $OUT/$n/; done
