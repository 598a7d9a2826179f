# The GPU call behind BENCHMARKS.md "Search vs a hand-written training loop" (run through the device tool with carry [".gpu", "data/mitocheck"]).
set -x
R=/tmp/res; mkdir -p $R
V="bash bench/real/device.sh python bench/vs_plain.py --data /tmp/data --runs /tmp/runs --out $R/vs_plain.json --gpus-per-trial 1 --max-concurrent 1"
mkdir -p /tmp/data && cp -r data/mitocheck /tmp/data/
$V --datasets mitocheck --budget-factor 2 2>&1 | grep -v Warn | tail -3
$V --datasets mitocheck --budget-factor 3 2>&1 | grep -v Warn | tail -3
$V --datasets metastasis --budget-factor 3 2>&1 | grep -v Warn | tail -3
cp -r $R $OUT/ ; for d in /tmp/runs/vs-plain-*/; do n=$(basename $d); mkdir -p $OUT/$n; cp $d/trials.parquet $d/study.json $OUT/$n/; done
