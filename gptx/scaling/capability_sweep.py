"""The capability law on a sweep's results: the frozen prediction of the held-out runs, its measurement, the fit
over every finished run and the plot panel (the loss side of each lives in gptx.scaling.runs)."""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from gptx.errors import ConfigError
from gptx.scaling import capability

# What a capability prediction keeps per target (the law, P and the fitted points are shared by all targets)
TARGET_KEYS = ("target_compute", "predicted", "interval", "interval_law", "predicted_geomean_pass",
               "geomean_pass_interval", "ci", "dof")  # fmt: skip


def task_of(s: ml_collections.ConfigDict, rows: list[dict]) -> str | None:
    """config.scaling.capability_task, else the first task with per-problem counts in the rows; None: no task."""
    if s.capability_task:
        return s.capability_task
    for row in rows:
        for task, entry in row.get("eval", {}).items():
            if "problems" in entry:
                return task
    return None


def _counts(rows: list[dict], task: str) -> capability.PassCounts:
    try:
        return capability.pass_counts(rows, task)
    except ValueError as e:
        hint = "config.scaling.eval_tasks must include it for every run"
        raise ConfigError(f"scaling capability: {e} ({hint})") from None


def new_prediction(s: ml_collections.ConfigDict, points: list[dict], targets: list[dict]) -> dict | None:
    """The capability prediction of every target from the fitted runs (None when the sweep evaluates no task)."""
    task = task_of(s, points)
    if task is None:
        return None
    counts = _counts(points, task)
    compute = [p["compute"] for p in points]
    try:
        preds = [capability.predict_capability(compute, counts, t["compute"], s.ci) for t in targets]
    except ValueError as e:  # e.g. no problem solved by every small run: the loss prediction still stands
        return {"task": task, "law": None, "note": str(e), "evaluated": len(counts.docs), "targets": []}
    first = preds[0] if preds else capability.predict_capability(compute, counts, compute[-1], s.ci)
    return {
        "task": task,
        "law": first["law"],
        "problems": first["problems"],
        "dropped": first["dropped"],  # never solved by some fitted run: left out of P
        "evaluated": len(counts.docs),
        "fit_compute": compute,
        "fit_neg_log_pass": first["fit_neg_log_pass"],
        "targets": [{"name": t["name"], **{k: p[k] for k in TARGET_KEYS}} for t, p in zip(targets, preds, strict=True)],
    }


def add_measurements(cap: dict, results: dict[str, dict]) -> None:
    """Adds each trained target's measured −E_P[log pass_rate] on the frozen P, relative error and coverage."""
    for t in cap["targets"]:
        row = results.get(t["name"])
        if row is None or cap["task"] not in row.get("eval", {}):
            t["measured"] = None
            continue
        t.update(capability.measure_capability(_counts([row], cap["task"]), cap["problems"]))
        y = t["measured"]
        t["rel_error"] = (t["predicted"] - y) / y if y > 0 else None
        t["within_interval"] = bool(t["interval"][0] <= y <= t["interval"][1])


def fit(s: ml_collections.ConfigDict, rows: list[dict]) -> dict | None:
    """The capability law fitted to every finished run (P: problems every run solved), fitted vs measured."""
    task = task_of(s, rows)
    if task is None:
        return None
    counts = _counts(rows, task)
    keep = capability.solved_by_all(counts)
    if keep.sum() == 0 or len(rows) < 2:
        note = f"needs >= 2 runs and a problem every run solved ({len(rows)} runs, {len(counts.docs)} problems)"
        return {"task": task, "law": None, "note": note, "problems": 0, "dropped": int((~keep).sum())}
    y = capability.mean_neg_log_pass(counts.n[:, keep], counts.c[:, keep])
    compute = np.array([r["compute"] for r in rows])
    law, resid = capability.fit_capability(compute, y)
    return {
        "task": task,
        "law": dataclasses.asdict(law),
        "problems": int(keep.sum()),
        "dropped": int((~keep).sum()),
        "log_residual_std": float(np.sqrt(np.sum(resid**2) / max(len(rows) - 2, 1))),
        "runs": [
            {"name": r["name"], "compute": r["compute"], "measured": float(m), "fitted": float(law(r["compute"]))}
            for r, m in zip(rows, y, strict=True)
        ],
    }


def plot(ax, cap: dict) -> None:
    """Right panel: fitted −E_P[log pass_rate] of the small runs, the law, predictions with intervals, measured."""
    c = np.array(cap["fit_compute"])
    ax.plot(c, cap["fit_neg_log_pass"], "o", color="C0", label=f"runs fitted ({len(cap['problems'])} problems)")
    hi_c = max([t["target_compute"] for t in cap["targets"]] + list(c))
    grid = np.geomspace(c.min() / 1.5, hi_c * 1.5, 200)
    law = capability.CapabilityLaw(**cap["law"])
    ax.plot(grid, law(grid), "-", color="C0", alpha=0.7, label=r"fit $\alpha C^{-k}$")
    for i, t in enumerate(cap["targets"]):
        lo, hi = t["interval"]
        yerr = np.maximum([[t["predicted"] - lo], [hi - t["predicted"]]], 0)
        label = f"prediction ({int(100 * t['ci'])}% interval)" if i == 0 else None
        ax.errorbar([t["target_compute"]], [t["predicted"]], yerr=yerr, fmt="s", color="C1", capsize=4, label=label)
        if t.get("measured") is not None:
            label = "measured" if i == 0 else None
            ax.plot([t["target_compute"]], [t["measured"]], "*", ms=14, color="C3", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="training compute C (FLOPs)", ylabel="−mean log pass rate", title=f"capability: {cap['task']}")
    ax.legend()
