"""The model card (``README.md``) of a bundle: what the model takes, what it gives, how well it
did in cross-validation, what its explanations looked like, and where it came from."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from cytotune.engine.train.contract import DataContract

from .source import TrialSource

CARD_METRICS = {
    "classification": ("balanced_accuracy", "accuracy", "f1_macro", "auc_macro", "log_loss"),
    "regression": ("r2", "mse", "mae"),
}


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def explanation_summary(study_dir: str | Path, trial_id: str) -> pd.DataFrame | None:
    """The trial's rows of ``<study>/explain/quality.parquet`` (None when the job has not run)."""
    from cytotune.explainers.job.layout import explain_dir

    path = explain_dir(study_dir) / "quality.parquet"
    if not path.is_file():
        return None
    table = pd.read_parquet(path)
    rows = table[table["trial_id"].astype(str) == str(trial_id)]
    return rows.sort_values(["method", "metric"]).reset_index(drop=True)


# What the card says next to a TorchScript file (torch deprecates torch.jit: its load prints a
# FutureWarning).
TORCHSCRIPT_DEPRECATED = (
    "TorchScript is deprecated: `torch.jit.load` prints a FutureWarning and PyTorch points to "
    "`torch.export` instead. This bundle's TorchScript file still loads and runs; for new "
    "deployments use the `torch.export` program (`model.pt2`, `torch.export.load(path).module()`: "
    "pull with `--format torch_export`) or ONNX (`--format onnx`)."
)


def model_card(
    manifest: dict, config: dict, data: dict, metrics: dict, prov: dict, source: TrialSource
) -> str:
    study, trial = prov["study"], prov["trial"]
    kind, family = config["kind"], config["family"]
    n = len(config["members"])
    out = manifest["output"]
    lines = [
        f"# {study['name']} / trial {trial['trial_id']}: {family} ({kind})",
        "",
        _summary(kind, n, data, metrics),
        "",
        "## Use it",
        "",
        "```python",
        "import cytotune  # with cytotune installed",
        "bundle = cytotune.load_bundle('THIS_DIR')",
        "bundle.predict(crops)  # raw pixels (N, C, H, W), image paths, or a dataset directory",
        "```",
    ]
    files = manifest["formats"]
    if "torch_export" in files:
        lines += [
            "",
            "Without cytotune (plain PyTorch), with `torch.export`:",
            "",
            "```python",
            "import torch",
            f"model = torch.export.load('THIS_DIR/{files['torch_export']['file']}').module()",
            f"{out['name']} = model(torch.as_tensor(crops, dtype=torch.float32)"
            + (", mask)" if config["mask_input"] else ")"),
            "```",
        ]
    if "torchscript" in files:
        lines += [
            "",
            "Without cytotune, with TorchScript:",
            "",
            "```python",
            "import torch",
            f"model = torch.jit.load('THIS_DIR/{files['torchscript']['file']}')",
            f"{out['name']} = model(torch.as_tensor(crops, dtype=torch.float32)"
            + (", mask)" if config["mask_input"] else ")"),
            "```",
            "",
            TORCHSCRIPT_DEPRECATED,
        ]
    if "onnx" in files:
        feed = "{'pixels': crops.astype('float32')" + (
            ", 'mask': masks.astype('float32')}" if config["mask_input"] else "}"
        )
        lines += [
            "",
            "With ONNX Runtime:",
            "",
            "```python",
            "import onnxruntime",
            f"session = onnxruntime.InferenceSession('THIS_DIR/{files['onnx']['file']}')",
            f"{out['name']} = session.run(None, {feed})[0]",
            "```",
        ]
    lines += ["", "## Input", ""]
    contract = DataContract.from_dict(data)
    c, h, w = contract.shape
    norm = contract.normalization
    lines.append(
        f"Raw crops of {c} x {h} x {w} pixels ({contract.dtype} as ingested, passed as float32). "
        f"The exported graphs apply the {norm.method} normalisation `(x - offset) / scale` "
        "per channel themselves: feed raw pixels, not normalised ones."
    )
    lines.append("")
    rows = [
        [i, name, norm.offset[i], norm.scale[i]] for i, name in enumerate(contract.channel_names)
    ]
    lines += _table(["index", "channel", "offset", "scale"], rows)
    if config["mask_input"]:
        lines += [
            "",
            "Second input `mask` (N, 1, H, W): the cell mask, 1 inside the cell. Prototype "
            "distances of background patches are penalised as in training; pass ones for no mask.",
        ]
    lines += ["", "## Output", "", f"`{out['name']}` (N, {len(out['names'])}): {out['meaning']}."]
    lines += ["", *_table(["index", "class" if data["task"] == "classification" else "target"],
                          [[i, n_] for i, n_ in enumerate(out["names"])])]  # fmt: skip
    lines += ["", "## Cross-validation", "", *_cv_section(metrics, data, kind, config)]
    lines += ["", "## Explanations", "", *_explain_section(source)]
    lines += ["", "## Formats", ""]
    rows = [
        [
            name,
            info.get("file", ", ".join(info.get("files", []))),
            info.get("method", info.get("exporter", "state dict")),
            info.get("max_abs_diff"),
        ]
        for name, info in files.items()
    ]
    lines += _table(["format", "file", "how", "max abs diff vs model"], rows)
    if files.get("torchscript", {}).get("method") == "trace":
        lines += [
            "",
            "The TorchScript file is traced (the model does not script: "
            f"`{files['torchscript'].get('script_error', '')[:120]}`): its control flow is fixed "
            f"for {h} x {w} crops; any batch size works.",
        ]
    lines += ["", "## Provenance", ""]
    versions = ", ".join(f"{k} {v}" for k, v in prov["versions"].items())
    git = prov["git"]
    rows = [
        ["study", f"{study['name']} ({study['directory']})"],
        ["trial", f"{trial['trial_id']} (#{trial['number']}, {trial['selected_by']})"],
        ["status", f"{trial['status']} after {trial['epochs_done']} epochs"],
        ["dataset", f"{prov['dataset']['name']} content hash {prov['dataset']['content_hash']}"],
        ["folds", f"{prov['folds']['name']} hash {prov['folds']['hash']}"],
        ["parameters", f"`{json.dumps(trial['params'])}`"],
        ["versions", versions],
        ["git commit", f"{git.get('commit')}{' (local changes)' if git.get('dirty') else ''}"],
    ]
    if "retrain" in prov:
        r = prov["retrain"]
        rows.append(["retrained", f"{r['cells']} cells, {r['epochs']} epochs, loss {r['final_train_loss']:.4f}"])  # fmt: skip
    lines += _table(["", ""], rows)
    lines += [
        "",
        "Checksums of every file are in bundle.json; `cytotune.load_bundle` verifies them.",
    ]
    return "\n".join(lines) + "\n"


