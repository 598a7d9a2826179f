"""The local executor on several GPUs: one process per GPU, the worker threads inside each.

Threads of one process share one interpreter lock. On a GPU-heavy job (224 px ResNet-50
Grad-CAM of 16 trials) one process explained 9,300 maps/s on one H200 and 8,500 on two: the
Python between the kernels (module calls, hooks, Arrow columns) is what the second GPU waited
on. This process keeps the first GPU; a spawned process per further GPU holds its own fold
models and writes its own map parts, so only row-group names and per-part row counts cross
between processes.

The work is split by trial where there are at least two trials per process: each process
reads every cell but loads only its trials' fold models (loading them was the part of the start
that more GPUs did not shorten: 6.5-15.8 s of 24-32 checkpoints), with the trials dealt out by
the size of their checkpoints. With fewer trials the cells are split: row groups from one shared
queue, so a faster GPU takes more.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa

PROCESSES_ENV = "CYTOTUNE_LOCAL_PROCESSES"


def process_devices(devices: list[str] | None = None) -> list[list[str]]:
    """The devices of each local process: one process per GPU (``CYTOTUNE_LOCAL_PROCESSES``
    sets how many; more than the GPUs share them in turn). On the CPU one process, unless told:
    several then stand in for GPUs."""
    from . import executor

    devices = devices if devices is not None else executor.local_devices()
    value = os.environ.get(PROCESSES_ENV)
    gpus = [d for d in devices if d != "cpu"]
    if not gpus:
        count = max(1, int(value)) if value else 1
        return [list(devices)] if count == 1 else [["cpu"] for _ in range(count)]
    count = max(1, int(value)) if value else len(gpus)
    if count > len(gpus):  # asked for: processes share the GPUs (each its own interpreter lock)
        return [[gpus[i % len(gpus)]] for i in range(count)]
    return [gpus[i::count] for i in range(count)]


def queued_tables(items, read: Callable[[dict], Iterator[pa.Table]], stop: threading.Event):
    """Tables of the row groups taken from ``items`` (a queue shared by the processes) until
    its end marker (None) or ``stop``."""
    while not stop.is_set():
        item = items.get()
        if item is None:
            return
        yield from read({"path": [item["path"]], "row_group": [item["row_group"]]})


def run_device_process(devices, read, run_threads, items, results, stop=None) -> None:
    """One process's share: its worker threads on ``devices`` explain the row groups it takes
    from ``items``; each batch's summary rows, then ``("done", None)`` (or ``("error", text)``),
    go to ``results``."""
    from .executor import prefetch

    if stop is None:  # a spawned process (the parent's own thread passes its stop event)
        exit_with_parent()
    stop = stop or threading.Event()
    try:
        tables = prefetch(queued_tables(items, read, stop))
        for summary in run_threads(tables, devices):
            results.put(("summary", summary.to_pylist()))
        results.put(("done", None))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        results.put(("error", traceback.format_exc()))


# trials per process from which the trials are split, not the cells: with fewer, the shares can
# be too uneven (one ResNet-50 against one ResNet-18) and each process loads few models anyway
SPLIT_TRIALS_FROM = 2


def trial_shares(units: dict[str, dict], processes: int) -> list[list[str]] | None:
    """The trials of each process, dealt largest first to the least loaded process, a trial's
    size being its checkpoints' bytes (parameters: a proxy of the work per cell); None when
    there are fewer than ``SPLIT_TRIALS_FROM`` trials per process (then the cells are split)."""
    if len(units) < SPLIT_TRIALS_FROM * processes:
        return None

    sizes = {
        trial: sum(path.stat().st_size for d in folds.values() for path in Path(d).glob("*.pt"))
        for trial, folds in units.items()
    }
    shares: list[list[str]] = [[] for _ in range(processes)]
    loads = [0] * processes
    for trial in sorted(units, key=lambda t: (-sizes[t], t)):
        least = loads.index(min(loads))
        shares[least].append(trial)
        loads[least] += max(1, sizes[trial])
    return shares


def spread_over_processes(
    groups: list[list[str]], items: list[dict], read, runs, schema: pa.Schema
) -> Iterator[pa.Table]:
    """Summary tables of ``items`` (row groups) explained by one process per device group:
    this process takes ``groups[0]`` (in a thread), a spawned one each of the others.

    ``runs`` is one ``(tables, devices) -> summary tables`` callable that every process runs on
    its share of the row groups (a shared queue: the cells are split), or one callable per
    process that each runs on every row group (the trials are split). ``read`` (item dict ->
    tables) and the callables must pickle (module-level functions, ``functools.partial``)."""
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    results = context.Queue()
    if callable(runs):
        work = context.Queue()
        queues, runs = [work] * len(groups), [runs] * len(groups)
        for item in items:
            work.put(item)
        for _ in groups:
            work.put(None)  # one end marker per process
    else:
        queues = [context.Queue() for _ in groups]
        for queue_ in queues:
            for item in items:
                queue_.put(item)
            queue_.put(None)
    children = [
        context.Process(
            target=run_device_process,
            args=(devices, read, run, work, results),
            name=f"cytotune-explain-{'+'.join(devices)}",
            daemon=True,
        )
        for devices, run, work in zip(groups[1:], runs[1:], queues[1:], strict=True)
    ]
    for child in children:
        child.start()
    stop = threading.Event()
    own = threading.Thread(
        target=run_device_process,
        args=(groups[0], read, runs[0], queues[0], results, stop),
        name="explain-own-devices",
        daemon=True,
    )
    own.start()
    running = len(groups)
    try:
        while running:
            try:
                kind, payload = results.get(timeout=1.0)
            except queue.Empty:
                for child in children:
                    if child.exitcode not in (None, 0):
                        raise RuntimeError(
                            f"the explain process {child.name} died (exit code {child.exitcode}); "
                            "its unfinished parts are recomputed when the job runs again"
                        ) from None
                continue
            if kind == "done":
                running -= 1
            elif kind == "error":
                raise RuntimeError(f"an explain process failed:\n{payload}")
            else:
                yield pa.Table.from_pylist(payload, schema=schema)
    finally:
        stop.set()
        for child in children:
            if child.is_alive():
                child.terminate()
            child.join(timeout=10)
        own.join(timeout=60)


STAGE_PROCESSES_ENV = "CYTOTUNE_STAGE_PROCESSES"
# GPU memory from which the side work gets processes (the MitoCheck job's 5 processes fit an H100)
SIDE_PROCESSES_MIN_GIB = 20.0


def side_stages_in_processes(devices: list[str] | None = None) -> bool:
    """Whether the local executor runs the work that goes beside the maps (the prototype figures,
    the quality stage's sampled scores) in spawned processes of its own.

    On a GPU: each then has an interpreter lock of its own. On one H100 the MitoCheck job held
    its one lock for 92 % of its wall time (py-spy), the maps waiting on the figures' and the
    scores' Python. Not on a CPU, where the cores are the limit and a process costs seconds of
    imports, nor on a GPU under ``SIDE_PROCESSES_MIN_GIB`` of memory: each process holds a CUDA
    context and its own fold models. ``CYTOTUNE_STAGE_PROCESSES=1`` (or ``0``) decides
    instead."""
    from . import executor

    value = os.environ.get(STAGE_PROCESSES_ENV)
    if value is not None:
        return value not in ("", "0")
    if os.name != "posix":  # the children get their result pipe through pass_fds (POSIX only)
        return False
    devices = devices if devices is not None else executor.local_devices()
    gpus = [d for d in devices if d != "cpu"]
    return bool(gpus) and min(gpu_memory_gib(d) for d in gpus) >= SIDE_PROCESSES_MIN_GIB


def side_work_waits() -> bool:
    """Whether the side stages' processes (quality samples, prototype figures) start their GPU
    work only once the maps' first batch is back (``CYTOTUNE_SIDE_WAIT=1``), so that the maps'
    cold start has the GPU to itself. Off by default: once the maps were cut to 24 s, the
    quality samples were what the MitoCheck job waited for on one H100 (they ended 5-7 s after
    the maps); started at once they ended 2 s after them, and the whole command took 32.8 s
    against 35.8-37.3 s waiting (the maps' first batch came 2 s later, their end no later)."""
    from .executor import switch

    return switch("CYTOTUNE_SIDE_WAIT", default=False)


def wait_for_maps(state) -> None:
    """Block until the maps are warm (:attr:`ExplainState.maps_warm`) when
    :func:`side_work_waits`."""
    if side_work_waits() and hasattr(state, "maps_warm"):
        state.maps_warm.wait()


def gpu_memory_gib(device: str) -> float:
    import torch

    return torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30


def exit_with_parent() -> None:
    """In a child process (of the maps' or a side stage's): end it at once when its parent is
    gone (killed, not only exited), so no child is left running on a GPU. A daemon thread sees
    the process re-parented."""
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="cytotune-exit-with-parent", daemon=True).start()


# what a stage child runs: no script of the caller's is imported again (multiprocessing's spawn
# re-runs the calling script's top level, which breaks a script that calls the job unguarded)
_CHILD = "from cytotune.explainers.job.processes import stage_child_main; stage_child_main()"


# children started early (:func:`warm_processes`), each importing what the side stages need while
# the job plans and the maps start: (process, read end of its result pipe). Not captum: the
# default methods run without it (0.7 s of imports each, matplotlib's included, beside the job's)
_WARM: queue.SimpleQueue = queue.SimpleQueue()
_WARM_IMPORTS = ("torch", "timm", "cytotune.explainers.job.scores")
# children of one stage started ahead of it (:func:`prestart`), by their name: they import the
# stage's module, then wait for its work
_READY: dict[str, queue.SimpleQueue] = {}
_EMPTY: queue.SimpleQueue = queue.SimpleQueue()  # never filled


def _start_child(name: str, warm: bool = False, imports: tuple[str, ...] = (), cuda: bool = False):
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    flags = [*(["warm"] if warm else []), *(f"import={module}" for module in imports)]
    flags += ["cuda"] if cuda else []
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(write_end), name, *flags],
            stdin=subprocess.PIPE,
            pass_fds=(write_end,),
            env=env,
        )
    finally:
        os.close(write_end)
    return child, read_end


