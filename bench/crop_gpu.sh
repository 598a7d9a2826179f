# The GPU call for the learned cell finders (issue 18): carry [".bb/crop"] holding dsb2018 and
# src.tar (git archive of the measured commit); torch/torchvision come with the GPU machine.
# FINDER=learned (Mask R-CNN, default) or seed (the AttentionNet-style anchor detector);
# EPOCHS, BATCH, TIMEOUT and CROP_ARGS (more bench/crop.py options) set the run.
set -x
mkdir -p /tmp/src && tar -xf .bb/crop/src.tar -C /tmp/src && rm -rf /tmp/dsb2018 && cp -r .bb/crop/dsb2018 /tmp/ && cd /tmp/src
nvidia-smi --query-gpu=name --format=csv,noheader
export PYTHONUNBUFFERED=1
FINDER=${FINDER:-learned}
timeout 120 python3 bench/crop.py --finder $FINDER --device cuda --limit 16 --folds 2 --epochs 1 --quiet --data /tmp/dsb2018 2>&1 | tail -5 || exit 1
timeout ${TIMEOUT:-450} python3 bench/crop.py --finder $FINDER --device cuda --epochs ${EPOCHS:-12} --batch-size ${BATCH:-8} --quiet --data /tmp/dsb2018 --out /tmp/crop.json ${CROP_ARGS} 2>&1 | tail -15
cp /tmp/crop.json $OUT/ 2>/dev/null; true
