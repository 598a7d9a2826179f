"""The dashboard under load: N concurrent clients against a running `cytotune dashboard`.

A synthetic study of 10,000 trials (trials, folds and learning-curve tables with the results
store's schema, plus an ``explain/`` directory for two trials) is written in a few seconds;
`cytotune dashboard` serves it on a loopback port in its own process; N client threads then
visit the leaderboard, a trial page and the explanations page in turn for a fixed time.

One visit does what the browser does when a page opens: the page shell (GET), the routing
callback that renders the page on the server, every callback the new page fires on load (taken
from the app's own ``/_dash-dependencies``, in dependency order, their outputs fed forward) and
the overlay images the page shows (each client fetches an image once, as a browser's cache
keeps them for the max-age the server sends). A visit's latency is the wall time of all of that, with the
requests of one visit sent one after another (a browser overlaps some: the numbers are an upper
bound). An error is any non-200 answer, an unreadable callback answer, or a page that renders
a notice of class ``error``.

  python bench/dashboard_load.py                       # N = 1, 8, 32; 20 s each
  python bench/dashboard_load.py --clients 8 --seconds 10 --out /tmp/load.json
  python bench/dashboard_load.py --smoke-test          # 2 clients, 3 s, 2,000 trials

Loopback only (127.0.0.1), at most 64 clients and 120 s per level.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
MAX_CLIENTS, MAX_SECONDS = 64, 120
FAMILIES = ("small_cnn", "backbone", "mhl_attention")
METRICS = ("balanced_accuracy", "accuracy", "f1_macro", "f1_weighted", "auc_macro", "log_loss")


# -- the synthetic study -----------------------------------------------------------------------
def make_study(root: Path, n_trials: int = 10_000, k: int = 3, epochs: int = 4, seed: int = 0):
    """``root/big``: study.yaml/json, trials/folds/epochs Parquet for ``n_trials`` trials
    (vectorised: a few seconds for 10,000) and explanations for the two best trials."""
    from tests.dashboard.factory import make_dataset, make_explain

    rng = np.random.default_rng(seed)
    study = root / "big"
    study.mkdir(parents=True, exist_ok=True)
    dataset = make_dataset(root / "dataset")
    config = {
        "name": "big",
        "dataset": str(dataset),
        "folds": {"name": f"k{k}-well", "k": k, "group": "well"},
        "space": ["demo"],
        "budget": {"trials": n_trials, "max_epochs": epochs, "grace_epochs": 1},
        "objectives": [{"metric": "balanced_accuracy", "mode": "max"}],
        "storage": str(root),
    }
    (study / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    status = {"status": "finished", "created": time.time(), "name": "big", "dataset": str(dataset)}
    (study / "study.json").write_text(json.dumps(status))

    ids = np.array([f"t{i:05d}" for i in range(n_trials)])
    family = np.array(FAMILIES)[np.arange(n_trials) % len(FAMILIES)]
    pruned = rng.random(n_trials) < 0.6
    done = np.where(pruned, 1, epochs)
    level = rng.uniform(0.55, 0.95, n_trials) - 0.15 * pruned
    per_fold = np.clip(level[:, None] + rng.normal(0, 0.03, (n_trials, k)), 0.0, 1.0)  # (T, K)
    lr = 10 ** rng.uniform(-4, -2, n_trials)
    trials = {
        "trial_id": ids,
        "number": np.arange(n_trials),
        "status": np.where(pruned, "pruned", "completed"),
        "family": family,
        "params": [
            json.dumps({"family": f, f: {"dropout": 0.1}, "train": {"lr": float(x)}})
            for f, x in zip(family, lr)
        ],
        "param.train.lr": lr,
        "epochs_done": done,
        "folds_done": np.full(n_trials, k),
        "images_per_s": rng.uniform(500, 5000, n_trials),
        "node_id": np.array([f"{i:056x}" for i in range(4)])[np.arange(n_trials) % 4],
        "checkpoint": [str(study / "tune" / f"trial_{t}" / "checkpoint_000003") for t in ids],
    }
    fold_rows = {"trial_id": np.repeat(ids, k), "fold": np.tile(np.arange(k), n_trials)}
    fold_rows["epoch"] = np.repeat(done, k)
    fold_rows["n_val"] = np.full(n_trials * k, 30)
    for m in METRICS:
        values = (
            1.2 - per_fold if m == "log_loss" else per_fold + rng.normal(0, 0.01, per_fold.shape)
        )
        trials[f"val/{m}"] = values.mean(1)
        trials[f"val/{m}_std"] = values.std(1, ddof=1)
        fold_rows[m] = values.reshape(-1)
    tp = np.round(15 * per_fold).astype(int).reshape(-1)
    fold_rows["confusion_matrix"] = [f"[[{a}, {15 - a}], [{15 - a}, {a}]]" for a in tp]
    _write(study, "trials", pd.DataFrame(trials))
    _write(study, "folds", pd.DataFrame(fold_rows))

    # learning curves: every trial x epoch done x (folds and the fold mean, fold -1)
    trial_idx = np.repeat(np.arange(n_trials), done)
    epoch = np.concatenate([np.arange(1, d + 1) for d in done])
    trial_idx, epoch = np.repeat(trial_idx, k + 1), np.repeat(epoch, k + 1)
    fold = np.tile(np.arange(-1, k), len(trial_idx) // (k + 1))
    shape = 0.7 + 0.3 * epoch / epochs
    epochs_table = pd.DataFrame(
        {
            "trial_id": ids[trial_idx],
            "epoch": epoch,
            "fold": fold,
            "train_loss": 1.0 / epoch,
            "val_loss": 1.1 / epoch,
            "balanced_accuracy": level[trial_idx] * shape,
        }
    )
    _write(study, "epochs", epochs_table)
    best = ids[np.argsort(-trials["val/balanced_accuracy"])[:2]].tolist()
    make_explain(study, dataset, best, rng)
    return study, best


def _write(study: Path, name: str, frame: pd.DataFrame) -> None:
    """``name``.parquet through the results store's table writer (typed columns, format version
    in the metadata), as the search writes it."""
    from cytotune.engine.search.tables import write_table

    (study / f"{name}.parquet").write_bytes(write_table(name, frame.to_dict("records")))


# -- one client --------------------------------------------------------------------------------
class Client:
    """Opens pages the way Dash's renderer does, over plain HTTP."""

    def __init__(self, base: str, dependencies: list[dict]) -> None:
        self.base = base
        self.deps = [d for d in dependencies if "{" not in d["output"]]  # no pattern ids
        self.cached: set[str] = set()  # images this client (one browser) already holds

    def _request(self, path: str, body: dict | None = None) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as answer:
            if answer.status != 200:
                raise RuntimeError(f"{path}: HTTP {answer.status}")
            return answer.read()

    def _fire(self, dep: dict, props: dict, changed: list[str]) -> dict:
        outputs = [_split(o) for o in _outputs(dep["output"])]
        body = {
            "output": dep["output"],
            "outputs": [{"id": i, "property": p} for i, p in outputs]
            if len(outputs) > 1 or dep["output"].startswith("..")
            else {"id": outputs[0][0], "property": outputs[0][1]},
            "inputs": [_value(x, props) for x in dep["inputs"]],
            "state": [_value(x, props) for x in dep.get("state", [])],
            "changedPropIds": changed,
        }
        answer = self._request("/_dash-update-component", body)
        if not answer:  # 204-like: nothing to update
            return {}
        return json.loads(answer).get("response", {})

    def visit(self, pathname: str, search: str) -> None:
        """One page opened: shell, route, on-load callbacks in dependency order, images."""
        self._request(pathname + search)
        props = {"url": {"pathname": pathname, "search": search}, "version": {}, "tick": {}}
        route = next(d for d in self.deps if ".page.children." in d["output"])
        rendered = self._fire(route, props, ["url.pathname", "url.search"])
        page = rendered["page"]["children"]
        _collect(page, props)
        if _has_error(page):
            raise RuntimeError(f"{pathname}{search}: the page rendered an error notice")
        new_ids = set(props) - {"url", "version", "tick"}
        pending = [
            d
            for d in self.deps
            if d is not route
            and not d.get("prevent_initial_call")
            and any(x["id"] in new_ids for x in d["inputs"])
            and all(x["id"] in props for x in d["inputs"])
        ]
        images = set()
        while pending:
            produced = {o for d in pending for o in _outputs(d["output"])}
            ready = [
                d
                for d in pending
                if not any(f"{x['id']}.{x['property']}" in produced for x in d["inputs"])
            ] or pending[:1]
            for dep in ready:
                pending.remove(dep)
                changed = [f"{x['id']}.{x['property']}" for x in dep["inputs"]]
                for cid, values in self._fire(dep, props, changed).items():
                    for prop, value in values.items():
                        props.setdefault(cid, {})[prop] = value
                        _collect(value, props)
                        images |= _images(value)
        images |= _images(page)
        for src in sorted(images - self.cached)[:24]:
            self._request(src)
            self.cached.add(src)  # Cache-Control max-age 60-300 s: a browser keeps it