def warm_processes(count: int) -> None:
    """Have ``count`` stage children waiting: start those missing now (their imports, 7-8 s
    of a lock each on the GPU machine, then run while this process plans the job and starts
    the maps, not after); end any beyond ``count`` (started early by :func:`warm_early` on a
    guess the job then did not confirm)."""
    for _ in range(count - _WARM.qsize()):
        # CUDA initialised too: the quality's and the prototypes' children explain on the GPU
        _WARM.put(_start_child("cytotune-explain-stage", warm=True, cuda=True))
    discard_warm(keep=count)


def discard_warm(keep: int = 0) -> None:
    """End the warm children no stage took (all but ``keep``)."""
    _end(_WARM, keep)


def prestart(name: str, count: int, imports: tuple[str, ...]) -> None:
    """Start ``count`` children for the stage whose processes are called ``name`` now, each
    importing ``imports``: the stage, run later, finds them ready (:func:`call_in_process`
    takes them first) instead of starting cold after the maps."""
    ready = _READY.setdefault(name, queue.SimpleQueue())
    for _ in range(count):
        ready.put(_start_child(name, imports=imports))


def discard_ready() -> None:
    """End the children :func:`prestart` started that their stage did not take."""
    for ready in _READY.values():
        _end(ready, 0)


def _end(children: queue.SimpleQueue, keep: int) -> None:
    """End all but the first ``keep`` of ``children`` (the oldest, furthest in their imports)."""
    if children.qsize() <= keep:
        return
    held = []
    while True:
        try:
            held.append(children.get_nowait())
        except queue.Empty:
            break
    for item in held[:keep]:
        children.put(item)
    for child, read_end in held[keep:]:
        child.kill()
        child.wait()
        child.stdin.close()
        os.close(read_end)


