# The GPU call behind BENCHMARKS.md "Search vs a hand-written training loop": run through the
# device tool with carry [".gpu", "data/mitocheck"]. The code runs from .gpu/src.tar (git archive
# of the measured commit, id in .gpu/src.commit). BBBC021's ingested dataset (114 MB) is larger
# than one call carries: earlier calls on the same warm machine copy its tar in pieces to /tmp/bb
# (`bash bench/vs_plain_gpu.sh piece` with carry [".bb/N"]); without them BBBC021 is skipped.
# SETS="mitocheck" picks datasets; NOTESTS=1 skips the GPU tests; FACTOR=2 is the budget factor.
set -x
if [ "$1" = piece ]; then mkdir -p /tmp/bb && cp .bb/*/part.* /tmp/bb/ && ls -la /tmp/bb; exit 0; fi
R=/tmp/res; mkdir -p $R
DATA=$PWD/data; mkdir -p /tmp/src && tar -xf .gpu/src.tar -C /tmp/src && cp -r .gpu /tmp/src/ && cd /tmp/src
echo "commit $(cat .gpu/src.commit)"
bash bench/real/device.sh true
for w in .gpu/wheels/*.whl; do python3 -m zipfile -e $w /tmp/site; done
export PYTHONPATH=/tmp/site:$PWD
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache  # see bench/real/device.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
mkdir -p /tmp/data && cp -r $DATA/mitocheck /tmp/data/
SETS=${SETS:-mitocheck metastasis bbbc021}
if ls /tmp/bb/part.* >/dev/null 2>&1; then [ -d /tmp/data/bbbc021 ] || cat /tmp/bb/part.* | tar -xf - -C /tmp/data; else SETS=${SETS/bbbc021/}; fi
[ -z "$NOTESTS" ] && timeout 150 python3 -m pytest -q -p no:cacheprovider -p no:dash.testing.plugin tests/engine/test_graphs.py tests/engine/test_cluster_start.py 2>&1 | grep -v Warn | tail -4
V="bash bench/real/device.sh python bench/vs_plain.py --data /tmp/data --runs /tmp/runs --out $R/vs_plain.json --gpus-per-trial 1 --max-concurrent 1"
for s in $SETS; do $V --datasets $s --budget-factor ${FACTOR:-2} 2>&1 | grep -v Warn | tail -2; done
cp -r $R $OUT/ ; for d in /tmp/runs/vs-plain-*/; do n=$(basename $d); mkdir -p $OUT/$n; cp $d/trials.parquet $d/study.json $OUT/$n/; done
