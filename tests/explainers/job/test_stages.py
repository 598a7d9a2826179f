"""The explain job's stages run side by side where they do not read each other's outputs."""

from __future__ import annotations

import threading
import time

import pytest
from cytotune.explainers.job import runner


class _Config:
    stages = ("maps", "population", "quality", "overlays", "prototypes", "attention")


class _State:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def time(self, stage: str, seconds: float) -> None:
        self.timings[stage] = seconds


def _fake_stages(monkeypatch, fail: str | None = None):
    """Stages that record when they started and ended; ``maps`` waits until the prototype and
    quality stages have started (it would wait forever if they ran one after the other)."""
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    started = {"prototypes": threading.Event(), "quality": threading.Event()}

    def stage(name):
        def run(plan, config, state, progress, ready=None):
            with lock:
                events.append(("start", name))
            if name in started:
                started[name].set()
            if ready is not None:  # a stage that waits for what it reads itself
                ready()
                with lock:
                    events.append(("ready", name))
            if name == "maps":
                for other, event in started.items():
                    assert event.wait(10), f"the {other} stage did not start beside maps"
                time.sleep(0.05)
            if name == fail:
                raise RuntimeError(f"{name} broke")
            with lock:
                events.append(("end", name))

        return run

    monkeypatch.setattr(runner, "STAGES", {name: stage(name) for name in runner.STAGES})
    return events


def test_stages_start_once_what_they_read_is_done(monkeypatch):
    events = _fake_stages(monkeypatch)
    state = _State()
    runner.run_stages(None, _Config(), state, progress=False, log=lambda _m: None)
    order = {event: i for i, event in enumerate(events)}
    for name in ("overlays", "attention"):  # attention: after, off the maps' lock
        assert order[("start", name)] > order[("end", "maps")], name
    assert order[("start", "prototypes")] < order[("end", "maps")]
    for name in ("quality", "population"):  # start beside the maps, read them after
        assert order[("start", name)] < order[("end", "maps")] < order[("ready", name)]
    assert set(state.timings) == {f"stage/{name}" for name in _Config.stages}


def test_a_failed_stage_stops_its_readers_and_the_others_finish(monkeypatch):
    events = _fake_stages(monkeypatch, fail="maps")
    with pytest.raises(RuntimeError, match="maps broke"):
        runner.run_stages(None, _Config(), _State(), progress=False, log=lambda _m: None)
    started = {name for kind, name in events if kind == "start"}
    assert started == {"maps", "prototypes", "attention", "quality", "population"}  # wait inside
    assert ("ready", "quality") not in events
    assert ("ready", "population") not in events
    assert ("end", "prototypes") in events
    assert ("end", "attention") in events  # it reads nothing of the maps: it runs after them


def test_ctrl_c_stops_the_job_while_a_stage_still_runs(monkeypatch):
    """The caller's wait is interruptible: Ctrl-C surfaces while a stage is still busy (the
    stages run in daemon threads), as when the stages ran in the caller's thread."""
    import signal

    release, finished, started = threading.Event(), threading.Event(), threading.Event()

    def busy(plan, config, state, progress):
        started.set()
        release.wait(30)
        finished.set()

    def interrupt():
        started.wait(10)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    stages = {name: (lambda *a: None) for name in runner.STAGES} | {"maps": busy}
    monkeypatch.setattr(runner, "STAGES", stages)
    # Python's own Ctrl-C handler (a Ray driver started by an earlier test may have replaced it)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=interrupt, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run_stages(None, _Config(), _State(), progress=False, log=lambda _m: None)
        assert not finished.is_set()  # the maps stage was still running
        running = [t for t in threading.enumerate() if t.name == "explain-maps"]
        assert running
        assert all(t.daemon for t in running)  # it does not keep the process alive
    finally:
        release.set()
        signal.signal(signal.SIGINT, previous)


def test_side_work_waits_for_the_maps_warm_signal_which_every_maps_ending_gives(monkeypatch):
    """With CYTOTUNE_SIDE_WAIT=1 the side stages' GPU work starts once the maps are warm: the
    maps stage sets the signal at its first batch (run_maps) and, at the latest, when it ends
    or fails; a job without a maps stage never blocks on it."""
    from cytotune.explainers.job.processes import wait_for_maps

    monkeypatch.setenv("CYTOTUNE_SIDE_WAIT", "1")
    for fail, stages in ((None, _Config.stages), ("maps", _Config.stages), (None, ("prototypes",))):
        events: list[str] = []

        def maps(plan, config, state, progress, events=events, fail=fail):
            time.sleep(0.05)
            events.append("maps ended")
            if fail:
                raise RuntimeError("maps broke")

        def side(plan, config, state, progress, ready=None, events=events):
            wait_for_maps(state)
            events.append("side work")

        stages_ = {name: (lambda *a, **k: None) for name in runner.STAGES}
        monkeypatch.setattr(runner, "STAGES", stages_ | {"maps": maps, "prototypes": side})
        state = _State()
        state.maps_warm = threading.Event()
        config = type("C", (), {"stages": stages})()
        if fail:
            with pytest.raises(RuntimeError, match="maps broke"):
                runner.run_stages(None, config, state, progress=False, log=lambda _m: None)
        else:
            runner.run_stages(None, config, state, progress=False, log=lambda _m: None)
        expected = ["maps ended", "side work"] if "maps" in stages else ["side work"]
        assert events == expected
        assert state.maps_warm.is_set()


def test_side_wait_switch(monkeypatch):
    from cytotune.explainers.job.processes import side_work_waits, wait_for_maps

    monkeypatch.delenv("CYTOTUNE_SIDE_WAIT", raising=False)
    assert not side_work_waits()  # off by default
    monkeypatch.setenv("CYTOTUNE_SIDE_WAIT", "")  # empty: the default
    assert not side_work_waits()
    monkeypatch.setenv("CYTOTUNE_SIDE_WAIT", "1")
    assert side_work_waits()
    monkeypatch.setenv("CYTOTUNE_SIDE_WAIT", "0")
    unset = _State()
    unset.maps_warm = threading.Event()
    wait_for_maps(unset)  # returns at once: the switch is off
    assert not unset.maps_warm.is_set()
    monkeypatch.setenv("CYTOTUNE_SIDE_WAIT", "later")
    with pytest.raises(ValueError, match="CYTOTUNE_SIDE_WAIT='later': give 1 .on. or 0"):
        side_work_waits()


def test_process_started_is_the_spawn_not_the_call():
    """The ``command`` mark (the process's start, from /proc) of a child that waits 1 s before
    asking: within /proc's 1/100 s after the parent spawned it, not when it asked."""
    import subprocess
    import sys

    code = (
        "import time; time.sleep(1.0); "
        "from cytotune.explainers.job.runner import process_started; print(process_started())"
    )
    before = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    started = float(out.stdout)
    assert before - 0.02 <= started < before + 0.6  # the interpreter's start, not 1 s later
