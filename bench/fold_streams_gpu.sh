# The GPU call behind BENCHMARKS.md "Folds trained together": bench/fold_streams.py on MitoCheck
# (and BBBC021 when its pieces were copied first, see vs_plain_gpu.sh), a timeline of a one-trial
# search, then the GPU tests. Run through the device tool with carry [".gpu", "data/mitocheck"];
# the code runs from .gpu/src.tar (git archive of the measured commit, id in .gpu/src.commit).
#   MITO="default;;batch_size=128" BB="default" TESTS="tests/engine/test_graphs.py" bash bench/fold_streams_gpu.sh
set -x
R=/tmp/res; mkdir -p $R
DATA=$PWD/data; rm -rf /tmp/src; mkdir -p /tmp/src && tar -xf .gpu/src.tar -C /tmp/src && cp -r .gpu /tmp/src/ && cd /tmp/src
echo "commit $(cat .gpu/src.commit)"
bash bench/real/device.sh true
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/bin:$PATH
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache  # see bench/real/device.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
mkdir -p /tmp/data && cp -r $DATA/mitocheck /tmp/data/
if ls /tmp/bb/part.* >/dev/null 2>&1; then [ -d /tmp/data/bbbc021 ] || cat /tmp/bb/part.* | tar -xf - -C /tmp/data; fi
variants() { python3 -c "import sys; [print(f'--variant={v}') for v in sys.argv[1].split(';;') if v]" "$1"; }
S="python bench/fold_streams.py"
$S /tmp/data/mitocheck --variant epochs=2 --out $R/warmup.json 2>&1 | grep -v Warn
mapfile -t M < <(variants "${MITO:-default}")
timeout ${MITO_S:-200} $S /tmp/data/mitocheck "${M[@]}" $MITO_ARGS --out $R/streams_mitocheck.json 2>&1 | grep -v Warn
[ -n "$MITO_BENCH" ] && timeout 100 $S /tmp/data/mitocheck --variant default --cudnn-benchmark --out $R/streams_mitocheck_bench.json 2>&1 | grep -v Warn
cp -r $R $OUT/
if [ -n "$BB" ] && [ -d /tmp/data/bbbc021 ]; then
  mapfile -t B < <(variants "$BB")
  timeout ${BB_S:-200} $S /tmp/data/bbbc021 "${B[@]}" $BB_ARGS --out $R/streams_bbbc021.json 2>&1 | grep -v Warn
  cp -r $R $OUT/
fi
if [ -n "$TIMELINE" ]; then
  mkdir -p /tmp/tl && printf 'name: tl\ndataset: /tmp/data/mitocheck\nfolds: {name: k5-group, k: 5, group: group}\nspace: default\nbudget: {trials: 1, max_epochs: 40, max_concurrent: 1}\nresources: {cpus: 1, gpus: 1}\nobjective: {metric: f1_weighted}\nloader: inprocess\nseed: 0\nstorage: /tmp/tl/runs\n' > /tmp/tl/one.yaml
  timeout 150 python bench/timeline.py -- cytotune search --config /tmp/tl/one.yaml 2>&1 | grep -v Warn | tail -25
  python3 -c "import pandas as pd; t=pd.read_parquet('/tmp/tl/runs/tl/trials.parquet'); print(t.filter(regex='time/|images_per_s|val/f1_weighted$').T)"
fi
if [ -n "$TESTS" ]; then
  for w in .gpu/wheels/*.whl; do python3 -m zipfile -e $w /tmp/site; done
  timeout ${TESTS_S:-200} python3 -m pytest -q -p no:cacheprovider -p no:dash.testing.plugin -p no:warnings $TESTS 2>&1 | tail -4
fi
