"""The local executor's process per GPU (explainers/job/processes.py): split by cells, every row
group is explained once over the processes; split by trials, every process sees every row group
and holds only its trials; a failing process stops the job with its error; and two processes
(CPUs standing in for two GPUs) store the maps of one."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest

from .test_executor import _explain_copy, _stacked

SCHEMA = pa.schema([("item", pa.int64()), ("pid", pa.int64()), ("devices", pa.string())])


def read_item(items: dict):
    """A stand-in reader: one one-row table per row group, its number as the value."""
    yield pa.table({"item": [int(g) for g in items["row_group"]]})


def tag_rows(tables, devices):
    """A stand-in for the worker threads: each table tagged with the process and its devices."""
    for table in tables:
        n = table.num_rows
        yield pa.table(
            {
                "item": table.column("item"),
                "pid": [os.getpid()] * n,
                "devices": ["+".join(devices)] * n,
            },
            schema=SCHEMA,
        )


def tag_trial(tables, devices, trial):
    """A stand-in for one process's trials: each table tagged with the trial it explained."""
    for table in tag_rows(tables, devices):
        yield table.append_column("trial", pa.array([trial] * table.num_rows))


def fail_in_child(tables, devices):
    if devices == ["cuda:1"]:
        raise ValueError("broken model file")
    yield from tag_rows(tables, devices)


def test_process_devices_one_per_gpu(monkeypatch):
    from cytotune.explainers.job.processes import PROCESSES_ENV, process_devices

    monkeypatch.delenv(PROCESSES_ENV, raising=False)
    assert process_devices(["cpu"]) == [["cpu"]]
    assert process_devices(["cpu", "cpu"]) == [["cpu", "cpu"]]  # threads' stand-ins: one process
    assert process_devices(["cuda:0"]) == [["cuda:0"]]
    assert process_devices(["cuda:0", "cuda:1", "cuda:2"]) == [["cuda:0"], ["cuda:1"], ["cuda:2"]]
    monkeypatch.setenv(PROCESSES_ENV, "2")
    assert process_devices(["cuda:0", "cuda:1", "cuda:2"]) == [["cuda:0", "cuda:2"], ["cuda:1"]]
    assert process_devices(["cuda:0"]) == [["cuda:0"], ["cuda:0"]]  # two share the GPU
    assert process_devices(["cpu"]) == [["cpu"], ["cpu"]]
    monkeypatch.setenv(PROCESSES_ENV, "3")
    assert process_devices(["cuda:0", "cuda:1"]) == [["cuda:0"], ["cuda:1"], ["cuda:0"]]


def test_every_row_group_is_explained_once_over_the_processes():
    from cytotune.explainers.job.processes import spread_over_processes

    items = [{"path": "shard.parquet", "row_group": g} for g in range(40)]
    groups = [["cuda:0"], ["cuda:1"], ["cuda:2"]]
    tables = list(spread_over_processes(groups, items, read_item, tag_rows, SCHEMA))
    rows = pa.concat_tables(tables).to_pylist()
    assert sorted(r["item"] for r in rows) == list(range(40))
    by_devices = {r["devices"]: r["pid"] for r in rows}
    assert by_devices.get("cuda:0", os.getpid()) == os.getpid()  # the first group: this process
    assert all(pid != os.getpid() for d, pid in by_devices.items() if d != "cuda:0")


def test_split_by_trials_every_process_sees_every_row_group():
    import functools

    from cytotune.explainers.job.processes import spread_over_processes

    items = [{"path": "shard.parquet", "row_group": g} for g in range(12)]
    runs = [functools.partial(tag_trial, trial=t) for t in ("a", "b")]
    schema = SCHEMA.append(pa.field("trial", pa.string()))
    rows = pa.concat_tables(
        list(spread_over_processes([["cuda:0"], ["cuda:1"]], items, read_item, runs, schema))
    ).to_pylist()
    for trial, devices in (("a", "cuda:0"), ("b", "cuda:1")):
        mine = [r for r in rows if r["trial"] == trial]
        assert sorted(r["item"] for r in mine) == list(range(12))
        assert {r["devices"] for r in mine} == {devices}
    assert {r["pid"] for r in rows if r["trial"] == "b"} != {os.getpid()}


