"""Scaling sweeps: a family of runs through the training loop, their results, fits and predictions."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import time

import jax
import ml_collections
import numpy as np

from gptx import config as config_lib
from gptx import flops, fs
from gptx.errors import ConfigError, DataError
from gptx.models import GPTConfig
from gptx.scaling import capability_data, capability_sweep, evals, midrun
from gptx.scaling.laws import (
    ChinchillaLaw,
    ComputeLaw,
    bootstrap_chinchilla,
    bootstrap_compute_law,
    drop_highest_losses,
    fit_chinchilla,
    fit_compute_law,
    interval,
    predict_chinchilla,
    predict_compute,
)
from gptx.train import logs, pretrain

# ------------------------------------------------------------------------------------------- config + sweep

LAWS = ("compute", "chinchilla")
# Free parameters of each law (a, b, c; E, A, B, alpha, beta): a fit on fewer finished runs is not determined.
LAW_PARAMETERS = {"compute": 3, "chinchilla": 5}
RESULTS = "results.jsonl"
PREDICTION = "prediction.json"


def scaling_defaults() -> ml_collections.ConfigDict:
    """The `config.scaling` section (its schema lives in gptx/config.py with every other section)."""

    return config_lib.default().scaling


def validate_scaling(s: ml_collections.ConfigDict) -> None:
    """ConfigError naming the key for a schedule or fit that cannot run."""
    if s.law not in LAWS:
        raise ConfigError(f"config.scaling.law={s.law!r} is not one of {', '.join(LAWS)}")
    for key in ("n_sizes", "d_model_min", "d_model_max", "n_layer_min", "n_layer_max", "head_dim", "min_steps"):
        if s[key] <= 0:
            raise ConfigError(f"config.scaling.{key}={s[key]} must be positive")
    if s.d_model_min < s.head_dim or s.d_model_max < s.d_model_min or s.n_layer_max < s.n_layer_min:
        raise ConfigError("config.scaling.d_model_min/max and n_layer_min/max must be ordered, d_model >= head_dim")
    if s.tokens_per_param <= 0 and s.compute_budget <= 0 and not s.tokens_per_param_grid:
        raise ConfigError("config.scaling.tokens_per_param or config.scaling.compute_budget must be positive")
    if any(not isinstance(r, (int, float)) or r <= 0 for r in s.tokens_per_param_grid):
        raise ConfigError(
            f"config.scaling.tokens_per_param_grid={tuple(s.tokens_per_param_grid)} must hold positive ratios"
        )
    if s.d_models and (len(s.d_models) != s.n_sizes or any(int(d) % s.head_dim for d in s.d_models)):
        raise ConfigError(f"config.scaling.d_models={tuple(s.d_models)}: n_sizes of them, multiples of head_dim")
    if not 0 <= s.holdout < s.n_sizes or s.smooth_evals <= 0 or not 0 < s.ci < 1:
        raise ConfigError("config.scaling.holdout must be in [0, n_sizes), smooth_evals > 0 and ci in (0, 1)")
    if any(not isinstance(f, (int, float)) or not 0 < f < 1 for f in s.eval_at):
        raise ConfigError(f"config.scaling.eval_at={tuple(s.eval_at)} must hold fractions of a run in (0, 1)")
    if s.eval_shots < 0 or s.bootstrap < 0:
        raise ConfigError(f"config.scaling.eval_shots={s.eval_shots} and bootstrap={s.bootstrap} must be >= 0")


def _seq_len(cfg) -> int:
    return cfg.data.seq_len or cfg.model.block_size


def run_size(cfg: ml_collections.ConfigDict) -> dict:
    """Parameters, FLOPs per token (as MFU counts them), tokens and compute of a config's training run."""

    model = GPTConfig.from_config(cfg.model)
    seq = _seq_len(cfg)
    n_params = flops.count_params(model)
    fpt = flops.flops_per_token(model, seq)
    tokens = cfg.train.steps * cfg.train.batch_size * seq
    return {"n_params": n_params, "flops_per_token": fpt, "tokens": tokens, "compute": fpt * tokens}


