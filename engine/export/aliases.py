"""Named aliases per study (``champion``, ``candidate``, ...) pointing at trials.

``<study>/registry.json``::

    {"format": "cytotune-registry", "version": 1,
     "aliases": {"champion": {"trial_id": "bdd8d20b", "promoted_at": 1.7e9, "user": "ana",
                              "objective": {...}, "sanity": {...}, "note": ""}},
     "history": [{"alias": "champion", "trial_id": "bdd8d20b", "previous": null, ...}]}

Every write is a read-modify-write under an exclusive lock (``filelock``) on ``registry.json.lock`` and lands
through a temporary file and ``os.replace``, so readers (which take no lock) always see a whole
file and concurrent promotions from several processes are never lost.
"""

from __future__ import annotations

import getpass
import json
import re
import time
from pathlib import Path
from typing import Any

from cytotune.engine.io import atomic_write_text
from filelock import FileLock

REGISTRY_FILE = "registry.json"
FORMAT, VERSION = "cytotune-registry", 1
ALIAS_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
RANDOMISATION_METRIC = "randomisation_passed"


def file_lock(path: Path) -> FileLock:
    """An exclusive inter-process lock on ``path`` (``filelock``: ``flock`` on POSIX, so a
    crashed holder never leaves a stale lock behind)."""
    return FileLock(str(path))


def _atomic_write(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


class Registry:
    """The aliases of one study directory."""

    def __init__(self, study_dir: str | Path) -> None:
        self.study_dir = Path(study_dir)
        self.path = self.study_dir / REGISTRY_FILE
        self.lock_path = self.study_dir / f"{REGISTRY_FILE}.lock"

    def read(self) -> dict[str, Any]:
        """The whole registry (an empty one when the file does not exist yet)."""
        if not self.path.is_file():
            return {"format": FORMAT, "version": VERSION, "aliases": {}, "history": []}
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{self.path} is not valid JSON ({exc}); restore it from a backup or delete it "
                "and promote the aliases again"
            ) from exc
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ValueError(
                f"{self.path} is not a {FORMAT} version {VERSION} file (format="
                f"{data.get('format')!r}, version={data.get('version')!r}); use a matching cytotune"
            )
        return data

    def aliases(self) -> dict[str, dict]:
        return dict(self.read()["aliases"])

    def resolve(self, alias: str) -> str:
        """The trial id an alias points at."""
        aliases = self.aliases()
        if alias not in aliases:
            from cytotune.search_spaces.config import close_matches

            known = ", ".join(sorted(aliases)) or "none yet"
            raise ValueError(
                f"alias {alias!r} is not set in {self.path}{close_matches(alias, aliases)}; "
                f"aliases: {known}. Set one with `cytotune pull --study {self.study_dir} "
                f"--promote {alias} --trial ID`"
            )
        return str(aliases[alias]["trial_id"])

    def promote(self, alias: str, trial_id: str, **info: Any) -> dict:
        """Point ``alias`` at ``trial_id`` (atomically, under the lock); returns the entry."""
        if not ALIAS_PATTERN.match(alias):
            raise ValueError(
                f"alias {alias!r} is not a valid name: use a letter then letters, digits, '_', "
                "'.' or '-' (at most 64 characters), e.g. champion"
            )
        self.study_dir.mkdir(parents=True, exist_ok=True)
        entry = {
            "trial_id": str(trial_id),
            "promoted_at": time.time(),
            "user": _user(),
            **info,
        }
        with file_lock(self.lock_path):
            data = self.read()
            previous = data["aliases"].get(alias, {}).get("trial_id")
            data["aliases"][alias] = entry
            data["history"].append({"alias": alias, "previous": previous, **entry})
            _atomic_write(self.path, data)
        return entry

    def remove(self, alias: str) -> None:
        with file_lock(self.lock_path):
            data = self.read()
            if alias not in data["aliases"]:
                raise ValueError(f"alias {alias!r} is not set in {self.path}")
            entry = data["aliases"].pop(alias)
            data["history"].append(
                {"alias": alias, "previous": entry["trial_id"], "trial_id": None,
                 "promoted_at": time.time(), "user": _user()}
            )  # fmt: skip
            _atomic_write(self.path, data)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


def sanity_status(study_dir: str | Path, trial_id: str) -> dict[str, Any]:
    """The explanation randomisation check of a trial from ``<study>/explain/quality.parquet``.

    The verdicts are those of :mod:`cytotune.explainers.job.verdicts` (fp32, several random copies, a
    bootstrap interval and the calibrated threshold; ``inconclusive`` does not pass).

    Returns:
        ``{"passed": bool, "methods": {method: 1.0 passed / 0.0 not}, "verdicts": {method:
        text}, "source": path}``.

    Raises:
        ValueError: when the explain job has not written the check for this trial.
    """
    from cytotune.explainers.job.layout import explain_dir

    path = explain_dir(study_dir) / "quality.parquet"
    hint = f"run the explain job on it first (`cytotune explain --study {study_dir}`)"
    if not path.is_file():
        raise ValueError(
            f"--require-sanity: no explanation quality scores at {path}; {hint}, or promote "
            "without --require-sanity"
        )
    from cytotune.explainers.job.verdicts import describe, sanity_table

    table = sanity_table(study_dir)
    rows = table[(table["trial_id"] == str(trial_id)) & (table["verdict"] != "error")]
    if rows.empty:
        raise ValueError(
            f"--require-sanity: {path} has no {RANDOMISATION_METRIC!r} row for trial "
            f"{trial_id}; {hint} with that trial included"
        )
    methods = {str(r["method"]): float(r["verdict"] == "passed") for r in rows.to_dict("records")}
    return {
        "passed": all(v >= 1.0 for v in methods.values()),
        "methods": methods,
        "verdicts": {str(r["method"]): describe(r) for r in rows.to_dict("records")},
        "source": str(path),
    }
