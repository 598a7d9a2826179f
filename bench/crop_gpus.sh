# The learned finder's 5 folds on a multi-GPU machine, one fold per GPU (fold 4 shares GPU 0),
# plus seed-finder variants on the other GPUs; carry [".bb/crop"] (dsb2018 + src.tar, see
# crop_gpu.sh). Each run scores its folds (bench/crop.py --only-folds); --merge joins them.
# EPOCHS (learned, default 24), BATCH (8), SEED_VARIANTS ("A|B": bench/crop.py options per run),
# CROP_ARGS (more bench/crop.py options for the learned runs); each fold's held-out detections
# come back in crop/det (bench/crop.py --regrid re-scores them at any thresholds on a CPU);
# FOLDS (default "0 1 2 3 4"; the k-th listed fold runs on GPU k mod the GPU count). At 40 epochs a
# fold takes about 8 min alone, so two folds on one GPU pass a call's 10 min: run FOLDS="0 1 2 3"
# on 4 GPUs and FOLDS="4" in a second call, then merge the five JSONs (bench/crop.py --merge).
set -x
mkdir -p /tmp/src && tar -xf .bb/crop/src.tar -C /tmp/src && rm -rf /tmp/dsb2018 && cp -r .bb/crop/dsb2018 /tmp/ && cd /tmp/src
nvidia-smi --query-gpu=name --format=csv,noheader
export PYTHONUNBUFFERED=1
n=$(nvidia-smi -L | grep -c '^GPU')
L="python3 bench/crop.py --finder learned --device cuda --epochs ${EPOCHS:-24} --batch-size ${BATCH:-8} --quiet --data /tmp/dsb2018 --save-detections /tmp/det ${CROP_ARGS}"
k=0
for f in ${FOLDS:-0 1 2 3 4}; do
  CUDA_VISIBLE_DEVICES=$((k % n)) timeout ${TIMEOUT:-540} $L --only-folds $f --out /tmp/learned_$f.json > /tmp/learned_$f.log 2>&1 &
  k=$((k + 1))
done
i=0
IFS='|' read -ra variants <<< "${SEED_VARIANTS}"
for v in "${variants[@]}"; do
  i=$((i + 1))
  CUDA_VISIBLE_DEVICES=$(( (i + 1) % n )) timeout ${TIMEOUT:-540} python3 bench/crop.py --finder seed --device cuda --batch-size 16 --quiet --data /tmp/dsb2018 $v --out /tmp/seed_$i.json > /tmp/seed_$i.log 2>&1 &
done
wait
for f in /tmp/learned_*.log /tmp/seed_*.log; do echo "== $f"; grep -v Warn $f | tail -3; done
python3 bench/crop.py --finder learned --merge /tmp/learned_*.json --out /tmp/crop.json | tail -2
# Few files come back from a call: the JSONs, one log and the detections as one archive.
mkdir -p $OUT/crop && cp /tmp/learned_*.json /tmp/crop.json $OUT/crop/ && cat /tmp/learned_*.log /tmp/seed_*.log > $OUT/crop/logs.txt 2>/dev/null
cp /tmp/seed_*.json $OUT/crop/ 2>/dev/null; tar -czf $OUT/crop/det.tgz -C /tmp det 2>/dev/null; true