def _outputs(spec: str) -> list[str]:
    return [o for o in spec.strip(".").split("...") if o] if spec.startswith("..") else [spec]


def _split(output: str) -> tuple[str, str]:
    cid, prop = output.rsplit(".", 1)
    return cid, prop


def _value(ref: dict, props: dict) -> dict:
    return {**ref, "value": props.get(ref["id"], {}).get(ref["property"])}


def _walk(node):
    if isinstance(node, dict):
        yield node
        for value in node.get("props", {}).values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _collect(tree, props: dict) -> None:
    for node in _walk(tree):
        cid = node.get("props", {}).get("id")
        if isinstance(cid, str):
            props.setdefault(cid, {}).update(
                {k: v for k, v in node["props"].items() if k not in ("children", "id")}
            )


def _images(tree) -> set[str]:
    return {
        n["props"]["src"]
        for n in _walk(tree)
        if isinstance(n.get("props", {}).get("src"), str)
        and n["props"]["src"].startswith(("/render/", "/files"))
    }


def _has_error(tree) -> bool:
    return any("error" in str(n.get("props", {}).get("className", "")).split() for n in _walk(tree))


# -- the load run ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_dashboard(root: Path, port: int) -> subprocess.Popen:
    """`cytotune dashboard` in its own process; its request log goes to a file (a pipe nobody
    reads fills up and stalls the server)."""
    command = [sys.executable, "-m", "cytotune.engine.cli", "dashboard", "--study", str(root)]
    command += ["--host", HOST, "--port", str(port)]
    log = open(root / "cytotune.dashboard.log", "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120  # a loaded 2-core box needs 20-30 s to import and fork
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"cytotune dashboard exited: {(root / 'cytotune.dashboard.log').read_text()[-2000:]}"
            )
        try:
            urllib.request.urlopen(f"http://{HOST}:{port}/_dash-dependencies", timeout=2)
            return proc
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("cytotune dashboard did not answer within 120 s")


