"""Predictable scaling: the fits recover known laws, reproduce the Chinchilla replication, and a sweep resumes."""

import csv
import json

import numpy as np
import pytest
from conftest import SHARED_DATA, load_config

from gptx import scaling
from gptx.config import ConfigError
from gptx.scaling import runs as scaling_runs

CHINCHILLA_CSV = SHARED_DATA / "scaling" / "chinchilla_svg_extracted.csv"
# Besiroglu et al. 2024 (epoch-research/analyzing-chinchilla, fit on the 240 points left after dropping the 5
# highest losses): a, b, e = 6.1780, 7.6427, 0.5971 (A = 482.0, B = 2085.4, E = 1.817), alpha 0.3478, beta 0.3659.
REPLICATION = {"E": 1.817, "A": 482.0, "B": 2085.4, "alpha": 0.3478, "beta": 0.3659}


def _noisy(loss, rel_sigma, seed):
    return loss * np.exp(np.random.default_rng(seed).normal(0, rel_sigma, np.shape(loss)))


def test_compute_law_recovers_a_known_law_and_extrapolates():
    """L(C) = 55 C^-0.12 + 1.8 with 0.2% noise: b within 10%, c within 3%, 10x extrapolation within 1%."""
    truth = scaling.ComputeLaw(a=55.0, b=-0.12, c=1.8)
    c = np.geomspace(1e12, 1e16, 12)
    fit = scaling.fit_compute_law(c, _noisy(truth(c), 0.002, 0))
    assert fit.b == pytest.approx(truth.b, rel=0.10)
    assert fit.c == pytest.approx(truth.c, rel=0.03)
    assert fit(1e17) == pytest.approx(truth(1e17), rel=0.01)


def test_chinchilla_fit_recovers_a_known_law():
    """E + A/N^a + B/D^b (Hoffmann's values) with 0.5% noise on an N x D grid: exponents within 0.03, E within 3%."""
    truth = scaling.ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
    n, d = (x.ravel() for x in np.meshgrid(np.geomspace(1e7, 1e10, 8), np.geomspace(1e9, 1e12, 8)))
    fit = scaling.fit_chinchilla(n, d, _noisy(truth(n, d), 0.005, 1))
    assert fit.alpha == pytest.approx(truth.alpha, abs=0.03)
    assert fit.beta == pytest.approx(truth.beta, abs=0.03)
    assert fit.as_dict()["E"] == pytest.approx(truth.E, rel=0.03)
    assert fit.n_exponent == pytest.approx(truth.n_exponent, abs=0.02)