def test_trials_are_dealt_by_checkpoint_size(tmp_path):
    from cytotune.explainers.job.processes import trial_shares

    sizes = {"t1": 900, "t2": 500, "t3": 400, "t4": 300, "t5": 100}
    units = {}
    for trial, size in sizes.items():
        folds = {}
        for fold in (0, 1):
            directory = tmp_path / trial / f"fold_{fold}"
            directory.mkdir(parents=True)
            (directory / "model.pt").write_bytes(b"x" * size)
            folds[fold] = str(directory)
        units[trial] = folds
    # largest first, each to the less loaded process (per fold): t1 -> 900 | t2 -> 500, t3 ->
    # 900 | t4 -> 1,200 (a tie goes to the first) | t5 -> 1,000: the best split there is
    assert trial_shares(units, 2) == [["t1", "t4"], ["t2", "t3", "t5"]]
    assert trial_shares(units, 3) is None  # under 2 trials a process: the cells are split


def test_a_failing_process_stops_the_job_with_its_error():
    from cytotune.explainers.job.processes import spread_over_processes

    items = [{"path": "shard.parquet", "row_group": g} for g in range(4)]
    with pytest.raises(RuntimeError, match="broken model file"):
        list(
            spread_over_processes([["cuda:0"], ["cuda:1"]], items, read_item, fail_in_child, SCHEMA)
        )


@pytest.mark.parametrize("split", ["cells", "trials"])
def test_two_processes_store_the_maps_of_one(trained_study, tmp_path, monkeypatch, split):
    """Two processes (two CPUs standing in for two GPUs) explain the study's cells, splitting
    the cells (2 trials) or the trials (3, one trial a process enough here): the map tables
    equal, bit for bit, those of one process, and both processes held models."""
    from cytotune.explainers.job import processes

    monkeypatch.setenv("CYTOTUNE_LOCAL_WORKERS", "1")
    top_k = 2 if split == "cells" else 3
    monkeypatch.setattr(processes, "SPLIT_TRIALS_FROM", 2 if split == "cells" else 1)
    results = {}
    for count in ("1", "2"):
        monkeypatch.setenv(processes.PROCESSES_ENV, count)
        _, _, maps = _explain_copy(
            trained_study, tmp_path / count, methods=("gradcam",), stages=("maps",),
            executor="local", top_k=top_k,
        )  # fmt: skip
        reports = (tmp_path / count / "explain" / "workers").glob("*.json")
        results[count] = maps, {json.loads(p.read_text())["pid"] for p in reports}
    (one, one_pids), (two, two_pids) = results["1"], results["2"]
    assert one_pids == {os.getpid()}
    assert len(two_pids) == 2
    assert os.getpid() in two_pids
    assert len(one) == top_k
    assert one.keys() == two.keys()
    for part, table in one.items():
        assert table["cell_id"].tolist() == two[part]["cell_id"].tolist()
        np.testing.assert_array_equal(_stacked(table), _stacked(two[part]))


SLEEPER = """
import os, time


def sleeper(path):
    open(path, "w").write(str(os.getpid()))
    time.sleep(300)
"""

# an unguarded script, as a user's might be: a stage child must not run it again
PARENT = """
import sys, threading
sys.path.insert(0, sys.argv[2])  # the child imports the sleeper from here too
from cytotune.explainers.job.processes import call_in_process, map_in_threads
from sleeper import sleeper

# as run_quality does: a stage's daemon thread waits on children through map_in_threads
threading.Thread(
    target=map_in_threads, args=(call_in_process, [(sleeper, sys.argv[1])], 1), daemon=True
).start()
threading.Event().wait()  # the main thread waits, as run_stages does, until a signal
"""


def _start_parent(tmp_path):
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "sleeper.py").write_text(SLEEPER)
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [sys.executable, str(script), str(pid_file), str(tmp_path / "lib")], cwd=tmp_path
    )
    for _ in range(600):  # the child writes its pid once it runs (imports take seconds)
        if pid_file.is_file() and pid_file.read_text():
            return parent, int(pid_file.read_text())
        time.sleep(0.1)
    parent.kill()
    raise AssertionError("the child process never started")