def run_level(base: str, deps: list[dict], pages: list[tuple], clients: int, seconds: float):
    """``clients`` threads visiting ``pages`` in turn for ``seconds``; latencies per page."""
    if not 1 <= clients <= MAX_CLIENTS or not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"clients must be 1..{MAX_CLIENTS} and seconds 0..{MAX_SECONDS}")
    results: list[tuple[str, float, str | None]] = []
    lock = threading.Lock()
    stop = time.time() + seconds

    def work(offset: int) -> None:
        client, i = Client(base, deps), offset
        while time.time() < stop:
            name, pathname, search = pages[i % len(pages)]
            if isinstance(pathname, list):  # one of several trial pages, a different one each time
                pathname = pathname[(i * 7919 + offset * 104729) % len(pathname)]
            start, error = time.perf_counter(), None
            try:
                client.visit(pathname, search)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                error = f"{type(exc).__name__}: {exc}"[:300]
            with lock:
                results.append((name, time.perf_counter() - start, error))
            i += 1

    threads = [threading.Thread(target=work, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 60)
    return results


def summarise(results, clients: int, seconds: float) -> dict:
    def stats(rows):
        ok = [s for _, s, e in rows if e is None]
        p50, p95 = np.percentile(ok, [50, 95]).tolist() if ok else (None, None)
        return {
            "visits": len(rows),
            "errors": sum(e is not None for _, _, e in rows),
            "p50_s": p50,
            "p95_s": p95,
            "max_s": max(ok) if ok else None,
        }

    by_page = {
        name: stats([r for r in results if r[0] == name])
        for name in dict.fromkeys(r[0] for r in results)
    }
    errors = sorted({e for _, _, e in results if e})[:5]
    return {"clients": clients, "seconds": seconds, **stats(results), "pages": by_page,
            "visits_per_s": len(results) / seconds, "error_examples": errors}  # fmt: skip


def markdown(rows: list[dict], machine: str, trials: int) -> str:
    lines = [
        f"Dashboard under load ({trials:,}-trial study, {machine}): one visit = page shell + "
        "server render + on-load callbacks + overlay images, requests in sequence",
        "",
        "| clients | visits | visits/s | errors | p50 (s) | p95 (s) | p95 leaderboard | p95 trial | p95 explanations | load avg (1 min, at end) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        page = {k: v["p95_s"] for k, v in r["pages"].items()}
        lines.append(
            f"| {r['clients']} | {r['visits']} | {r['visits_per_s']:.1f} | {r['errors']} | "
            f"{_f(r['p50_s'])} | {_f(r['p95_s'])} | {_f(page.get('leaderboard'))} | "
            f"{_f(page.get('trial'))} | {_f(page.get('explanations'))} | "
            f"{r['load_average_after'][0]:.1f} |"
        )
    return "\n".join(lines)


def _f(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=20.0, help="per level (default 20)")
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument(
        "--trial-pages",
        type=int,
        default=1,
        metavar="K",
        help="visit K different trial pages in turn (default 1: the best trial's); with K in the "
        "thousands nearly every trial view is drawn anew instead of coming from the memo",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/dashboard_load.json")
    parser.add_argument(
        "--machine", default=f"{os.cpu_count()}-core CPU box ({platform.machine()})"
    )
    parser.add_argument("--smoke-test", action="store_true", help="2 clients, 3 s, 2,000 trials")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.clients, args.seconds, args.trials = [2], 3.0, 2_000
    import tempfile

    load_before = os.getloadavg()[0]  # other work on the box skews every latency
    with tempfile.TemporaryDirectory(prefix="cytotune-load-") as tmp:
        root = args.workdir or Path(tmp)
        start = time.perf_counter()
        _, best = make_study(root, args.trials)
        print(f"study of {args.trials:,} trials written in {time.perf_counter() - start:.1f} s")
        port = free_port()
        server = start_dashboard(root, port)
        try:
            base = f"http://{HOST}:{port}"
            deps = json.loads(urllib.request.urlopen(base + "/_dash-dependencies").read())
            trial_paths = [f"/trial/{best[0]}"]
            if args.trial_pages > 1:
                picks = np.random.default_rng(1).choice(
                    args.trials, args.trial_pages, replace=False
                )
                trial_paths = [f"/trial/t{i:05d}" for i in picks]
            pages = [
                ("leaderboard", "/leaderboard", "?study=big"),
                ("trial", trial_paths, "?study=big"),
                ("explanations", "/explanations", f"?study=big&trial={best[0]}"),
            ]
            cold = {}  # first visit of each page: table reads, lazy imports (explainers: torch)
            for name, pathname, search in pages:
                pathname = pathname[0] if isinstance(pathname, list) else pathname
                start = time.perf_counter()
                Client(base, deps).visit(pathname, search)
                cold[name] = round(time.perf_counter() - start, 3)
            print("first visits (cold):", cold)
            rows = []
            for clients in args.clients:
                summary = summarise(
                    run_level(base, deps, pages, clients, args.seconds), clients, args.seconds
                )
                summary["load_average_after"] = os.getloadavg()  # 1, 5, 15 min, at its end
                rows.append(summary)
                print(
                    f"{clients:>3} clients: {summary['visits']} visits, {summary['errors']} errors, "
                    f"p50 {_f(summary['p50_s'])} s, p95 {_f(summary['p95_s'])} s "
                    + " ".join(f"{k} p95 {_f(v['p95_s'])}" for k, v in summary["pages"].items())
                )
        finally:
            server.terminate()
            server.wait(timeout=10)
    report = {
        "machine": args.machine,
        "trials": args.trials,
        "trial_pages": args.trial_pages,
        "command": "python bench/dashboard_load.py " + " ".join(argv or sys.argv[1:]),
        "load_average_before": load_before,
        "cold_first_visit_s": cold,
        "levels": rows,
    }
    if not args.smoke_test:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    print(markdown(rows, args.machine, args.trials))
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