def imported(module: str) -> bool:
    """Whether this process has imported ``module`` (what a child was started with)."""
    import sys

    return module in sys.modules


def warm_early(config) -> int:
    """Start the side stages' children before this process imports the job (torch, the
    stages: about 3 s on the GPU machine), where this host seems to have a GPU: a device
    ``/dev/nvidiaN`` not hidden by ``CUDA_VISIBLE_DEVICES`` (no torch import, no CUDA start to
    ask). The job confirms the guess with torch (:func:`side_processes_wanted`) and ends the
    children it does not want. Returns how many were started."""
    value = os.environ.get(STAGE_PROCESSES_ENV)
    guess = value not in ("", "0") if value is not None else os.name == "posix" and gpu_devices()
    count = side_processes_wanted(config, in_processes=True) if guess else 0
    warm_processes(count)
    return count


def gpu_devices() -> bool:
    """Whether this host shows an NVIDIA GPU to this process, without torch: a ``/dev/nvidiaN``
    device, and ``CUDA_VISIBLE_DEVICES`` unset or naming one."""
    import glob

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:  # CUDA reads the list up to its first entry that is not a device
        first = visible.split(",")[0].strip()
        if not (first.isdigit() or first.startswith(("GPU-", "MIG-"))):
            return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def overlay_processes_wanted(config) -> int:
    """The processes the overlays stage will deal its (trial, method) pairs to
    (:func:`map_in_processes`, at most :func:`tail_processes`); 0 where it draws in threads
    here."""
    from .executor import resolve_executor

    if resolve_executor(config) != "local" or "overlays" not in config.stages:
        return 0
    pairs = (len(config.trials) or config.top_k) * len(config.method_names)
    count = min(pairs, tail_processes()) if config.overlays else 0
    return count if count > 1 else 0


