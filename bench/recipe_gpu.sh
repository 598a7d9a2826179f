# The GPU call behind BENCHMARKS.md "The recipe, one change at a time": bench/recipe_ablation.py on
# MitoCheck (grouped by movie) and on the synthetic metastasis task (grouped by well), then the
# CUDA-graph tests. Run through the device tool with carry [".gpu", "data/mitocheck"]; the code
# runs from .gpu/src.tar (git archive of the measured commit, id in .gpu/src.commit).
#   MITO="default;;lr=4e-3" META="default" bash bench/recipe_gpu.sh   (variants split on ";;")
set -x
R=/tmp/res; mkdir -p $R
DATA=$PWD/data; mkdir -p /tmp/src && tar -xf .gpu/src.tar -C /tmp/src && cp -r .gpu /tmp/src/ && cd /tmp/src
echo "commit $(cat .gpu/src.commit)"
bash bench/real/device.sh true
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/bin:$PATH
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache  # see bench/real/device.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
mkdir -p /tmp/data && cp -r $DATA/mitocheck /tmp/data/
variants() { python3 -c "import sys; [print(f'--variant={v}') for v in sys.argv[1].split(';;') if v]" "$1"; }
mapfile -t M < <(variants "${MITO:-default}")
timeout ${MITO_S:-300} python bench/recipe_ablation.py /tmp/data/mitocheck "${M[@]}" --out $R/ablation_mitocheck.json 2>&1 | grep -v Warn
cp -r $R $OUT/
if [ -n "$META" ]; then
  cytotune synth --task metastasis --out /tmp/data/metastasis --n 4000 --size 64 --weak-fraction 0.6 --no-progress
  cytotune folds /tmp/data/metastasis --k 5 --group well --name k5-group
  mapfile -t S < <(variants "$META")
  timeout ${META_S:-170} python bench/recipe_ablation.py /tmp/data/metastasis "${S[@]}" --out $R/ablation_metastasis.json 2>&1 | grep -v Warn
  cp -r $R $OUT/
fi
if [ -n "$PYTESTS" ]; then
  for w in .gpu/wheels/*.whl; do python3 -m zipfile -e $w /tmp/site; done
  timeout 100 python3 -m pytest -q -p no:cacheprovider -p no:dash.testing.plugin $PYTESTS 2>&1 | grep -v Warn | tail -3
fi