@pytest.mark.skipif(not CHINCHILLA_CSV.exists(), reason=f"{CHINCHILLA_CSV} absent (shared data not mounted)")
def test_chinchilla_approach3_reproduces_the_replication():
    """The replication's procedure on its 245 points gives its estimates (exponents within 5%, A and B 10%)."""
    with open(CHINCHILLA_CSV) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 245
    n = np.array([float(r["Model Size"]) for r in rows])
    c = np.array([float(r["Training FLOP"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    keep = scaling.drop_highest_losses(loss, 5)
    assert keep.sum() == 240
    fit = scaling.fit_chinchilla(n[keep], c[keep] / (6 * n[keep]), loss[keep])
    got = fit.as_dict()
    print("chinchilla approach 3:", got)
    for key, rel in (("E", 0.02), ("A", 0.10), ("B", 0.10)):
        assert got[key] == pytest.approx(REPLICATION[key], rel=rel), key
    assert fit.alpha == pytest.approx(REPLICATION["alpha"], rel=0.05)
    assert fit.beta == pytest.approx(REPLICATION["beta"], rel=0.05)
    assert fit.n_exponent == pytest.approx(0.5126, abs=0.01)  # N_opt ∝ C^0.51, not Hoffmann's 0.46


def test_bootstrap_is_deterministic_for_a_seed():
    truth = scaling.ComputeLaw(a=55.0, b=-0.12, c=1.8)
    c = np.geomspace(1e12, 1e16, 8)
    loss = _noisy(truth(c), 0.005, 2)
    fit = scaling.fit_compute_law(c, loss)
    one, two, other = (scaling.bootstrap_compute_law(c, loss, fit, resamples=16, seed=s) for s in (0, 0, 1))
    assert one == two
    assert one != other
    assert np.array_equal(scaling.bootstrap_weights(8, 4, 3), scaling.bootstrap_weights(8, 4, 3))
    lo, hi = scaling.interval([b(1e17) for b in one], 0.9)
    assert lo <= fit(1e17) <= hi


def test_compute_optimal_allocation_matches_brute_force():
    """N_opt(C) = G (C/6)^(beta/(alpha+beta)) minimises L(N, C/(6N)) over a dense grid of N."""
    law = scaling.ChinchillaLaw(**REPLICATION)
    for compute in (1e18, 5.76e23):
        n_opt, d_opt = law.compute_optimal(compute)
        grid = np.geomspace(1e5, 1e14, 200_001)
        brute = grid[np.argmin(law(grid, compute / (6 * grid)))]
        assert n_opt == pytest.approx(brute, rel=1e-3)
        assert 6 * n_opt * d_opt == pytest.approx(compute, rel=1e-9)


def _fake_results(cfg, workdir, truth, skip_last=True):
    """results.jsonl for the config's schedule with losses on a known L(C)."""
    rows = []
    for name, run_cfg in scaling.schedule(cfg):
        size = scaling.run_size(run_cfg)
        rows.append({"name": name, **size, "loss": float(truth(size["compute"]))})
    with open(workdir / scaling.RESULTS, "w") as f:
        for row in rows[:-1] if skip_last else rows:
            f.write(json.dumps(row) + "\n")
    return rows


def test_prediction_is_made_before_and_compared_after(tmp_path):
    """Predicts the held-out largest run from the smaller ones, keeps that prediction, then adds the measurement."""
    cfg = load_config("scaling")
    truth = scaling.ComputeLaw(a=60.0, b=-0.1, c=1.5)
    rows = _fake_results(cfg, tmp_path, truth)
    before = scaling.predict(cfg, str(tmp_path))
    target = before["targets"][0]
    assert target["name"] == rows[-1]["name"] and target["measured"] is None
    assert target["predicted"] == pytest.approx(rows[-1]["loss"], rel=0.01)
    assert target["interval"][0] <= target["predicted"] <= target["interval"][1]
    assert (tmp_path / "prediction.png").stat().st_size > 0

    _fake_results(cfg, tmp_path, truth, skip_last=False)
    after = scaling.predict(cfg, str(tmp_path))["targets"][0]
    assert after["predicted"] == target["predicted"]  # the prediction made before training is kept
    assert after["measured"] == rows[-1]["loss"]
    assert abs(after["rel_error"]) < 0.01


def test_sweep_writes_results_skips_finished_runs_and_fits(tmp_path, monkeypatch):
    """The `:tiny` preset end to end: `scaling sweep`, a rerun that trains nothing, then `scaling fit`."""
    cfg = load_config("scaling", "tiny")
    results = scaling.sweep(cfg, str(tmp_path))
    names = [name for name, _ in scaling.schedule(cfg)]
    assert list(results) == names and len(names) == 3
    for row in results.values():
        assert row["compute"] == row["flops_per_token"] * row["tokens"]
        assert row["tokens"] == row["steps"] * cfg.train.batch_size * cfg.model.block_size
        assert np.isfinite(row["loss"])
    computes = [results[name]["compute"] for name in names]
    assert computes == sorted(computes) and len(set(computes)) == 3

    from gptx.train import pretrain

    monkeypatch.setattr(pretrain, "run", lambda *a, **k: pytest.fail("a finished run was trained again"))
    assert scaling.sweep(cfg, str(tmp_path)) == results

    out = scaling.run_command(cfg, str(tmp_path), "fit")
    assert out["law"] == "compute" and out["points"] == 3
    assert all(np.isfinite(out["params"][k]) for k in ("a", "b", "c"))
    assert json.loads((tmp_path / "fit.json").read_text())["points"] == 3


@pytest.mark.parametrize(("law", "n_runs"), [("compute", 2), ("chinchilla", 4)])
def test_fit_on_fewer_runs_than_parameters_is_a_config_error(tmp_path, law, n_runs):
    cfg = load_config("scaling", "grid")
    cfg.scaling.law = law
    rows = [{"name": name, **scaling.run_size(c), "loss": 5.0 - i} for i, (name, c) in enumerate(scaling.schedule(cfg))]
    with open(tmp_path / scaling.RESULTS, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows[:n_runs])
    need = scaling_runs.LAW_PARAMETERS[law]
    with pytest.raises(ConfigError, match=rf"scaling fit: {n_runs} finished runs in .*, the {law} law has {need} "):
        scaling.run_command(cfg, str(tmp_path), "fit")


def test_bad_scaling_config_names_the_key():
    cfg = load_config("scaling")
    cfg.scaling.law = "kaplan"
    with pytest.raises(ConfigError, match="config.scaling.law"):
        scaling.validate_scaling(cfg.scaling)
    with pytest.raises(ConfigError, match="unknown scaling action"):
        scaling.run_command(load_config("scaling"), "/tmp/unused", "train")


def test_grid_schedule_trains_every_size_at_every_token_budget():
    """tokens_per_param_grid: one run per (size, ratio), each with ~ratio x parameters tokens (Chinchilla's grid)."""
    cfg = load_config("scaling", "grid")
    ratios = cfg.scaling.tokens_per_param_grid
    runs = [(name, scaling.run_size(c)) for name, c in scaling.schedule(cfg)]
    assert len(runs) == cfg.scaling.n_sizes * len(ratios)
    by_size: dict[int, list[float]] = {}
    for _, size in runs:
        by_size.setdefault(size["n_params"], []).append(size["tokens"] / size["n_params"])
    assert len(by_size) == cfg.scaling.n_sizes
    per_step = cfg.train.batch_size * cfg.model.block_size
    for n_params, got in by_size.items():
        # steps are rounded up to whole batches, so each run gets at most one batch more than ratio x N
        assert all(0 <= g - r < per_step / n_params + 1e-9 for g, r in zip(sorted(got), ratios, strict=True))
    computes = [size["compute"] for _, size in runs]
    assert computes == sorted(computes)


def test_compute_budget_schedule_gives_every_run_the_same_flops():
    cfg = load_config("scaling")
    cfg.scaling.update(tokens_per_param=0.0, compute_budget=3e11, min_steps=1)
    for _, run_cfg in scaling.schedule(cfg):
        size = scaling.run_size(run_cfg)
        one_step = size["flops_per_token"] * cfg.train.batch_size * cfg.model.block_size
        assert 0 <= size["compute"] - 3e11 < one_step


def test_fit_of_a_grid_sweep_recovers_chinchilla_law(tmp_path):
    """`scaling fit` with law=chinchilla on a grid sweep whose losses follow a known L(N, D) (0.1% noise)."""
    cfg = load_config("scaling", "grid")
    cfg.scaling.bootstrap = 16
    truth = scaling.ChinchillaLaw(E=1.8, A=60.0, B=400.0, alpha=0.35, beta=0.45)
    rows = [{"name": name, **scaling.run_size(c)} for name, c in scaling.schedule(cfg)]
    loss = _noisy(truth(*np.array([(r["n_params"], r["tokens"]) for r in rows]).T), 0.001, 3)
    with open(tmp_path / scaling.RESULTS, "w") as f:
        for row, value in zip(rows, loss, strict=True):
            f.write(json.dumps({**row, "loss": float(value)}) + "\n")
    out = scaling.run_command(cfg, str(tmp_path), "fit")
    assert out["law"] == "chinchilla" and out["points"] == len(rows)
    got = out["params"]
    assert got["alpha"] == pytest.approx(truth.alpha, abs=0.05)
    assert got["beta"] == pytest.approx(truth.beta, abs=0.05)
    assert got["E"] == pytest.approx(truth.E, rel=0.05)
    assert json.loads((tmp_path / "fit.json").read_text())["params"] == got


@pytest.mark.slow
def test_grid_sweep_trains_and_fits_chinchilla(tmp_path):
    """A real 2 sizes x 3 budgets sweep through the training loop, then `scaling fit` with law=chinchilla."""
    cfg = load_config("scaling", "tiny")
    cfg.scaling.update(tokens_per_param_grid=(0.5, 1.0, 2.0), n_sizes=2, min_steps=2, law="chinchilla", bootstrap=8)
    results = scaling.sweep(cfg, str(tmp_path))
    assert len(results) == 6
    assert len({(r["n_params"], r["tokens"]) for r in results.values()}) == 6
    out = scaling.run_command(cfg, str(tmp_path), "fit")
    assert out["points"] == 6 and all(np.isfinite(v) for v in out["params"].values())


def test_bad_token_grid_names_the_key():
    cfg = load_config("scaling", "grid")
    cfg.scaling.tokens_per_param_grid = (10.0, -1.0)
    with pytest.raises(ConfigError, match="config.scaling.tokens_per_param_grid"):
        scaling.schedule(cfg)


def test_bootstrap_starts_from_a_fit_whose_constant_underflowed():
    """A fit that switches a term off (E or c = exp(-800) = 0.0) still bootstraps instead of failing on log(0)."""
    c = np.geomspace(1e12, 1e16, 8)
    loss = 55.0 * c**-0.12
    boots = scaling.bootstrap_compute_law(c, loss, scaling.ComputeLaw(a=55.0, b=-0.12, c=0.0), resamples=16)
    assert len(boots) == 16 and all(b(1e17) == pytest.approx(55.0 * 1e17**-0.12, rel=0.01) for b in boots)
