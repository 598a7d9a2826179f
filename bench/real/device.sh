#!/usr/bin/env bash
# On the project's lent GPU machine: unpack the Ray/Optuna/captum bundle made by
# `bash ../shared/tools/gpu-bundle.sh` (carried as .gpu/) once, put a `cytotune` command on PATH
# (the checkout is not pip-installed there), then run the arguments.
#   bash bench/real/device.sh env STAGES=search bash bench/real/study.sh mitocheck
set -euo pipefail
[ -d /tmp/site/ray ] || { mkdir -p /tmp/site && tar -xJf .gpu/site312.tar.xz -C /tmp/site; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# the machine's site-packages keep no compiled modules: a profile showed every process (each Ray
# worker too) compiling about 870 modules (torch._dynamo, which timm imports, and more) from
# source, 3-4 s each time. A pip-installed venv has them; keep ours in /tmp across processes.
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX=/tmp/pycache
# compile them once, before anything is timed, as `pip install` does for a venv (otherwise the
# first run of a benchmark pays for it and the runs after it do not)
[ -f /tmp/pycache/.warm ] || { python3 -c "import cytotune.engine.cli, cytotune.engine.search.trainable, cytotune.explainers.job.runner, timm, captum, optuna, ray.tune, ray.data" && touch /tmp/pycache/.warm; }
mkdir -p /tmp/bin
printf '#!/bin/sh\nexec python3 -c "import sys; from cytotune.engine.cli import entry; entry(sys.argv[1:])" "$@"\n' > /tmp/bin/cytotune
chmod +x /tmp/bin/cytotune
command -v python >/dev/null || ln -sf "$(command -v python3)" /tmp/bin/python
export PATH=/tmp/bin:$PATH
"$@"
