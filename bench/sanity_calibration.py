"""Calibrate the randomisation sanity threshold on cases with known answers (CPU, fp32).

Known answers come from the synthetic tasks (engine/synth), whose evidence mask says where the
class signal was drawn:

* should FAIL: an untrained model (fresh init). Its maps carry nothing learned, so the rho
  between them and a re-initialised copy's maps is what "the map shows only the input" scores.
* should PASS: a model trained a few epochs whose maps find the evidence (share of positive map
  mass inside the evidence mask at least ``--evidence-gain`` times that of the untrained model's
  maps): what such maps show was learned.

For every (task, architecture, method) the check (explainers.quality.sanity_check: 3 random
copies, bootstrap CI over cells, cascade) runs on held-out cells; the threshold is the rho that
best separates the two groups (balanced accuracy, midpoint between neighbours). The same
trained cases are re-run with the maps in bf16 autocast to show whether bf16 changes the
verdict. ``--device cuda`` runs the same cases on a GPU, to compare with a CPU run's JSON;
``--models DIR`` makes both runs check the same trained weights (the first run saves them), so
that what differs between the two JSONs is the device alone (``bench/sanity_agreement.py``).

The model verdict (explainers.quality.learned) is calibrated on the same cases: known answers
an untrained model (should be flagged ``untrained``) and a trained model that learned its task
(should not); trained models still at chance are left out. Reported: the head-only |rho|
threshold with the best balanced accuracy per method and per model (median over methods), the
balanced accuracy of "held-out balanced accuracy not above chance" and of the combined rule.
Writes a JSON and a markdown table.

Example:
  python bench/sanity_calibration.py --out runs/sanity_calibration  # ~6 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ARCHS = {
    "small_cnn": {"conv_layers": 3, "filters": 16, "dense_units": 32, "dropout": 0.0},
    "small_cnn_bn4": {
        "conv_layers": 4,
        "filters": 16,
        "batch_norm": True,
        "dense_units": 32,
        "dropout": 0.0,
        "pool": True,
    },
}
METHODS = {
    "gradcam": {},
    "gradcam++": {},
    "layercam": {},
    "saliency": {},
    "smoothgrad": {"n": 8},
    "integrated_gradients": {"n_steps": 16},
}


def data(task: str, n: int, size: int, seed: int):
    from cytotune.engine.synth import render

    batch = render(task, n=n, size=size, seed=seed)
    x = np.log1p(batch.images.astype(np.float32))  # (N, C, H, W)
    labels = batch.label_indices
    cut = int(0.75 * n)
    mean = x[:cut].mean(axis=(0, 2, 3), keepdims=True)
    std = x[:cut].std(axis=(0, 2, 3), keepdims=True) + 1e-6
    x = (x - mean) / std
    return {
        "x": torch.from_numpy(x),
        "y": torch.from_numpy(labels),
        "evidence": batch.evidence,
        "masks": batch.masks,
        "present": batch.phenotype_present,
        "cut": cut,
        "classes": batch.classes,
    }


def build(arch: str, in_chans: int, classes, seed: int):
    from cytotune.search_spaces.models import create_model

    torch.manual_seed(seed)
    kind = "binary" if len(classes) == 2 else "multiclass"
    family = "small_cnn"
    return create_model(
        family, in_chans=in_chans, task=kind, num_outputs=len(classes), **ARCHS[arch]
    ).eval()


def held_out_accuracy(model, d) -> tuple[float, float, float]:
    """Balanced accuracy of ``model`` on the held-out quarter and its 95% interval."""
    from cytotune.explainers.quality.learned import balanced_accuracy_ci

    with torch.no_grad():
        pred = model(d["x"][d["cut"] :]).argmax(1).cpu().numpy()
    return balanced_accuracy_ci(d["y"][d["cut"] :].cpu().numpy(), pred)


def train(model, d, epochs: int, seed: int) -> float:
    torch.manual_seed(seed)
    x, y, cut = d["x"][: d["cut"]], d["y"][: d["cut"]], d["cut"]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(cut, device=x.device).split(64):
            xb = x[idx]
            if torch.rand(()) < 0.5:
                xb = xb.flip(-1)
            loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(d["x"][cut:]).argmax(1)
    return float((pred == d["y"][cut:]).float().mean())


def attribute_fn(method: str, x, target, bf16: bool = False):
    from cytotune.explainers.job.worker import layer_for
    from cytotune.explainers.methods import create_explainer
    from cytotune.explainers.quality.sanity import check_precision

    def run(model):
        layer = layer_for(method, model, tuple(x.shape[1:]))
        explainer = create_explainer(method, model, layer, **METHODS[method])
        # the job's precision for the check (check_precision), or bf16 autocast for the re-runs
        device_type = x.device.type
        bf = torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else None
        with bf or check_precision(device_type):
            return explainer.attribute(x, target=target).float()

    return run


def evidence_mass(maps: torch.Tensor, evidence: np.ndarray) -> float:
    from cytotune.explainers.quality import mass_inside

    maps = maps.detach().float().cpu()
    if maps.shape[-2:] != evidence.shape[-2:]:
        maps = torch.nn.functional.interpolate(maps, evidence.shape[-2:], mode="bilinear")
    return float(np.nanmean(mass_inside(maps.numpy(), evidence)))


def best_threshold(fail: list[float], ok: list[float]) -> tuple[float, float]:
    """Threshold (midpoint between neighbouring values) with the best balanced accuracy of
    'rho < t passes'; ties go to the middle of the best run."""
    values = np.sort(np.unique(np.r_[fail, ok]))
    candidates = np.r_[values[0] - 0.01, (values[1:] + values[:-1]) / 2, values[-1] + 0.01]
    fail, ok = np.asarray(fail), np.asarray(ok)
    scores = np.array([((ok < t).mean() + (fail >= t).mean()) / 2 for t in candidates])
    best = np.flatnonzero(scores == scores.max())
    return float(candidates[best[len(best) // 2]]), float(scores.max())


def main(argv=None) -> int:
    from cytotune.explainers.quality import randomize_weights
    from cytotune.explainers.quality.sanity import SanityConfig, sanity_check

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="runs/sanity_calibration")
    p.add_argument("--tasks", nargs="+", default=["metastasis", "microtubule"])
    p.add_argument("--archs", nargs="+", default=list(ARCHS))
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--n", type=int, default=1200, help="cells per task (3/4 train)")
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--cells", type=int, default=48, help="held-out cells per check")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--evidence-gain", type=float, default=1.2)
    p.add_argument(
        "--whole-crop",
        dest="inside_cell",
        action="store_false",
        help="correlate every pixel (default: only pixels inside the cell mask)",
    )
    p.add_argument(
        "--min-accuracy-gain",
        type=float,
        default=0.25,
        help="a trained model is a should-pass case only this far above chance accuracy",
    )
    p.add_argument("--from-json", help="re-derive the threshold from an earlier calibration.json")
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu or cuda: the same cases on a GPU (checks in fp32, TF32 off) to compare with CPU",
    )
    p.add_argument(
        "--models",
        help="directory of trained weights: loaded where present (so two devices check the same "
        "models), else trained and saved there",
    )
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="skip the bf16 re-runs")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        earlier = json.loads(Path(args.from_json).read_text())
        rows = earlier["rows"]
        for r in rows:
            r.setdefault("n_classes", 2 if r["task"] == "metastasis" else 3)
        summary = {**earlier["summary"], **derive(rows, args.evidence_gain, args.min_accuracy_gain)}
        write(out, rows, summary)
        return 0
    config = SanityConfig(seeds=args.seeds)  # verdicts re-derived below
    rows, started = [], time.perf_counter()
    for task in args.tasks:
        d = data(task, args.n, args.size, seed=1)
        held = np.arange(d["cut"], args.n)
        held = held[d["present"][held] & (d["evidence"][held].reshape(len(held), -1).any(1))]
        held = held[: args.cells]
        x, evidence = d["x"][held].to(device), d["evidence"][held]
        cells = d["masks"][held] if args.inside_cell else None
        for arch in args.archs:
            trained = build(arch, x.shape[1], d["classes"], seed=12).to(device)
            # fresh PyTorch-default init, the same scheme as the check's random copies
            untrained = randomize_weights(trained, seed=1000, mode="full").eval()
            saved = Path(args.models) / f"{task}-{arch}.pt" if args.models else None
            if saved is not None and saved.is_file():  # the same trained weights on every device
                state = torch.load(saved, map_location=device)
                trained.load_state_dict(state["trained"])
                trained.eval()
                accuracy, train_s = state["accuracy"], state["train_s"]
            else:
                t0 = time.perf_counter()
                accuracy = train(
                    trained,
                    {**d, "x": d["x"].to(device), "y": d["y"].to(device)},
                    args.epochs,
                    seed=3,
                )
                train_s = time.perf_counter() - t0
                if saved is not None:
                    saved.parent.mkdir(parents=True, exist_ok=True)
                    state = {
                        "trained": trained.state_dict(),
                        "accuracy": accuracy,
                        "train_s": train_s,
                    }
                    torch.save(state, saved)
            dd = {**d, "x": d["x"].to(device), "y": d["y"].to(device)}
            held_acc = {"untrained": held_out_accuracy(untrained, dd)}
            held_acc["trained"] = held_out_accuracy(trained, dd)
            for state, model in (("untrained", untrained), ("trained", trained)):
                with torch.no_grad():
                    target = model(x).argmax(1)
                for method in args.methods:
                    t0 = time.perf_counter()
                    run = attribute_fn(method, x, target)
                    maps = run(model)
                    with torch.no_grad():
                        control = randomize_weights(model, seed=2000, mode="full").eval()
                    control_maps = run(control)
                    res = sanity_check(run, model, config, trained_maps=maps, masks=cells)
                    row = {
                        "task": task,
                        "arch": arch,
                        "state": state,
                        "method": method,
                        "accuracy": accuracy if state == "trained" else None,
                        "n_classes": len(d["classes"]),
                        "train_s": train_s if state == "trained" else None,
                        "rho": res.rho_mean,
                        "null": res.null_mean,
                        "gap": res.gap_mean,
                        "ci": [res.ci_low, res.ci_high],
                        "seed_sd": res.seed_sd,
                        "cascade": res.cascade,
                        "head": res.head_mean,
                        "head_ci": [res.head_low, res.head_high],
                        "balanced_accuracy": list(held_acc[state]),
                        "evidence_mass": evidence_mass(maps, evidence),
                        "evidence_mass_random": evidence_mass(control_maps, evidence),
                        "seconds": time.perf_counter() - t0,
                    }
                    if state == "trained" and args.bf16:
                        bf = attribute_fn(method, x, target, bf16=True)
                        res16 = sanity_check(bf, model, config, masks=cells)
                        row["rho_bf16"] = res16.rho_mean
                        row["gap_bf16"] = res16.gap_mean
                        row["ci_bf16"] = [res16.ci_low, res16.ci_high]
                    rows.append(row)
                    print(
                        f"{task:11s} {arch:13s} {state:9s} {method:20s} rho {res.rho_mean:+.3f} null "
                        f"{res.null_mean:+.3f} [{res.ci_low:+.3f}, {res.ci_high:+.3f}] evidence "
                        f"{row['evidence_mass']:.3f} vs random {row['evidence_mass_random']:.3f} "
                        f"head |rho| {row['head']:.3f} bal.acc {row['balanced_accuracy'][0]:.2f}"
                        + (f" bf16 rho {row['rho_bf16']:+.3f}" if "rho_bf16" in row else ""),
                        flush=True,
                    )
    summary = derive(rows, args.evidence_gain, args.min_accuracy_gain)
    summary |= {
        "seconds": time.perf_counter() - started,
        "torch": torch.__version__,
        "threads": args.threads,
        "device": str(device),
        "args": vars(args),
    }
    write(out, rows, summary)
    return 0


def write(out: Path, rows, summary) -> None:
    (out / "calibration.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    (out / "calibration.md").write_text(markdown(rows, summary))
    print(markdown(rows, summary))


def derive(rows, evidence_gain: float, min_accuracy_gain: float) -> dict:
    """Known answers, the threshold and the agreement numbers (rows get expected/verdict).

    Known answers: an untrained model learned nothing (should fail); a trained model that
    learned the task (accuracy at least ``min_accuracy_gain`` above chance) and whose maps find
    the evidence at least ``evidence_gain`` times better than a random copy's maps shows what
    it learned (should pass); the rest is left out. The threshold maximises the balanced
    accuracy of 'rho < t passes'; among equally good thresholds the lowest one that still
    passes every should-pass case on its 95% upper bound is taken (no known-good map fails).
    """
    from cytotune.explainers.quality.sanity import verdict

    for r in rows:
        r["evidence_gain"] = r["evidence_mass"] / max(r["evidence_mass_random"], 1e-9)
        chance = 1 / r.get("n_classes", 2)
        learned = r["state"] == "trained" and (r["accuracy"] or 0) >= chance + min_accuracy_gain
        if r["state"] == "untrained":
            r["expected"] = "fail"
        elif learned and r["evidence_gain"] >= evidence_gain:
            r["expected"] = "pass"
        else:
            r["expected"] = "unknown"
    fail = [r["rho"] for r in rows if r["expected"] == "fail"]
    ok = [r for r in rows if r["expected"] == "pass"]
    if not fail or not ok:  # a run too small to have both kinds of known answer
        threshold, balanced = float("nan"), float("nan")
    else:
        threshold, balanced = best_threshold(fail, [r["rho"] for r in ok])
    floor = float(np.ceil(100 * max(r["ci"][1] for r in ok) + 1e-9) / 100) if ok else threshold
    fail_arr, ok_arr = np.asarray(fail), np.asarray([r["rho"] for r in ok])
    at_floor = ((ok_arr < floor).mean() + (fail_arr >= floor).mean()) / 2
    if ok and fail and at_floor >= balanced - 1e-9:
        threshold, balanced = floor, float(at_floor)
    head_fail = [r["cascade"].get("head", np.nan) for r in rows if r["expected"] == "fail"]
    head_ok = [r["cascade"].get("head", np.nan) for r in ok]
    for r in rows:
        r["verdict"] = verdict(*r["ci"], threshold)
        if "ci_bf16" in r:
            r["verdict_bf16"] = verdict(*r["ci_bf16"], threshold)
    trained = [r for r in rows if "rho_bf16" in r]
    learned = derive_learned(rows, min_accuracy_gain)
    return learned | {
        "threshold": threshold,
        "balanced_accuracy": balanced,
        "n_fail_cases": len(fail),
        "n_pass_cases": len(ok),
        "fail_rho_range": [min(fail), max(fail)] if fail else None,
        "pass_rho_range": [float(ok_arr.min()), float(ok_arr.max())] if ok else None,
        "pass_ci_high_max": floor if ok else None,
        "head_rho_fail_median": float(np.nanmedian(head_fail)) if head_fail else None,
        "head_rho_pass_median": float(np.nanmedian(head_ok)) if head_ok else None,
        "bf16_max_abs_rho_diff": (
            max(abs(r["rho"] - r["rho_bf16"]) for r in trained) if trained else None
        ),
        "bf16_verdict_agreement": (
            float(np.mean([r["verdict"] == r["verdict_bf16"] for r in trained]))
            if trained
            else None
        ),
    }


def derive_learned(rows, min_accuracy_gain: float) -> dict:
    """Calibrate the model verdict (explainers.quality.learned) on the known cases.

    Known answers: an untrained model should be flagged (``flag``); a trained model that
    learned the task (accuracy at least ``min_accuracy_gain`` above chance) should not
    (``keep``); trained models still at chance are left out. Rules, as 'flag when score < t':
    the head-only |rho| per (model, method), its median over a model's methods, the held-out
    balanced accuracy's lower bound against chance, and the combined verdict
    (model_verdict) at the chosen head threshold.
    """
    from cytotune.explainers.quality.learned import model_verdict

    rows = [r for r in rows if r.get("head") is not None and np.isfinite(r["head"])]
    if not rows:
        return {}
    for r in rows:
        chance = 1 / r.get("n_classes", 2)
        learned = r["state"] == "trained" and (r["accuracy"] or 0) >= chance + min_accuracy_gain
        r["model_expected"] = (
            "flag" if r["state"] == "untrained" else "keep" if learned else "unknown"
        )
    models: dict[tuple, list] = {}
    for r in rows:
        models.setdefault((r["task"], r["arch"], r["state"]), []).append(r)

    def split(items, score):
        flag = [score(i) for i in items if i[0]["model_expected"] == "flag"]
        keep = [score(i) for i in items if i[0]["model_expected"] == "keep"]
        return flag, keep

    per_method = [[r] for r in rows]
    flag, keep = split(per_method, lambda i: i[0]["head"])
    if not flag or not keep:
        return {}
    t_method, ba_method = best_threshold(keep, flag)  # 'flag when score < t'
    groups = list(models.values())
    flag_m, keep_m = split(groups, lambda g: float(np.median([r["head"] for r in g])))
    t_model, ba_model = best_threshold(keep_m, flag_m)

    def accuracy_flags(group) -> bool:
        acc, low, _ = group[0]["balanced_accuracy"]
        return low <= 1 / group[0].get("n_classes", 2)

    def combined(group, threshold) -> str:
        acc, low, _ = group[0]["balanced_accuracy"]
        return model_verdict(
            {r["method"]: r["head"] for r in group},
            accuracy=acc,
            accuracy_low=low,
            chance=1 / group[0].get("n_classes", 2),
            threshold=threshold,
        ).verdict

    def balanced(flagged) -> float:
        f = [flagged(g) for g in groups if g[0]["model_expected"] == "flag"]
        k = [not flagged(g) for g in groups if g[0]["model_expected"] == "keep"]
        return float((np.mean(f) + np.mean(k)) / 2)

    for g in groups:
        verdict = combined(g, t_model)
        for r in g:
            r["model_verdict"] = verdict
            r["model_head_median"] = float(np.median([x["head"] for x in g]))
    return {
        "head_threshold_per_method": t_method,
        "head_balanced_accuracy_per_method": ba_method,
        "head_threshold": t_model,
        "head_balanced_accuracy": ba_model,
        "head_flag_range": [min(flag_m), max(flag_m)],
        "head_keep_range": [min(keep_m), max(keep_m)],
        "accuracy_balanced_accuracy": balanced(accuracy_flags),
        "model_verdict_balanced_accuracy": balanced(lambda g: combined(g, t_model) == "untrained"),
        "n_flag_models": len(flag_m),
        "n_keep_models": len(keep_m),
        "n_unknown_models": sum(g[0]["model_expected"] == "unknown" for g in groups),
    }


def markdown(rows, summary) -> str:
    def span(key):
        v = summary.get(key)
        return "-" if not v else f"{v[0]:+.3f}..{v[1]:+.3f}"

    def num(key, fmt=".2f"):
        v = summary.get(key)
        return "-" if v is None else format(v, fmt)

    lines = [
        f"rho threshold {num('threshold', '.3f')} (balanced accuracy {num('balanced_accuracy')} "
        f"on {summary['n_fail_cases']} should-fail and {summary['n_pass_cases']} should-pass cases; "
        f"rho of should-fail {span('fail_rho_range')}, should-pass {span('pass_rho_range')}; "
        f"head-only cascade rho median: should-fail {num('head_rho_fail_median')}, "
        f"should-pass {num('head_rho_pass_median')}); "
        f"bf16 vs fp32: max |d rho| {num('bf16_max_abs_rho_diff', '.3f')}, verdicts agree "
        f"{num('bf16_verdict_agreement', '.0%')}; {num('seconds', '.0f')} s",
        "",
        f"model verdict: head-only |rho| threshold {num('head_threshold', '.3f')} on the median "
        f"over a model's methods (balanced accuracy {num('head_balanced_accuracy')} on "
        f"{summary.get('n_flag_models', 0)} untrained and {summary.get('n_keep_models', 0)} "
        f"learned models; untrained {span('head_flag_range')}, learned {span('head_keep_range')}); "
        f"per method: threshold {num('head_threshold_per_method', '.3f')}, balanced accuracy "
        f"{num('head_balanced_accuracy_per_method')}; held-out accuracy vs chance alone: "
        f"{num('accuracy_balanced_accuracy')}; combined verdict: "
        f"{num('model_verdict_balanced_accuracy')}",
        "",
        "| task | arch | state (acc) | method | rho [95% CI] | null rho | gap | seed sd | cascade head/25/50/75% | evidence: model vs random (gain) | expected | verdict | rho bf16 | head-only abs rho [95% CI] | held-out bal. acc [95% CI] | model: expected / verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        state = r["state"] + (f" ({r['accuracy']:.2f})" if r.get("accuracy") is not None else "")
        cascade = "/".join(f"{v:.2f}" for v in r["cascade"].values())
        gain = f" ({r['evidence_gain']:.2f}x)" if "evidence_gain" in r else ""
        bf = f"{r['rho_bf16']:+.3f}" if "rho_bf16" in r else ""
        lines.append(
            f"| {r['task']} | {r['arch']} | {state} | {r['method']} | {r['rho']:+.3f} "
            f"[{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}] | {r['null']:+.3f} | {r['gap']:+.3f} | "
            f"{r['seed_sd']:.3f} | {cascade} | "
            f"{r['evidence_mass']:.3f} vs {r['evidence_mass_random']:.3f}{gain} | {r['expected']} | {r['verdict']} | {bf} | "
            + learned_cells(r)
        )
    return "\n".join(lines) + "\n"


def learned_cells(r) -> str:
    if r.get("head") is None:
        return "- | - | - |"
    acc = r["balanced_accuracy"]
    return (
        f"{r['head']:.2f} [{r['head_ci'][0]:.2f}, {r['head_ci'][1]:.2f}] | "
        f"{acc[0]:.2f} [{acc[1]:.2f}, {acc[2]:.2f}] | "
        f"{r.get('model_expected', '-')} / {r.get('model_verdict', '-')} |"
    )


if __name__ == "__main__":
    raise SystemExit(main())