def _size_config(cfg: ml_collections.ConfigDict, i: int) -> ml_collections.ConfigDict:
    """Run config of the i-th size: d_model and n_layer geometric between their min and max."""
    s = cfg.scaling
    t = i / max(s.n_sizes - 1, 1)
    d = max(s.head_dim, round(s.d_model_min * (s.d_model_max / s.d_model_min) ** t / s.head_dim) * s.head_dim)
    d = int(s.d_models[i]) if s.d_models else d  # explicit widths replace the geometric ones
    layers = max(1, round(s.n_layer_min * (s.n_layer_max / s.n_layer_min) ** t))
    c = ml_collections.ConfigDict(cfg.to_dict())
    c.model.update(name=f"{cfg.model.name}-d{d}-l{layers}", d_model=d, n_layer=layers, n_head=d // s.head_dim)
    c.model.update(d_head=0, d_ff=0)
    c.train.steps = 1
    return c


def _with_steps(c: ml_collections.ConfigDict, steps: int, warmup: int) -> ml_collections.ConfigDict:
    """A copy of c training `steps` steps; the cosine schedule ends at the run's own last step."""
    c = ml_collections.ConfigDict(c.to_dict())
    c.train.update(
        steps=steps,
        decay_steps=0,
        warmup_steps=min(warmup, steps // 5),
        eval_every=max(1, steps // 10),
        log_every=min(c.train.log_every, steps),
        ckpt_every=max(1, steps // 2),
    )
    return c


def schedule(cfg: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
    """(name, run config) of every sweep run, by increasing compute.

    Sizes: geometric d_model and n_layer. Tokens per size: tokens_per_param x parameters, or the compute budget;
    with tokens_per_param_grid, one run per (size, ratio), the N x D grid Chinchilla's L(N, D) is fitted on.
    """
    s = cfg.scaling
    validate_scaling(s)
    runs = []
    for i in range(s.n_sizes):
        c = _size_config(cfg, i)
        size = run_size(c)  # per step: c.train.steps = 1
        if s.tokens_per_param_grid:
            budgets = [r * size["n_params"] for r in s.tokens_per_param_grid]
        elif s.tokens_per_param > 0:
            budgets = [s.tokens_per_param * size["n_params"]]
        else:
            budgets = [s.compute_budget / size["flops_per_token"]]
        for tokens in budgets:
            steps = max(s.min_steps, math.ceil(tokens / size["tokens"]))
            name = f"d{c.model.d_model}-l{c.model.n_layer}-s{steps}"
            if all(name != r[0] for r in runs):  # rounding (or min_steps) can repeat a run
                runs.append((name, _with_steps(c, steps, cfg.train.warmup_steps)))
    return sorted(runs, key=lambda r: run_size(r[1])["compute"])


def read_results(workdir: str) -> dict[str, dict]:
    """The sweep's finished runs, by name (a later line for the same name wins)."""
    path = fs.join(workdir, RESULTS)
    if not fs.exists(path):
        return {}
    out = {}
    for lineno, line in enumerate(fs.read_text(path).splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not JSON ({e})") from e
            out[row["name"]] = row
    return out


def final_loss(run_dir: str, smooth: int) -> tuple[float, float]:
    """(mean of the last `smooth` eval losses, last train loss) from a run's metrics.jsonl (resumes deduplicated)."""
    evals, train = {}, {}
    for row in logs.read_metrics(run_dir):
        if "eval_loss" in row:
            evals[row["step"]] = float(row["eval_loss"])
        if "loss" in row:
            train[row["step"]] = float(row["loss"])
    if not evals:
        raise ConfigError(
            f"{run_dir}/metrics.jsonl has no eval_loss: the corpus needs a validation split (config.data.val_fraction)"
        )
    last = [evals[k] for k in sorted(evals)[-smooth:]]
    return float(np.mean(last)), train[max(train)] if train else float("nan")


def train_run(name: str, cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) one sweep run in WORKDIR/runs/NAME and appends its result line."""

    run_dir = fs.join(workdir, "runs", name)
    t0 = time.perf_counter()
    size = run_size(cfg)
    if cfg.scaling.eval_tasks and cfg.scaling.eval_at:  # evaluated at intermediate checkpoints too
        tokens_per_step = cfg.train.batch_size * _seq_len(cfg)
        mid = midrun.train(cfg, run_dir, evals.evaluate_run, tokens_per_step, size["flops_per_token"])
    else:
        mid = None
        pretrain.run(cfg, run_dir)
    eval_loss, train_loss = final_loss(run_dir, cfg.scaling.smooth_evals)
    row = {
        "name": name,
        "d_model": cfg.model.d_model,
        "n_layer": cfg.model.n_layer,
        "n_head": cfg.model.n_head,
        "steps": cfg.train.steps,
        **size,
        "loss": eval_loss,
        "train_loss": train_loss,
        "wall_s": time.perf_counter() - t0,
        "workdir": run_dir,
    }
    if cfg.scaling.eval_tasks:
        t1 = time.perf_counter()
        row["eval"] = evals.evaluate_run(cfg, run_dir)
        row["eval_s"] = time.perf_counter() - t1
    if mid is not None:
        row["eval_steps"] = mid  # [{"step", "tokens", "compute", "eval"}] before the final step
    if jax.process_index() == 0:
        fs.append_text(fs.join(workdir, RESULTS), json.dumps(row) + "\n")
    return row


def _shared_tokenizer(cfg: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """All runs share one tokenizer (the sweep workdir's own unless the config names one)."""

    cfg = ml_collections.ConfigDict(cfg.to_dict())
    if not cfg.data.tokenizer:
        cfg.data.tokenizer = pretrain.tokenizer_path(cfg, fs.absolute(workdir))
        if not fs.exists(cfg.data.tokenizer):
            fs.makedirs(workdir)
            pretrain.train_tokenizer(cfg, workdir)
    return cfg


def sweep(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
    """Trains every run of the schedule not yet in WORKDIR/results.jsonl, smallest first.

    When runs are held out (scaling.holdout) and no external target is set, their loss is predicted from the
    finished smaller runs before the first of them trains, and compared with the measurement afterwards. With
    config.scaling.eval_tasks, every run is evaluated when it finishes and the prediction includes the capability.
    """
    evals.validate(cfg)  # a task that cannot run fails before the first run trains
    cfg = capability_data.mixed_corpus(cfg, workdir)  # config.scaling.task_data: generated task data mixed in
    cfg = _shared_tokenizer(cfg, workdir)
    runs = schedule(cfg)
    n_fit = len(runs) - cfg.scaling.holdout
    for i, (name, run_cfg) in enumerate(runs):
        done = read_results(workdir)
        if i == n_fit and not cfg.scaling.target and name not in done:
            predict(cfg, workdir)  # before the held-out runs train
        if name in done:
            print(f"scaling: {name} done, skipped")
            continue
        print(f"scaling: training {name} ({i + 1}/{len(runs)}, {run_cfg.train.steps} steps)")
        train_run(name, run_cfg, workdir)
    if cfg.scaling.holdout and not cfg.scaling.target:
        predict(cfg, workdir)
    return read_results(workdir)


# ------------------------------------------------------------------------------------------ predict + fit


def load_config_spec(spec: str) -> ml_collections.ConfigDict:
    """get_config(arg) of a config file spec `path/to/file.py[:arg]`, as --config= loads it."""
    import importlib.util

    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise ConfigError(f"config.scaling.target={spec!r}: no such config file {path}")
    module_spec = importlib.util.spec_from_file_location("gptx_scaling_target", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def _targets(cfg, results: dict[str, dict]) -> tuple[list[dict], list[dict]]:
    """(fit points, targets): the finished smaller runs, and the runs or config to predict."""
    runs = schedule(cfg)
    n_fit = len(runs) - cfg.scaling.holdout if not cfg.scaling.target else len(runs)
    points = [results[name] for name, _ in runs[:n_fit] if name in results]
    if cfg.scaling.target:
        size = run_size(load_config_spec(cfg.scaling.target))
        measured = cfg.scaling.measured or None
        return points, [{"name": cfg.scaling.target, **size, "measured": measured}]
    targets = []
    for name, run_cfg in runs[n_fit:]:
        measured = results[name]["loss"] if name in results else None
        targets.append({"name": name, **run_size(run_cfg), "measured": measured})
    return points, targets


def predict(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    """Predicts the held-out (or target) runs' final loss from the smaller runs; compares once measured.

    The first prediction is frozen in WORKDIR/prediction.json (with the time it was made); later calls only add
    the measured losses and relative errors, so the file shows the prediction as it was before training. When
    the fitted runs were evaluated on tasks, the capability law's prediction is frozen with it ("capability").
    """
    s = cfg.scaling
    results = read_results(workdir)
    points, targets = _targets(cfg, results)
    path = fs.join(workdir, PREDICTION)
    fit_names = [p["name"] for p in points]
    stored = None
    if fs.exists(path):
        stored = json.loads(fs.read_text(path))
        if stored.get("fit_on") != fit_names or [t["name"] for t in stored["targets"]] != [t["name"] for t in targets]:
            stored = None  # a different sweep or target: predict afresh
    if stored is None:
        stored = _new_prediction(s, points, targets)
    for old, new in zip(stored["targets"], targets, strict=True):
        old["measured"] = new["measured"]
        if new["measured"] is not None:
            old["rel_error"] = (old["predicted"] - new["measured"]) / new["measured"]
            old["within_interval"] = old["interval"][0] <= new["measured"] <= old["interval"][1]
    if stored.get("capability"):
        capability_sweep.add_measurements(stored["capability"], results)
    if jax.process_index() == 0:
        fs.makedirs(workdir)
        fs.write_atomic(path, json.dumps(stored, indent=1))
        plot_prediction(stored, points, fs.join(workdir, "prediction.png"))
    for t in stored["targets"]:
        measured = "not trained yet" if t["measured"] is None else f"measured {t['measured']:.4f}"
        lo, hi = t["interval"]
        print(f"scaling: {t['name']}: predicted {t['predicted']:.4f} [{lo:.4f}, {hi:.4f}], {measured}")
    for t in (stored.get("capability") or {}).get("targets", []):
        measured = "not trained yet" if t.get("measured") is None else f"measured {t['measured']:.4f}"
        lo, hi = t["interval"]
        what = f"−E[log pass_rate] predicted {t['predicted']:.4f} [{lo:.4f}, {hi:.4f}]"
        print(f"scaling: {t['name']}: {what}, {measured}")
    return stored


def _require_points(s, n_points: int, action: str, where: str) -> None:
    """ConfigError when fewer runs are finished than the law has parameters."""
    need = LAW_PARAMETERS[s.law]
    if n_points < need:
        raise ConfigError(
            f"scaling {action}: {n_points} finished runs {where}, the {s.law} law has {need} parameters and needs "
            f"at least {need} (run `scaling sweep` first; config.scaling.n_sizes or its size range may be too small: "
            "sizes that round alike are trained once)"
        )


def _new_prediction(s, points: list[dict], targets: list[dict]) -> dict:
    _require_points(s, len(points), "predict", "to fit on")
    c = np.array([p["compute"] for p in points])
    loss = np.array([p["loss"] for p in points])
    kw = dict(resamples=s.bootstrap, seed=s.seed, ci=s.ci, delta=s.huber_delta)
    out_targets = []
    fit = None
    for t in targets:
        if s.law == "compute":
            pred = predict_compute(c, loss, t["compute"], **kw)
        else:
            n = np.array([p["n_params"] for p in points])
            d = np.array([p["tokens"] for p in points])
            keep = drop_highest_losses(loss, s.exclude_highest)
            pred = predict_chinchilla(n[keep], d[keep], loss[keep], t["n_params"], t["tokens"], **kw)
        fit = pred.pop("fit")
        out_targets.append({**{k: t[k] for k in ("name", "n_params", "tokens", "compute")}, **pred})
    return {
        "law": s.law,
        "fit": fit,
        "fit_on": [p["name"] for p in points],
        "made_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "targets": out_targets,
        "capability": capability_sweep.new_prediction(s, points, targets),
    }


def _law_curve(pred: dict, points: list[dict], compute: np.ndarray) -> np.ndarray:
    if pred["law"] == "compute":
        f = pred["fit"]
        return ComputeLaw(a=f["a"], b=f["b"], c=f["c"])(compute)
    # L(N, D) along the sweep: N and D as power laws of C through the fitted points and targets.
    rows = points + pred["targets"]
    logc = np.log([r["compute"] for r in rows])
    law = ChinchillaLaw(**{k: pred["fit"][k] for k in ("E", "A", "B", "alpha", "beta")})
    n = np.exp(np.polyval(np.polyfit(logc, np.log([r["n_params"] for r in rows]), 1), np.log(compute)))
    return law(n, compute / (6 * n))


def plot_prediction(pred: dict, points: list[dict], path: str) -> None:
    """PNG: fitted runs, the fitted law, each prediction with its interval, and measured losses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cap = pred.get("capability") if (pred.get("capability") or {}).get("law") else None
    fig, axes = plt.subplots(1, 2 if cap else 1, figsize=(13 if cap else 7, 4.5), squeeze=False)
    ax = axes[0, 0]
    if cap:
        capability_sweep.plot(axes[0, 1], cap)
    c = np.array([p["compute"] for p in points])
    ax.plot(c, [p["loss"] for p in points], "o", color="C0", label="runs fitted")
    hi_c = max([t["compute"] for t in pred["targets"]] + list(c))
    grid = np.geomspace(c.min() / 1.5, hi_c * 1.5, 200)
    ax.plot(grid, _law_curve(pred, points, grid), "-", color="C0", alpha=0.7, label=f"fit ({pred['law']} law)")
    for i, t in enumerate(pred["targets"]):
        lo, hi = t["interval"]
        yerr = [[t["predicted"] - lo], [hi - t["predicted"]]]
        label = f"prediction ({int(100 * t['ci'])}% interval)" if i == 0 else None
        ax.errorbar(
            [t["compute"]], [t["predicted"]], yerr=np.maximum(yerr, 0), fmt="s", color="C1", capsize=4, label=label
        )
        if t.get("measured") is not None:
            ax.plot([t["compute"]], [t["measured"]], "*", ms=14, color="C3", label="measured" if i == 0 else None)
    ax.set_xscale("log")
    ax.set(xlabel="training compute C (FLOPs)", ylabel="final eval loss (nats/token)", title="predictable scaling")
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, dpi=100, format="png")
    plt.close(fig)
    fs.write_atomic(path, png.getvalue())


def fit_results(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    """Fits the configured law to every finished run, with bootstrap intervals; writes WORKDIR/fit.json."""
    s = cfg.scaling
    rows = list(read_results(workdir).values())
    kept = len(rows) - (min(s.exclude_highest, len(rows)) if s.law == "chinchilla" else 0)
    dropped = f" after dropping the {s.exclude_highest} highest losses" if kept < len(rows) else ""
    _require_points(s, kept, "fit", f"in {fs.join(workdir, RESULTS)}{dropped}")
    c = np.array([r["compute"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    if s.law == "compute":
        fit = fit_compute_law(c, loss, delta=s.huber_delta)
        boots = bootstrap_compute_law(c, loss, fit, resamples=s.bootstrap, seed=s.seed) if s.bootstrap else []
        boots = [dataclasses.asdict(b) for b in boots]
        params = dataclasses.asdict(fit)
    else:
        n, d = np.array([r["n_params"] for r in rows]), np.array([r["tokens"] for r in rows])
        keep = drop_highest_losses(loss, s.exclude_highest)
        n, d, loss = n[keep], d[keep], loss[keep]
        fit = fit_chinchilla(n, d, loss, delta=s.huber_delta)
        boots = bootstrap_chinchilla(n, d, loss, fit, resamples=s.bootstrap, seed=s.seed) if s.bootstrap else []
        boots = [b.as_dict() for b in boots]
        params = fit.as_dict()
    out = {
        "law": s.law,
        "points": len(loss),
        "params": params,
        "intervals": {k: interval([b[k] for b in boots], s.ci) for k in params if k != "objective"} if boots else {},
        "ci": s.ci,
        "capability": capability_sweep.fit(s, rows),
    }
    logs.write_json(fs.join(workdir, "fit.json"), out)
    print(json.dumps(out))
    return out


def run_command(cfg: ml_collections.ConfigDict, workdir: str, action: str) -> dict:
    """`gptx.main scaling {sweep,fit,predict}`."""
    actions = {"sweep": sweep, "fit": fit_results, "predict": predict}
    if action not in actions:
        raise ConfigError(f"unknown scaling action {action!r}; actions: {', '.join(actions)}")
    validate_scaling(cfg.scaling)
    return actions[action](cfg, workdir)