def side_processes_wanted(config, in_processes: bool | None = None) -> int:
    """The processes the side stages will ask for (:func:`side_stages_in_processes`, or
    ``in_processes`` where given): one for the prototype figures, one for the attention
    figures, one per trial (up to :func:`quality_processes`) for the quality stage's samples
    scored beside the maps; 0 off a GPU or with Ray actors."""
    from .executor import resolve_executor

    if resolve_executor(config) != "local":
        return 0
    if not (side_stages_in_processes() if in_processes is None else in_processes):
        return 0
    # the attention figures' process may find no trial with attention maps: then it is unused
    count = int("prototypes" in config.stages) + int("attention" in config.stages)
    if {"maps", "quality"} <= set(config.stages) and config.quality_cells:
        count += min(len(config.trials) or config.top_k, quality_processes())
    return count


# processes that score the sampled cells beside the maps (on a GPU), each with its trials: in one,
# the MitoCheck job's 3 trials x 5 methods ended 12 s after the maps (one H100); 6, with each
# trial's methods split in two groups of equal cost, took 27.9-29.3 s against 3's 25.9-27.8 s
# on one H200 (BENCHMARKS.md, session 21). CYTOTUNE_QUALITY_PROCESSES sets how many
QUALITY_PROCESSES_ENV = "CYTOTUNE_QUALITY_PROCESSES"
QUALITY_PROCESSES = 3


def quality_processes() -> int:
    from .executor import whole_number

    return whole_number(QUALITY_PROCESSES_ENV, QUALITY_PROCESSES, "of processes")


def call_in_process(fn, *args, name: str = "cytotune-explain-stage", take_warm: bool = True):
    """``fn(*args)`` in a Python process of its own (a warm one when :func:`warm_processes`
    started some); its result, or the child's exception (its type, with the child's traceback
    as a note; a RuntimeError where it does not pickle). ``fn`` must be
    importable (a module-level function), ``fn``, ``args`` and the result must pickle. The
    child ends when this process is gone (exited or killed), and an interrupted wait kills it.
    ``take_warm=False`` leaves the warm children to the side stages they were started for."""
    import pickle

    try:
        child, read_end = _READY.get(name, _EMPTY).get_nowait()  # started for this stage
    except queue.Empty:
        try:
            if not take_warm:
                raise queue.Empty from None
            child, read_end = _WARM.get_nowait()
        except queue.Empty:
            child, read_end = _start_child(name)
    try:
        try:
            with child.stdin as stdin:
                pickle.dump((fn, args), stdin)
        except BrokenPipeError:  # the child died at start: said below, from its exit code
            pass
        with os.fdopen(read_end, "rb") as results:
            data = results.read()
        child.wait()
    except BaseException:
        child.kill()  # this wait was interrupted: the child's work is not wanted
        child.wait()
        raise
    if not data:
        raise RuntimeError(
            f"the process {name} died (exit code {child.returncode}) before returning its result"
        )
    kind, payload = pickle.loads(data)
    if kind == "error":
        text, error = payload
        if isinstance(error, Exception):  # its own type: callers catch what they would here
            error.add_note(f"raised in the process {name}:\n{text}")
            raise error
        raise RuntimeError(f"the process {name} failed:\n{text}")
    return payload


