"""Benchmark: GPT-4's capability prediction on a CPU.

Trains configs/scaling.py:capability_graded (2-layer GPT-2s of widths 56-80 and a held-out 128 on the bundled
corpus mixed with generated digit problems of graded difficulty, half the bytes; every run evaluated on the 48
held-out problems of `graded_code` with 16 samples each at temperature 1, run against unit tests in the sandbox), fits
−E_P[log pass_rate] = α·C^−k on all but the largest run, predicts the largest before it trains (frozen in
WORKDIR/prediction.json), trains it and prints one JSON line: runs, compute span of the fitted runs, extrapolation
factor, predicted and measured −E_P[log pass_rate] (and the geometric-mean and mean pass@1), relative error, the
90% interval and whether it covers, and `nested_coverage`: how often the interval of each run predicted from the
runs before it (at least 3) covered it. Goal: relative error <= 10% with the interval covering. Resumable: rerun
with the same --workdir to skip finished runs. `--preset=capability_tiny` runs in about a minute (no goal there).

  python tests/benchmarks/capability_prediction.py [--workdir=/tmp/gptx_capability_bench] [--preset=capability_graded]
      [--set=scaling.task_data_weight=0.5 ...]
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]


def load_config(arg: str):
    spec = importlib.util.spec_from_file_location("configs_scaling", REPO / "configs" / "scaling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def nested_coverage(rows: list[dict], task: str, ci: float) -> dict:
    """Each run from the 4th on predicted from the runs before it (P: problems they all solved): how many of
    those predictions' intervals cover the measurement."""
    from gptx.scaling import capability as cap

    covered, total = 0, 0
    for i in range(3, len(rows)):
        counts = cap.pass_counts(rows[:i], task)
        try:
            pred = cap.predict_capability([r["compute"] for r in rows[:i]], counts, rows[i]["compute"], ci)
        except ValueError:
            continue
        y = cap.measure_capability(cap.pass_counts([rows[i]], task), pred["problems"])["measured"]
        covered += int(pred["interval"][0] <= y <= pred["interval"][1])
        total += 1
    return {"covered": covered, "predictions": total}


def configure(args: argparse.Namespace, seed: int):
    """The preset with --set applied; seed > 0 reseeds the repetition (init, data order, split, task data)."""
    cfg = load_config(args.preset)
    for item in args.set:  # the same values the sweep was run with, or it trains another schedule
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        cfg[section][name] = ast.literal_eval(value)
    if seed:
        cfg.train.seed, cfg.data.seed, cfg.scaling.seed = seed, seed, seed
    return cfg


def run_sweep(cfg, workdir: str) -> dict:
    """One sweep with its frozen predictions: the benchmark's figures for it."""
    from gptx import scaling

    results = scaling.sweep(cfg, workdir)  # freezes the prediction before the held-out run trains
    pred = scaling.predict(cfg, workdir)
    cap = pred["capability"]
    runs = [results[name] for name, _ in scaling.schedule(cfg)]
    fitted = [r for r in runs if r["name"] in pred["fit_on"]]
    loss = pred["targets"][-1]
    out = {"runs": len(runs), "task": cap["task"], "task_data": cfg.scaling.task_data,
           "task_data_weight": cfg.scaling.task_data_weight,
           "samples_per_problem": runs[-1]["eval"][cap["task"]]["problems"]["n"][0],
           "compute_span_fitted": fitted[-1]["compute"] / fitted[0]["compute"]}  # fmt: skip
    if cap.get("law"):
        t = cap["targets"][-1]
        out.update(
            extrapolation=t["target_compute"] / fitted[-1]["compute"],
            law=cap["law"],
            problems=len(cap["problems"]),
            dropped=cap["dropped"],
            target=t["name"],
            fitted_neg_log_pass=cap["fit_neg_log_pass"],
            predicted_neg_log_pass=t["predicted"],
            interval=t["interval"],
            measured_neg_log_pass=t["measured"],
            predicted_geomean_pass=t["predicted_geomean_pass"],
            measured_geomean_pass=t["measured_geomean_pass"],
            measured_pass_at_1=t["measured_pass_at_1"],
            unsolved_in_target=t["unsolved"],
            rel_error=t["rel_error"],
            covered=t["within_interval"],
            nested_coverage=nested_coverage(runs, cap["task"], cfg.scaling.ci),
        )
    else:
        out["note"] = cap.get("note")
    out.update(loss_predicted=loss["predicted"], loss_interval=loss["interval"], loss_measured=loss.get("measured"),
               loss_rel_error=loss.get("rel_error"), loss_covered=loss.get("within_interval"))  # fmt: skip
    return out


def coverage(reps: list[dict]) -> dict:
    """Over the repetitions: how often each law's interval covered its measurement, and the relative errors."""
    cap = [r for r in reps if "covered" in r]
    return {
        "repetitions": len(reps),
        "capability_covered": sum(bool(r["covered"]) for r in cap),
        "capability_predictions": len(cap),
        "capability_rel_errors": [r["rel_error"] for r in cap],
        "capability_median_abs_rel_error": float(np.median([abs(r["rel_error"]) for r in cap])) if cap else None,
        "loss_covered": sum(bool(r["loss_covered"]) for r in reps),
        "loss_predictions": len(reps),
        "loss_rel_errors": [r["loss_rel_error"] for r in reps],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/gptx_capability_bench")
    parser.add_argument("--preset", default="capability_graded", help="a preset of configs/scaling.py")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. scaling.d_models=(56,64,72,80,128) (repeatable)")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=1, help="repetitions, seeds 0..N-1 in WORKDIR/seedI: coverage")
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(REPO))

    t0 = time.perf_counter()
    if args.seeds == 1:
        out = {"benchmark": "capability_prediction", **run_sweep(configure(args, 0), args.workdir)}
    else:
        reps = []
        for seed in range(args.seeds):
            t1 = time.perf_counter()
            rep = run_sweep(configure(args, seed), os.path.join(args.workdir, f"seed{seed}"))
            reps.append({"seed": seed, **rep, "wall_s": time.perf_counter() - t1})
        out = {"benchmark": "capability_prediction", "preset": args.preset, "coverage": coverage(reps),
               "repetitions": reps}  # fmt: skip
    out["goal_rel_error"] = 0.10
    out["wall_s"] = time.perf_counter() - t0
    print(json.dumps(out))


if __name__ == "__main__":
    main()
