"""Pack a finished real-data study for the trip back from the GPU machine (at most 16 MiB a file).

Keeps everything the dashboard and docs/results.md read (tables, study files, explain summaries,
population maps, overlays, prototype mosaics, the timings and results JSON beside the study) and
drops the fold-model weights and most per-cell maps: of the stored map tables only ``--cells``
cells (the same seeded sample for every trial and method) travel, enough for the dashboard's
per-cell views. Writes RUNS/NAME-results.tar.xz, split into 15 MiB pieces when larger.

    python bench/real/pack_results.py runs/real mitocheck --out $OUT
    cat mitocheck-results.tar.xz.* | tar -xJ -C runs/real     # back here
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tarfile
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from cytotune.explainers.job import layout

PIECE = 15 * 2**20


def _keep(path: Path, study: Path) -> bool:
    relative = path.relative_to(study).parts
    if relative[:2] == ("explain", "maps"):
        return False
    # fold model weights inside tune checkpoints; metrics.json / cv.json stay
    return not (relative[0] == "tune" and any(p.startswith("fold_") for p in relative))


def _sample_maps(study: Path, dest: Path, cells: int) -> None:
    maps = layout.explain_dir(study) / "maps"
    for table_dir in sorted(maps.glob("*/*.parquet")):
        if table_dir.name.startswith("."):
            continue
        table = layout.read_maps(table_dir)
        ids = table.column("cell_id").to_pylist()
        ranked = sorted(set(ids), key=lambda c: hashlib.sha1(c.encode()).hexdigest())[:cells]
        table = table.filter(
            pc.is_in(table.column("cell_id"), value_set=pa.array(ranked, type=pa.string()))
        )
        out = dest / table_dir.relative_to(study) / "part-00000.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out, compression="zstd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("name")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cells", type=int, default=300)
    args = parser.parse_args()
    study = args.runs / args.name
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / args.name
        for path in sorted(study.rglob("*")):
            if path.is_file() and _keep(path, study):
                target = root / path.relative_to(study)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
        _sample_maps(study, root, args.cells)
        extras = [p for p in args.runs.glob(f"{args.name}-*") if p.is_file()]
        args.out.mkdir(parents=True, exist_ok=True)
        archive = args.out / f"{args.name}-results.tar.xz"
        with tarfile.open(archive, "w:xz") as tar:
            tar.add(root, arcname=args.name)
            for extra in extras:
                tar.add(extra, arcname=extra.name)
    size = archive.stat().st_size
    if size > PIECE:
        data = archive.read_bytes()
        for i in range(0, size, PIECE):
            (args.out / f"{archive.name}.{i // PIECE:02d}").write_bytes(data[i : i + PIECE])
        archive.unlink()
    print(f"{archive} {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