def stage_child_main() -> None:
    """The child of :func:`call_in_process`: ``(fn, args)`` from stdin (a warm child imports
    the side stages' modules first, a ``cuda`` one starts CUDA), ``("done", result)`` or
    ``("error", (traceback, exception or None))`` to the pipe named on its command line."""
    import pickle
    import sys

    exit_with_parent()
    fd = int(sys.argv[1])
    flags = sys.argv[3:]
    modules = [*(_WARM_IMPORTS if "warm" in flags else ())]
    modules += [f.removeprefix("import=") for f in flags if f.startswith("import=")]
    if modules:
        import importlib

        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError:  # its stage says what is missing, if it runs
                pass
    if "cuda" in flags:
        start_cuda()
    try:
        fn, args = pickle.load(sys.stdin.buffer)
        out = pickle.dumps(("done", fn(*args)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        text = traceback.format_exc()
        try:  # the exception itself where it pickles and unpickles, else its text alone
            out = pickle.dumps(("error", (text, exc)))
            pickle.loads(out)
        except Exception:  # noqa: BLE001
            out = pickle.dumps(("error", (text, None)))
    try:
        with os.fdopen(fd, "wb") as results:
            results.write(out)
    except OSError:  # the parent is gone: nobody to tell
        pass


def start_cuda() -> None:
    """Initialise CUDA in this process now (``torch.cuda.init``: the runtime and the device
    count, not yet a context, which comes with the first allocation), where there is a GPU."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.init()
    except Exception:  # noqa: BLE001 - the work that needs the GPU says what is wrong
        pass


def map_in_threads(fn, jobs: list[tuple], workers: int) -> list:
    """``[fn(*job) for job in jobs]`` on ``workers`` daemon threads, in job order; the first
    error is raised once the threads are done. Daemons: a thread waiting on a child process
    must not keep this process from exiting (Ctrl-C or a signal to it alone), while the exit
    ends its daemon children."""
    results: list = [None] * len(jobs)
    errors: list[BaseException] = []
    todo = iter(enumerate(jobs))
    lock = threading.Lock()

    def run() -> None:
        while not errors:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            i, job = item
            try:
                results[i] = fn(*job)
            except BaseException as error:  # noqa: BLE001 - raised by the caller below
                errors.append(error)

    threads = [
        threading.Thread(target=run, name=f"cytotune-map-{k}", daemon=True)
        for k in range(max(1, min(len(jobs), workers)))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


TAIL_PROCESSES_ENV = "CYTOTUNE_TAIL_PROCESSES"


def tail_processes() -> int:
    """Stage processes for each of the stages that read the finished maps (population figures,
    overlays): ``CYTOTUNE_TAIL_PROCESSES``, else a quarter of the CPU cores, at most 4 (1, so
    threads, below 8 cores). They import no torch (about 0.5 s), so they start cold, with the
    stage (or take a warm child the side stages left)."""
    from .executor import whole_number

    if os.name != "posix":  # the children get their result pipe through pass_fds (POSIX only)
        default = 1
    else:
        cores = usable_cores()
        default = 1 if cores < 8 else min(4, cores // 4)
    return whole_number(TAIL_PROCESSES_ENV, default, "(1: threads)")


def usable_cores() -> int:
    """The CPU cores this process may run on (a container's limit where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def map_in_processes(
    fn,
    jobs: list[tuple],
    threads: int,
    stage: str,
    threads_each: int | None = 2,
    take_warm: bool = True,
) -> list:
    """``[fn(*job) for job in jobs]`` in job order, dealt out (every k-th job) to
    :func:`tail_processes` stage children with ``threads_each`` threads each (None: one per
    job, all at once); with one, on ``threads`` threads here. ``fn`` and the jobs must pickle;
    ``take_warm`` as in :func:`call_in_process`."""
    count = min(len(jobs), tail_processes())
    name = f"cytotune-explain-{stage}"
    # children prestarted for this stage beyond what it deals out (trials kept from an earlier
    # run, or one job drawn here) are ended now, not at the job's end
    _end(_READY.get(name, _EMPTY), count if count > 1 else 0)
    if count <= 1:
        return map_in_threads(fn, jobs, threads)
    shares = [jobs[k::count] for k in range(count)]

    def share(part: list[tuple]) -> list:
        each = len(part) if threads_each is None else threads_each
        return call_in_process(map_in_threads, fn, part, each, name=name, take_warm=take_warm)

    results = map_in_threads(share, [(part,) for part in shares], count)
    out: list = [None] * len(jobs)
    for k, part in enumerate(results):
        out[k::count] = part
    return out
