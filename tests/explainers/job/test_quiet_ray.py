"""What the user sees of Ray: a line while it starts, none of Ray Data's internal notices."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import pyarrow as pa
    import ray

    from cytotune.engine.cluster import ensure_ray
    from cytotune.explainers.job.pool import run_actor_pool

    class Count:
        def __init__(self, scale):
            self.scale = scale

        def __call__(self, batch):
            return pa.table({"rows": [batch.num_rows * self.scale]})

    ensure_ray(num_cpus=2)
    ds = ray.data.range(64, override_num_blocks=4)
    batches = run_actor_pool(ds, {"scale": 1}, actors=1, gpus_per_actor=0, batch_size=16, worker=Count)
    print("rows", sum(b.column("rows")[0].as_py() for b in batches))
    """
)


def test_actor_pool_run_shows_ray_starting_and_no_ray_internal_notices(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "rows 64" in out
    assert "starting a local Ray instance" in out
    assert "Ray ready in" in out
    assert "constructor arguments in the object store" not in out, out
    assert "Progress bars disabled" not in out, out
    assert "deprecated" not in out, out
