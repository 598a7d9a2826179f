# The GPU call behind BENCHMARKS.md "Explain job on one GPU: the MitoCheck study" (issue 16,
# item 5) and "CPU vs GPU sanity agreement": run through the device tool on one GPU with carry
# [".gpu", "data/mitocheck"]; the code runs from .gpu/src.tar (git archive, id in .gpu/src.commit).
#   1. a MitoCheck search of 3 trials (default space, 40 epochs, 3 at once on the GPU; all folds of
#      every trial, race: epochs with grace = max, so the job has the issue's 3 trials);
#   2. `cytotune explain --study ... --top-k 3` (5 methods x 3 trials x 3,277 cells) RUNS times
#      per executor in EXECUTORS (default "local ray"; local1: local with one worker; local2, local3: local
#      in two or three processes sharing the GPU (each with its share of the trials); localq1: the quality's sampled scores in one process;
#      localt1: population and overlays in threads, not in tail processes; localf0: batch norms
#      not folded; localw0, localw1: side work not waiting (the default since 19) or waiting for the maps' first batch; localw3: 3 map worker threads (default 4); localtp8: 8 tail processes a stage;
#      localfb0: the row groups' batches as they come (not regrouped by fold); localfm0: the
#      population read after the maps (not following them); localqb: the sanity check in bf16; localexp: torch's expandable allocator segments; qualityonly: --stages quality; localeb0: batches as cut (not even, not padded to one size); localb128, localb256, localb512: batches of
#      128, 256 or 512 cells (default 256 on a GPU); localsp0: side work in threads
#      of this process; mapsonly: --stages maps; locals: the sanity
#      check in strict fp32 (CYTOTUNE_CHECK_TF32=0);
#      base: the local executor of the code in .gpu/base.tar), each timed, with the job's own stage
#      timings (explain/explain.json);
#   3. SANITY=1: bench/sanity_calibration.py on the same trained weights (--models) on the GPU and
#      on the machine's 16 CPU cores, compared case by case by bench/sanity_agreement.py;
#   4. MILLION=1: bench/explain.py on about 1M Grad-CAM maps (local executor and 4 Ray actors);
#   5. ERRORS=1 with BBBC021 copied to /tmp/bb first (`bash bench/vs_plain_gpu.sh piece`):
#      bench/real/errors.py on BBBC021 (held-out errors per well and field of view);
#      CEILING="member|member..." the same way: bench/real/ceiling.py on BBBC021 (an ensemble of
#      the default trial's variants, held-out probabilities averaged);
#   WSTART=1: bench/worker_start.py --device cuda ${WSTART_ARGS} (a map worker's model loading per variant);
#   CHILDSTART=1: bench/child_start.py (a stage child's imports and CUDA start, alone and at once);
#   6. SPRECISION=1: bench/sanity_precision.py on the searched study (quality stage in fp32, TF32,
#      bf16: the sanity verdicts compared, the stage timed);
#  10. FOPS=1: bench/fold_batch_ops.py on the GPU (a 5-fold batch vs a 1-fold one: operations, s);
#   9. TPROFILE=1: bench/tail_profile.py on the searched study (an atomic file write's cost, each
#      pair's population figures in turn, the population and overlay stages as the job runs them);
#   8. MPROFILE=1: bench/maps_profile.py on the searched study (the maps stage's pieces timed
#      alone: start-up, each (trial, method) warm, 1 vs 4 workers, a pass's floor, a profile);
#  11. PASSPROF=1: bench/pass_profile.py (one pass per family in the maps' and the quality's
#      settings, timed, and its top CUDA kernels);
#  12. GTESTS="tests/... -k expr": those tests on the GPU (pytest), before the rest;
#   7. PYSPY=1 with the py-spy wheel in .gpu/wheels: one more explain run (local executor) under
#      `py-spy record --gil` (which Python holds the interpreter lock), raw stacks per thread.
set -x
R=/tmp/res; mkdir -p $R
DATA=$PWD/data; mkdir -p /tmp/src && tar -xf .gpu/src.tar -C /tmp/src && cp -r .gpu /tmp/src/ && cd /tmp/src
echo "commit $(cat .gpu/src.commit)"
bash bench/real/device.sh true
for w in .gpu/wheels/*.whl; do python3 -m zipfile -e $w /tmp/site; done
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PATH=/tmp/bin:$PATH
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pycache  # see bench/real/device.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
mkdir -p /tmp/data && cp -r $DATA/mitocheck /tmp/data/
if [ -n "$CEILING" ] && ls /tmp/bb/part.* >/dev/null 2>&1; then
  [ -d /tmp/data/bbbc021 ] || cat /tmp/bb/part.* | tar -xf - -C /tmp/data
  IFS='|' read -ra members <<< "$CEILING"; M=(); for m in "${members[@]}"; do M+=(--member "$m"); done
  timeout ${CEILING_TIMEOUT:-300} python3 bench/real/ceiling.py /tmp/data/bbbc021 "${M[@]}" --out $R/bbbc021_ceiling.json 2>&1 | grep -v Warn | tail -12
fi
if [ -n "$ERRORS" ] && ls /tmp/bb/part.* >/dev/null 2>&1; then
  [ -d /tmp/data/bbbc021 ] || cat /tmp/bb/part.* | tar -xf - -C /tmp/data
  timeout ${ERRORS_TIMEOUT:-150} python3 bench/real/errors.py /tmp/data/bbbc021 --out $R/bbbc021_errors.json \
    --montage $R/bbbc021_errors.png ${ERRORS_ARGS} 2>&1 | grep -v Warn | tail -30
fi
if [ -n "$WSTART" ]; then  # a map worker's start-up per loading variant (bench/worker_start.py)
  (cd bench && timeout ${WSTART_TIMEOUT:-200} python3 worker_start.py --device cuda ${WSTART_ARGS} \
    --out $R/worker_start.json 2>&1 | grep -v Warn | grep -E "_s\"|_vs_|Error|variant" | tail -40; \
    echo "worker_start exit ${PIPESTATUS[0]}")
fi
if [ -n "$GTESTS" ]; then  # tests that need a GPU (they skip on the CPU): GTESTS="path -k expr"
  timeout 120 python3 -m pytest -q -p no:cacheprovider -p no:dash.testing.plugin -rA $GTESTS 2>&1 \
    | grep -E "^(PASSED|FAILED|ERROR|SKIPPED)|passed|failed" | tail -12 | tee $R/gtests.txt
fi
if [ -z "$NOEXPLAIN" ]; then
  cat > /tmp/mito3.yaml <<EOF
name: mitocheck
dataset: /tmp/data/mitocheck
folds: {name: k5-group, k: 5, group: group}
space: default
budget: {trials: 3, max_epochs: ${SEARCH_EPOCHS:-40}, grace_epochs: ${SEARCH_EPOCHS:-40}, max_concurrent: 3, race: ${SEARCH_RACE:-epochs}}
resources: {cpus: 1, gpus: 0.33}
objective: {metric: f1_weighted}
loader: inprocess
seed: 0
storage: /tmp/runs
EOF
  t0=$(date +%s%N); timeout 240 cytotune search --config /tmp/mito3.yaml --quiet 2>&1 | grep -v Warn | tail -6
  echo "search wall $(( ($(date +%s%N) - t0) / 1000000 )) ms" | tee -a $R/walls.txt
  k=0
  for e in ${EXECUTORS:-local ray}; do
  for i in $(seq ${RUNS:-2}); do
    t0=$(date +%s%N); k=$((k + 1)); tag=${k}_$e  # a variant named twice keeps both runs
    # local1: the local executor with one worker (no threads)
    # local2: the local executor in two processes sharing the GPU; localq1: the quality's sampled
    # scores in one process; base: the local executor of the code in .gpu/base.tar (a git archive)
    # localt1: population and overlays in threads of this process (no tail processes)
    V=""  # the variant's environment
    case $e in
      local1) V="CYTOTUNE_LOCAL_WORKERS=1";; local2) V="CYTOTUNE_LOCAL_PROCESSES=2";;
      local3) V="CYTOTUNE_LOCAL_PROCESSES=3";;
      localq1) V="CYTOTUNE_QUALITY_PROCESSES=1";; localq3) V="CYTOTUNE_QUALITY_PROCESSES=3";; localt1) V="CYTOTUNE_TAIL_PROCESSES=1";;
      localf0) V="CYTOTUNE_FOLD_NORMS=0";; localw0) V="CYTOTUNE_SIDE_WAIT=0";; localw1) V="CYTOTUNE_SIDE_WAIT=1";;
      localw3) V="CYTOTUNE_LOCAL_WORKERS=3";; localeb0) V="CYTOTUNE_EVEN_BATCHES=0";;
      locals) V="CYTOTUNE_CHECK_TF32=0";;
      localqb) V="CYTOTUNE_CHECK_BF16=1";;
      localexp) V="PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True";;
      localtp8) V="CYTOTUNE_TAIL_PROCESSES=8";; localsp0) V="CYTOTUNE_STAGE_PROCESSES=0";;
      localfb0) V="CYTOTUNE_FOLD_BATCHES=0";; localfm0) V="CYTOTUNE_FOLLOW_MAPS=0";;
    esac
    A=""; [ "$e" = mapsonly ] && A="--stages maps"  # the maps stage alone, nothing beside it
    [ "$e" = qualityonly ] && A="--stages quality"  # the quality stage alone, on the last maps
    case $e in localb128) A="--batch-size 128";; localb256) A="--batch-size 256";; localb512) A="--batch-size 512";; esac
    C="cytotune"; X=local; [ "$e" = ray ] && X=ray
    if [ "$e" = base ]; then
      [ -d /tmp/src_base ] || { mkdir -p /tmp/src_base && tar -xf .gpu/base.tar -C /tmp/src_base; }
      C="env PYTHONPATH=/tmp/site:/tmp/src_base python3 -P -m cytotune.engine.cli"
    fi
    # the GPU's busy share every 100 ms (nvidia-smi's utilization: time with a kernel running)
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits \
      -lms 100 > $R/smi_$tag.csv 2>/dev/null & SMI=$!
    env $V timeout 240 $C explain --study /tmp/runs/mitocheck --top-k 3 --overwrite \
      --executor $X $A ${EXPLAIN_ARGS} > $R/explain_$tag.txt 2>&1
    kill $SMI 2>/dev/null
    echo "explain $e run $i wall $(( ($(date +%s%N) - t0) / 1000000 )) ms (started $t0 ns)" | tee -a $R/walls.txt
    grep -E "^  [a-z]+ +[0-9.]+ s$|^(FAILED|INCONCLUSIVE|error|Traceback)" $R/explain_$tag.txt | tail -12
    cp /tmp/runs/mitocheck/explain/explain.json $R/explain_state_$tag.json
    cp /tmp/runs/mitocheck/explain/quality.parquet $R/quality_$tag.parquet 2>/dev/null  # verdicts, rho
    python3 -c "import json; d=json.load(open('$R/explain_state_$tag.json')); s=d['maps_run']['started']; print({k: round(v, 2) if isinstance(v, float) else v for k, v in d.get('timings', {}).items()}); print('from the maps start:', {k: round(v - s, 1) for k, v in sorted(d.get('marks', {}).items(), key=lambda kv: kv[1])}, 'end', round(d['finished'] - s, 1))"
    mkdir -p $R/workers_$tag && cp /tmp/runs/mitocheck/explain/workers/*.json $R/workers_$tag/ 2>/dev/null
    cp -r /tmp/runs/mitocheck/explain/workers/quality $R/workers_$tag/ 2>/dev/null  # quality tasks
    python3 bench/explain_timeline.py $R/explain_state_$tag.json $R/workers_$tag $R/smi_$tag.csv 2>&1 | tail -8
    rm -rf /tmp/runs/mitocheck/explain/workers  # the next run's workers only
  done
  done
  if [ -n "$CHILDSTART" ]; then  # a stage child's imports and CUDA start, alone and 5 or 9 at once
    timeout 120 python3 bench/child_start.py --out $R/child_start.json 2>&1 | grep -v Warn | tail -4
  fi
  if [ -n "$PASSPROF" ]; then  # one pass per family: maps' bf16 and quality's TF32 settings
    timeout ${PASSPROF_TIMEOUT:-120} python3 bench/pass_profile.py --study /tmp/runs/mitocheck \
      --top-k 3 --out $R/pass_profile.json 2>&1 | grep -v Warn | tail -40
  fi
  if [ -n "$COLD" ]; then  # a worker's first batch cold and warm, in a second thread, a smaller batch
    timeout ${COLD_TIMEOUT:-90} python3 bench/thread_cold.py --study /tmp/runs/mitocheck --top-k 3 \
      --out $R/thread_cold.json 2>&1 | grep -v Warn | tail -14
  fi
  if [ -n "$MPROFILE" ]; then  # the maps stage's pieces, each timed alone
    for f in ${MPROFILE_FOLDS:-1}; do  # CYTOTUNE_FOLD_NORMS of each run
      CYTOTUNE_FOLD_NORMS=$f timeout ${MPROFILE_TIMEOUT:-300} python3 bench/maps_profile.py \
        --study /tmp/runs/mitocheck --top-k 3 --out $R/maps_profile_f$f.json ${MPROFILE_ARGS} 2>&1 \
        | grep -v Warn | tail -${MPROFILE_TAIL:-60}
    done
  fi
  if [ -n "$FOPS" ]; then  # the kernel's operations per cell: a batch of 5 folds vs one of 1
    timeout ${FOPS_TIMEOUT:-120} python3 bench/fold_batch_ops.py --study /tmp/runs/mitocheck \
      --device cuda --out $R/fold_batch_ops.json 2>&1 | grep -v Warn | tail -3
  fi
  if [ -n "$TPROFILE" ]; then  # the tail's pieces: a file write, each pair's figures, the stages
    timeout ${TPROFILE_TIMEOUT:-200} python3 bench/tail_profile.py --study /tmp/runs/mitocheck \
      --out $R/tail_profile.json 2>&1 | grep -v Warn | tail -${TPROFILE_TAIL:-8}
  fi
  if [ -n "$SPRECISION" ]; then  # the sanity check's verdicts in fp32 vs TF32 vs bf16, timed
    timeout ${SPRECISION_TIMEOUT:-300} python3 bench/sanity_precision.py --study /tmp/runs/mitocheck \
      --top-k 3 --out $R/sanity_precision.json 2>&1 | grep -v Warn | tail -8
  fi
  if [ -n "$PYSPY" ]; then  # which Python holds the interpreter lock, per thread (raw stacks)
    S=$(ls /tmp/site/py_spy-*.data/scripts/py-spy | head -1); chmod +x $S
    timeout 240 $S record --gil --threads --subprocesses --rate 200 --format raw -o $R/explain_local.spy.txt -- \
      python3 -m cytotune.engine.cli explain --study /tmp/runs/mitocheck --top-k 3 --overwrite \
      --executor local --quiet ${EXPLAIN_ARGS} 2>&1 | grep -v Warn | tail -6
    python3 bench/spy_summary.py $R/explain_local.spy.txt --by-process --top 30 --under run_maps \
      --under MapWorker --under sample_scores --under _population_of --under run_overlays \
      --under load_fold --under _find_and_load --under population_of --under overlays_of \
      --under map_scores > $R/spy_summary.txt 2>&1; gzip $R/explain_local.spy.txt
    grep -A3 "^====\|-- threads" $R/spy_summary.txt | head -40
  fi
  if [ -n "$PROFILE" ]; then  # where the local job's time goes, by function (cumulative)
    printf 'import sys\nfrom cytotune.engine.cli import main\nsys.exit(main(sys.argv[1:]))\n' > /tmp/cli.py
    timeout 240 python3 -m cProfile -o $R/explain_local.prof /tmp/cli.py explain --study /tmp/runs/mitocheck \
      --top-k 3 --overwrite --executor local --quiet ${PROFILE_ARGS} 2>&1 | grep -v Warn | tail -12
    python3 -c "import pstats; pstats.Stats('$R/explain_local.prof').sort_stats('cumulative').print_stats(45)" | tail -60
    python3 -c "import pstats; pstats.Stats('$R/explain_local.prof').sort_stats('tottime').print_stats(30)" | tail -40
  fi
fi
if [ -n "$SANITY" ]; then
  timeout 150 python3 -m pytest -q -p no:cacheprovider -p no:dash.testing.plugin tests/explainers/test_quality.py 2>&1 | tail -2
  # the same trained weights (saved by the GPU run) and cells, checked on the GPU and on 16 CPU cores
  S="python3 bench/sanity_calibration.py --cells 32 --no-bf16 --models /tmp/sanity-models"
  timeout ${SANITY_TIMEOUT:-150} $S --out /tmp/sanity-gpu --device cuda 2>&1 | grep -v Warn | tail -2
  timeout ${SANITY_TIMEOUT:-150} $S --out /tmp/sanity-cpu --device cpu --threads 16 ${SANITY_CPU_ARGS:---tasks metastasis} 2>&1 | grep -v Warn | tail -2
  cp /tmp/sanity-gpu/calibration.json $R/sanity_calibration_cuda.json; cp /tmp/sanity-cpu/calibration.json $R/sanity_calibration_cpu16.json
  python3 bench/sanity_agreement.py /tmp/sanity-cpu/calibration.json /tmp/sanity-gpu/calibration.json --out $R/sanity_agreement.json 2>&1 | tail -22
fi
[ -n "$MILLION" ] && tar -czf $OUT/res_explain.tgz -C $(dirname $R) $(basename $R)  # kept if the 1M run is cut
if [ -n "$MILLION" ]; then  # about 1M Grad-CAM maps (62,500 cells x 16 trials) vs the kernel
  (cd bench && timeout ${MILLION_TIMEOUT:-300} python3 explain.py --backbone resnet18 --size 64 --cells 62500 \
    --trials 16 --batch 1024 --e2e-batch 1024 --actors-per-gpu 4 --no-worker-loop \
    ${MILLION_ARGS} --out $R/million.json 2>&1 | grep -v Warn | tail -8)
fi
set +x; echo "== whole-command walls"; cat $R/walls.txt 2>/dev/null
tar -czf $OUT/res.tgz -C $(dirname $R) $(basename $R)  # one file: a call returns only a few