def _summary(kind: str, n: int, data: dict, metrics: dict) -> str:
    metric = metrics["objective"]["metric"]
    mean, std = metrics["mean"].get(metric), metrics["mean"].get(f"{metric}_std")
    estimate = f"cross-validated {metric} {_fmt(mean)} ± {_fmt(std)} (fold mean ± std)"
    what = {
        "single": "one fold model",
        "ensemble": f"the {n} fold models averaged as one model",
        "retrained": "the configuration retrained on every cell of the dataset",
    }[kind]
    return (
        f"A {data['task']} model of {len(data['channel_names'])}-channel cell crops "
        f"({', '.join(data['channel_names'])}): {what}; {estimate}."
    )


def _cv_section(metrics: dict, data: dict, kind: str, config: dict) -> list[str]:
    names = [m for m in CARD_METRICS[data["task"]] if m in metrics["mean"]]
    objective = metrics["objective"]["metric"]
    names = [objective] + [m for m in names if m != objective]
    lines = [f"Objective: {objective} ({metrics['objective']['mode']}). Mean ± std over folds:", ""]
    rows = [[m, f"{_fmt(metrics['mean'].get(m))} ± {_fmt(metrics['mean'].get(f'{m}_std'))}"] for m in names]  # fmt: skip
    lines += _table(["metric", "value"], rows)
    if metrics["folds"]:
        lines += ["", "Per fold (validation split of each fold):", ""]
        rows = [
            [row.get("fold"), row.get("n_val", row.get("n"))] + [row.get(m) for m in names]
            for row in metrics["folds"]
        ]
        lines += _table(["fold", "cells"] + names, rows)
    notes = {
        "single": (
            f"This bundle holds {config['members'][0]['name']} "
            f"({config.get('fold_choice', 'chosen')}); its own validation score above is one "
            "draw; the fold mean is the honest estimate."
        ),
        "ensemble": (
            "This bundle averages every fold model (probabilities for classification). Each "
            "fold model was validated on cells it did not see, but every cell was in the "
            "training split of the other folds, so no held-out score exists for the ensemble; "
            "the fold mean estimates a single fold model (an ensemble usually does as well or "
            "better)."
        ),
        "retrained": (
            "The weights were retrained on every cell, so no held-out data is left for them: the "
            "cross-validation above is the estimate for this configuration."
        ),
    }
    return lines + ["", notes[kind]]


def _explain_section(source: TrialSource) -> list[str]:
    rows = explanation_summary(source.study_dir, source.trial_id)
    if rows is None:
        return [
            "The explain job has not run for this study (no explain/quality.parquet); run "
            "`cytotune explain` and pull again to include the explanation summary."
        ]
    if rows.empty:
        return [f"explain/quality.parquet has no rows for trial {source.trial_id}."]
    lines = [f"Explanation quality of trial {source.trial_id} (explain/quality.parquet):", ""]
    table = [[r["method"], r["metric"], r["mean"], r["std"], r["n"]] for r in rows.to_dict("records")]  # fmt: skip
    lines += _table(["method", "metric", "mean", "std", "n"], table)
    from cytotune.explainers.job.verdicts import describe, sanity_table

    sanity = sanity_table(source.study_dir)
    sanity = sanity[sanity["trial_id"] == str(source.trial_id)]
    if not sanity.empty:
        lines += [
            "",
            "Model-parameter randomisation sanity check (Adebayo et al. 2018; maps of this model "
            "vs weight-randomised copies, fp32, 95% bootstrap interval over cells):",
            "",
        ]
        for r in sanity.to_dict("records"):
            verdict = r["verdict"]
            shout = verdict.upper() if verdict != "passed" else verdict
            lines.append(
                f"- {r['method']}: {describe(r).replace(verdict, shout, 1)}: {r['meaning']}."
            )
        bad = sanity[sanity["verdict"] != "passed"]
        if not bad.empty:
            lines += [
                "",
                f"Do not read the maps of {', '.join(bad['method'])} as explanations of this model.",
            ]
    return lines