def _gone(pid: int) -> bool:
    import time

    for _ in range(300):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # an exited child not yet reaped is a zombie
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().split(")")[-1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGKILL"])
def test_a_stage_child_does_not_outlive_its_parent(tmp_path, signal_name):
    """A signal to the explain process alone (not its process group) ends it and its stage
    child, even from an unguarded script: SIGINT exits at once (the waiting threads are
    daemons), SIGINT and SIGKILL leave no orphan (the child watches its parent)."""
    import signal
    import subprocess

    parent, child = _start_parent(tmp_path)
    try:
        parent.send_signal(getattr(signal, signal_name))
        parent.wait(timeout=120)  # the child sleeps 300 s: waiting for it would time out here
    except subprocess.TimeoutExpired:
        parent.kill()
        raise
    finally:
        if not _gone(child):
            os.kill(child, signal.SIGKILL)
            raise AssertionError(f"the stage child outlived its parent ({signal_name})")


def test_side_stages_go_to_processes_on_a_large_gpu_only(monkeypatch):
    from cytotune.explainers.job import processes

    monkeypatch.delenv(processes.STAGE_PROCESSES_ENV, raising=False)
    monkeypatch.setattr(processes, "gpu_memory_gib", lambda d: {"cuda:0": 80.0, "cuda:1": 8.0}[d])
    assert not processes.side_stages_in_processes(["cpu"])
    assert processes.side_stages_in_processes(["cuda:0"])
    assert not processes.side_stages_in_processes(["cuda:1"])  # 8 GiB: threads
    assert not processes.side_stages_in_processes(["cuda:0", "cuda:1"])  # the smallest decides
    monkeypatch.setenv(processes.STAGE_PROCESSES_ENV, "1")
    assert processes.side_stages_in_processes(["cpu"])
    monkeypatch.setenv(processes.STAGE_PROCESSES_ENV, "0")
    assert not processes.side_stages_in_processes(["cuda:0"])


def test_warm_stage_processes_are_used_first_and_the_rest_ended():
    """Children started early (their imports beside the job's start) take the first calls; the
    ones no stage took are ended."""
    from cytotune.explainers.job import processes

    processes.warm_processes(2)
    warm = [processes._WARM.get_nowait() for _ in range(2)]
    for child in warm:
        processes._WARM.put(child)
    pid = processes.call_in_process(os.getpid, name="cytotune-test")
    assert pid == warm[0][0].pid  # the first warm child did the work
    assert warm[1][0].poll() is None  # the other still waits
    processes.discard_warm()
    assert processes._WARM.empty()
    assert warm[1][0].returncode is not None  # ended


def test_tail_processes_default_to_threads_below_8_cores(monkeypatch):
    from cytotune.explainers.job import processes

    monkeypatch.delenv(processes.TAIL_PROCESSES_ENV, raising=False)
    for cores, expected in ((2, 1), (7, 1), (8, 2), (16, 4), (128, 4)):
        monkeypatch.setattr(processes, "usable_cores", lambda cores=cores: cores)
        assert processes.tail_processes() == expected
    for value, expected in (("", 4), ("3", 3), ("0", 1)):  # empty: the default (16 cores: 4)
        monkeypatch.setenv(processes.TAIL_PROCESSES_ENV, value)
        assert processes.tail_processes() == expected
    monkeypatch.delenv(processes.TAIL_PROCESSES_ENV)
    monkeypatch.setattr(processes.os, "name", "nt")  # no pass_fds: threads
    assert processes.tail_processes() == 1
    monkeypatch.setattr(processes.os, "name", "posix")
    monkeypatch.setenv(processes.TAIL_PROCESSES_ENV, "two")
    with pytest.raises(ValueError, match="CYTOTUNE_TAIL_PROCESSES='two': give a whole number"):
        processes.tail_processes()


class _FakeChild:
    """A warm child that costs nothing: what discard_warm needs of a Popen."""

    def __init__(self):
        self.killed = False
        self.stdin = type("Pipe", (), {"close": lambda self: None})()

    def kill(self):
        self.killed = True

    def wait(self):
        return -9


def test_warm_early_guesses_a_gpu_host_and_the_job_trims_the_guess(monkeypatch):
    """The command starts the side stages' children before its imports where /dev shows an
    NVIDIA GPU (not hidden by CUDA_VISIBLE_DEVICES) or CYTOTUNE_STAGE_PROCESSES says so; the
    job then keeps as many as it confirms and ends the rest, or starts the missing ones."""
    from cytotune.explainers.job import processes
    from cytotune.explainers.job.config import ExplainConfig

    started: list[_FakeChild] = []

    def fake_start(name, warm=False, imports=(), cuda=False):
        assert warm  # the side stages' imports
        assert cuda  # then CUDA started
        started.append(_FakeChild())
        return started[-1], os.pipe()[0]

    monkeypatch.setattr(processes, "_start_child", fake_start)
    monkeypatch.delenv(processes.STAGE_PROCESSES_ENV, raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(processes.QUALITY_PROCESSES_ENV, raising=False)
    config = ExplainConfig(study="unused", top_k=3, executor="local")
    devices: list[str] = []
    monkeypatch.setattr("glob.glob", lambda pattern: list(devices))
    assert processes.warm_early(config) == 0  # no GPU device: nothing started
    assert started == []
    devices.append("/dev/nvidia0")
    # prototypes + attention + one per trial (3: QUALITY_PROCESSES)
    assert processes.warm_early(config) == 5 == processes._WARM.qsize() == len(started)
    processes.warm_processes(3)  # the job wants 3: the 2 started last are ended
    assert processes._WARM.qsize() == 3
    assert [c.killed for c in started] == [False, False, False, True, True]
    processes.warm_processes(4)  # one more wanted: one more started
    assert processes._WARM.qsize() == 4
    assert len(started) == 6
    processes.discard_warm()
    assert processes._WARM.empty()
    assert all(c.killed for c in started)
    for hidden in ("", "-1", "-1,0", "NoDevFiles", "none"):  # no GPU for CUDA in this process
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert processes.warm_early(config) == 0
    for shown in ("0", "1,0", "GPU-8d2f", "MIG-4a1c"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", shown)
        assert processes.warm_early(config) == 5
        processes.discard_warm()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv(processes.STAGE_PROCESSES_ENV, "1")  # told: no guess
    assert processes.warm_early(config) == 5
    processes.discard_warm()
    monkeypatch.setenv(processes.STAGE_PROCESSES_ENV, "0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert processes.warm_early(config) == 0
    ray_config = ExplainConfig(study="unused", top_k=3, executor="ray")
    monkeypatch.delenv(processes.STAGE_PROCESSES_ENV)
    assert processes.warm_early(ray_config) == 0  # Ray actors: no side processes


def test_prestarted_children_import_their_stage_and_are_taken_first():
    """Children started ahead of their stage (prestart) have imported its module, are taken
    by the stage's calls before any other, and the ones left are ended."""
    from cytotune.explainers.job import processes

    name, module = "cytotune-test-ready", "cytotune.explainers.job.overlays"
    processes.prestart(name, 2, (module,))
    ready = [processes._READY[name].get_nowait() for _ in range(2)]
    for child in ready:
        processes._READY[name].put(child)
    assert processes.call_in_process(processes.imported, module, name=name)
    assert ready[0][0].returncode == 0  # the first prestarted child answered, then ended
    assert ready[1][0].poll() is None  # the other still waits
    # a plain child (another name) starts cold: it has not imported the module
    assert not processes.call_in_process(processes.imported, module, name="cytotune-test")
    processes.discard_ready()
    assert processes._READY[name].empty()
    assert ready[1][0].returncode is not None  # ended


def test_overlay_processes_wanted_follow_the_tail_processes(monkeypatch):
    """The overlays' processes prestarted: one per (trial, method) pair up to tail_processes(),
    none where they would draw in threads here (one process), with no overlays or on Ray."""
    from cytotune.explainers.job import processes
    from cytotune.explainers.job.config import ExplainConfig

    def wanted(tail, **config):
        monkeypatch.setattr(processes, "tail_processes", lambda: tail)
        return processes.overlay_processes_wanted(
            ExplainConfig(study="unused", executor=config.pop("executor", "local"), **config)
        )

    assert wanted(4, top_k=3) == 4  # 15 pairs (5 methods each)
    assert wanted(8, top_k=3) == 8
    assert wanted(2, top_k=3) == 2
    assert wanted(4, trials=("a", "b"), methods=("gradcam",)) == 2
    assert wanted(1, top_k=3) == 0  # threads here
    assert wanted(4, top_k=1, methods=("gradcam",)) == 0  # one pair: one job, drawn here
    assert wanted(4, top_k=1) == 4
    assert wanted(4, top_k=3, overlays=0) == 0
    assert wanted(4, top_k=3, stages=("maps", "population")) == 0
    assert wanted(4, top_k=3, executor="ray") == 0


def test_prestarted_children_a_stage_does_not_deal_to_are_ended_when_it_starts(monkeypatch):
    """A stage that deals fewer jobs than children were prestarted for it (here one job,
    drawn in threads here) ends them when it starts, not at the job's end."""
    from cytotune.explainers.job import processes

    monkeypatch.setattr(processes, "tail_processes", lambda: 4)
    processes.prestart("cytotune-explain-teststage", 2, ())
    ready = [processes._READY["cytotune-explain-teststage"].get_nowait() for _ in range(2)]
    for child in ready:
        processes._READY["cytotune-explain-teststage"].put(child)
    assert processes.map_in_processes(divmod, [(7, 2)], 1, "teststage") == [(3, 1)]
    assert processes._READY["cytotune-explain-teststage"].empty()
    assert all(child.returncode is not None for child, _ in ready)  # ended


def test_each_local_worker_records_its_first_batch(trained_study, tmp_path, monkeypatch):
    """With several worker threads, every worker that explained a batch says in its report
    when its first batch started and was written, after its models were ready (the timeline
    bench/explain_timeline.py reads)."""
    monkeypatch.setenv("CYTOTUNE_LOCAL_WORKERS", "2")
    _explain_copy(
        trained_study, tmp_path / "study", methods=("gradcam",), stages=("maps",), executor="local",
        top_k=1, batch_size=8,
    )  # fmt: skip
    reports = [
        json.loads(p.read_text())
        for p in (tmp_path / "study" / "explain" / "workers").glob("*.json")
    ]
    assert len(reports) == 2
    for report in reports:
        assert report["ready"] <= report["first_batch_start"] <= report["first_batch_done"]
        assert report["first_batch_done"] <= report["done"]


def test_a_child_told_to_start_cuda_still_runs_its_work_without_a_gpu():
    """A child started with CUDA asked for (the warm ones) works on a host without a GPU too:
    the start is skipped."""
    from cytotune.explainers.job import processes

    name = "cytotune-test-cuda"
    processes._READY.setdefault(name, __import__("queue").SimpleQueue()).put(
        processes._start_child(name, cuda=True)
    )
    assert processes.call_in_process(divmod, 9, 4, name=name) == (2, 1)


def test_even_padded_batches_store_the_maps_of_plain_ones(trained_study, tmp_path, monkeypatch):
    """Batches cut evenly and padded to one size (CYTOTUNE_EVEN_BATCHES=1, the GPU default)
    store the same cells and maps as plain ones (the padded rows' maps dropped): every cell
    once, maps equal to float rounding (the same rows in batches of another size)."""
    from cytotune.explainers.job import maps as maps_module
    from cytotune.explainers.job.worker import MapWorker

    seen: list[tuple[int, int | None]] = []  # (cells of a batch, pad_to) of every batch
    explain = MapWorker.explain

    def recorded(self, table):
        seen.append((table.num_rows, self.pad_to))
        return explain(self, table)

    monkeypatch.setattr(MapWorker, "explain", recorded)
    monkeypatch.setenv("CYTOTUNE_LOCAL_WORKERS", "1")
    results = {}
    for flag in ("0", "1"):
        monkeypatch.setenv(maps_module.EVEN_BATCHES_ENV, flag)
        _, _, results[flag] = _explain_copy(
            trained_study, tmp_path / flag, stages=("maps",), executor="local", top_k=2,
            methods=("gradcam", "saliency", "integrated_gradients:n_steps=4"), batch_size=7,
        )  # fmt: skip
    plain, even = results["0"], results["1"]
    padded = [n for n, pad_to in seen if pad_to and pad_to / 2 <= n < pad_to]
    assert padded  # some batch was padded, so the comparison covers it
    assert len({pad_to for n, pad_to in seen if pad_to}) == 1  # one size for the job
    assert plain.keys() == even.keys()
    assert len(plain) == 6
    for part, table in plain.items():
        assert table["cell_id"].tolist() == even[part]["cell_id"].tolist()
        assert table["cell_id"].is_unique
        np.testing.assert_allclose(_stacked(table), _stacked(even[part]), rtol=1e-4, atol=1e-5)
        for column in ("confidence", "mass_cell"):
            np.testing.assert_allclose(table[column], even[part][column], rtol=1e-4, atol=1e-5)
        assert table["prediction"].tolist() == even[part]["prediction"].tolist()


def test_even_padded_batches_of_a_regression_study_keep_every_target(tmp_path, monkeypatch):
    """Two targets, two worker threads: padded batches (CYTOTUNE_EVEN_BATCHES=1) store the
    cells, targets, predicted values and maps of plain ones."""
    from cytotune.explainers.job import maps as maps_module

    from tests.studies import make_study, regression_dataset, sample

    dataset = regression_dataset(tmp_path / "reg", n=48)
    study = make_study(tmp_path / "studies", dataset, {"reg": sample("small_cnn")}, "r2", "k2")
    monkeypatch.setenv("CYTOTUNE_LOCAL_WORKERS", "2")
    frames = {}
    for flag in ("0", "1"):
        monkeypatch.setenv(maps_module.EVEN_BATCHES_ENV, flag)
        _, _, frames[flag] = _explain_copy(
            study, tmp_path / flag, stages=("maps",), executor="local", top_k=1,
            methods=("saliency", "gradcam"), batch_size=5,
        )  # fmt: skip
    for part, table in frames["0"].items():
        other = frames["1"][part].sort_values(["cell_id", "target_index"]).reset_index(drop=True)
        table = table.sort_values(["cell_id", "target_index"]).reset_index(drop=True)
        assert len(table) == 2 * 48  # every cell once per target
        assert table[["cell_id", "target_index"]].equals(other[["cell_id", "target_index"]])
        np.testing.assert_allclose(table["predicted_value"], other["predicted_value"], rtol=1e-5)
        np.testing.assert_allclose(_stacked(table), _stacked(other), rtol=1e-4, atol=1e-5)


def test_take_is_a_view_only_for_an_increasing_contiguous_run():
    """A padded row list ([0, 5, 0, 5, ...]) spans as many rows as it has, but is no run."""
    from cytotune.explainers.job.worker import take

    array = np.arange(10) * 10
    np.testing.assert_array_equal(take(array, np.resize([0, 5], 6)), [0, 50, 0, 50, 0, 50])
    np.testing.assert_array_equal(take(array, np.array([2, 3, 4])), [20, 30, 40])
    assert take(array, np.array([2, 3, 4])).base is array  # a view


def test_a_bad_quality_processes_value_says_what_to_give(monkeypatch):
    from cytotune.explainers.job import processes

    monkeypatch.setenv(processes.QUALITY_PROCESSES_ENV, "two")
    with pytest.raises(ValueError, match="CYTOTUNE_QUALITY_PROCESSES='two': give a whole number"):
        processes.quality_processes()
    monkeypatch.setenv(processes.QUALITY_PROCESSES_ENV, "2")
    assert processes.quality_processes() == 2
    monkeypatch.setenv(processes.QUALITY_PROCESSES_ENV, "")
    assert processes.quality_processes() == processes.QUALITY_PROCESSES
