"""The capability law −E_P[log pass_rate(C)] = α C^-k: recovery from closed-form and binomial pass rates, dropped
problems, calibrated intervals, and the frozen prediction of a sweep's held-out run before it trains."""

import json
import zlib

import numpy as np
import pytest
from conftest import load_config

from gptx import scaling
from gptx.scaling import capability as cap
from gptx.scaling import capability_sweep, evals
from gptx.scaling import runs as scaling_runs

ALPHA, K = 2.0 * (4.5e10) ** 0.35, 0.35  # −E[log pass] from 2 (C = 4.5e10) down to ~0.5 over the preset's sweep


def _difficulty(n_problems: int, seed: int = 0) -> np.ndarray:
    """Per-problem multipliers of the law with mean exactly 1, so −mean_p log p_p(C) = α C^-k in closed form."""
    d = np.random.default_rng(seed).uniform(0.3, 1.7, n_problems)
    return d / d.mean()


def _pass_rates(compute, difficulty, alpha=ALPHA, k=K) -> np.ndarray:
    """[runs, problems] p_p(C) = exp(−d_p α C^-k)."""
    return np.exp(-np.outer(alpha * np.asarray(compute, np.float64) ** -k, difficulty))


def _counts(rates: np.ndarray, n: int, seed: int) -> cap.PassCounts:
    c = np.random.default_rng(seed).binomial(n, rates)
    return cap.PassCounts(tuple(range(rates.shape[1])), np.full_like(c, n), c)


def test_fit_recovers_the_law_from_closed_form_pass_rates():
    compute = np.geomspace(1e10, 1e12, 5)
    y = cap.mean_neg_log_pass(np.ones((5, 30)), _pass_rates(compute, _difficulty(30)))  # c/n = the exact rates
    law, resid = cap.fit_capability(compute, y)
    assert law.alpha == pytest.approx(ALPHA, rel=1e-8) and law.k == pytest.approx(K, rel=1e-10)
    assert np.abs(resid).max() < 1e-10


def test_fit_recovers_the_law_from_binomial_samples():
    """40 problems x 400 samples per run: k within 5%, the prediction 10x beyond the runs within 5%."""
    compute = np.geomspace(1e10, 1e12, 5)
    counts = _counts(_pass_rates(compute, _difficulty(40)), 400, seed=1)
    pred = cap.predict_capability(compute, counts, 1e13)
    assert pred["law"]["k"] == pytest.approx(K, rel=0.05)
    assert pred["predicted"] == pytest.approx(ALPHA * 1e13**-K, rel=0.05)
    assert pred["dropped"] == 0 and len(pred["problems"]) == 40
    assert pred["interval"][0] < pred["predicted"] < pred["interval"][1]


def test_problems_never_solved_are_dropped_and_counted():
    """Problems with zero passes in any fitted run leave P (the report's rule); the law is fitted on the rest."""
    compute = np.geomspace(1e10, 1e12, 4)
    rates = _pass_rates(compute, _difficulty(20))
    rates = np.concatenate([rates, np.zeros((4, 3))], axis=1)  # 3 problems no run solves
    counts = _counts(rates, 1000, seed=2)
    counts.c[0, 5] = 0  # one problem the smallest run missed
    pred = cap.predict_capability(compute, counts, 1e13)
    assert pred["dropped"] == 4
    assert pred["problems"] == [p for p in range(20) if p != 5]
    assert pred["law"]["k"] == pytest.approx(K, rel=0.05)


def test_measurement_counts_unsolved_problems_at_half_a_sample():
    counts = cap.PassCounts((0, 1, 2), np.array([[10, 10, 10]]), np.array([[10, 5, 0]]))
    m = cap.measure_capability(counts, [0, 1, 2])
    assert m["measured"] == pytest.approx(-(np.log(1.0) + np.log(0.5) + np.log(0.05)) / 3)
    assert m["unsolved"] == 1 and m["measured_pass_at_1"] == pytest.approx(0.5)


def test_capability_interval_is_calibrated():
    """200 synthetic sweeps (5 runs, 30 problems x 100 samples, binomial noise): the 90% interval covers the held-out
    run's measured −E_P[log pass_rate] (a new binomial draw at 10x the largest run's compute) 80-97% of the time."""
    rng = np.random.default_rng(3)
    compute, target = np.geomspace(1e10, 1e12, 5), 1e13
    hits = 0
    for _ in range(200):
        d = _difficulty(30, seed=int(rng.integers(1 << 30)))
        counts = _counts(_pass_rates(compute, d), 100, seed=int(rng.integers(1 << 30)))
        pred = cap.predict_capability(compute, counts, target)
        held_out = _counts(_pass_rates([target], d), 100, seed=int(rng.integers(1 << 30)))
        y = cap.measure_capability(held_out, pred["problems"])["measured"]
        hits += pred["interval"][0] <= y <= pred["interval"][1]
    print(f"capability interval coverage: {hits / 200:.3f}")
    assert 0.80 <= hits / 200 <= 0.97, hits / 200


# ------------------------------------------------------------------------------------------ through the sweep


def _eval_entry(compute: float, difficulty: np.ndarray, n: int, seed: int) -> dict:
    """A run's "eval" row entry as gptx.scaling.evals writes it, pass counts drawn from the law."""
    c = np.random.default_rng(seed).binomial(n, _pass_rates([compute], difficulty)[0])
    problems = {"doc": list(range(len(c))), "n": [n] * len(c), "c": [int(x) for x in c]}
    return {"humaneval_mini": {"kind": "code", "metrics": {"pass@1": float(np.mean(c / n))}, "problems": problems}}


def test_sweep_freezes_the_capability_prediction_before_the_held_out_run(tmp_path, monkeypatch):
    """Training and evaluation replaced by draws from known laws: prediction.json holds the capability prediction
    when the held-out run starts training, and the measurement is added after, on the same problems."""
    cfg = load_config("scaling")
    cfg.scaling.update(eval_tasks="humaneval_mini", bootstrap=0)
    cfg.data.tokenizer = str(tmp_path / "unused.model")  # no tokenizer to train: nothing is tokenized
    runs = scaling.schedule(cfg)
    held_out = runs[-1][0]
    difficulty = np.concatenate([_difficulty(25), [1e3]])  # the last problem: never solved, dropped
    seen = []

    def fake_train(run_cfg, run_dir):
        name = run_dir.rstrip("/").split("/")[-1]
        if name == held_out:  # the prediction must exist before the held-out run trains
            frozen = json.loads((tmp_path / scaling.PREDICTION).read_text())
            assert frozen["capability"]["targets"][0]["measured"] is None
            assert held_out not in scaling.read_results(str(tmp_path))
            seen.append(frozen)

    def fake_eval(run_cfg, run_dir):
        compute = scaling.run_size(run_cfg)["compute"]
        return _eval_entry(compute, difficulty, 200, seed=zlib.crc32(run_dir.encode()))

    monkeypatch.setattr(scaling_runs.pretrain, "run", fake_train)
    monkeypatch.setattr(
        scaling_runs, "final_loss", lambda run_dir, smooth: (float(60 * _compute_of(runs, run_dir) ** -0.1 + 1.5), 0.0)
    )
    monkeypatch.setattr(evals, "evaluate_run", fake_eval)
    scaling.sweep(cfg, str(tmp_path))

    assert len(seen) == 1
    out = json.loads((tmp_path / scaling.PREDICTION).read_text())
    capab = out["capability"]
    assert out["made_at"] == seen[0]["made_at"]
    assert capab["dropped"] == 1 and capab["task"] == "humaneval_mini" and len(capab["problems"]) == 25
    t = capab["targets"][0]
    assert t["predicted"] == seen[0]["capability"]["targets"][0]["predicted"]  # frozen
    truth = ALPHA * scaling.run_size(runs[-1][1])["compute"] ** -K
    assert t["measured"] == pytest.approx(truth, rel=0.1) and abs(t["rel_error"]) < 0.15
    assert (tmp_path / "prediction.png").stat().st_size > 0

    fit = capability_sweep.fit(cfg.scaling, list(scaling.read_results(str(tmp_path)).values()))  # `scaling fit`'s
    assert fit["law"]["k"] == pytest.approx(K, rel=0.1) and fit["dropped"] == 1 and len(fit["runs"]) == len(runs)


def _compute_of(runs, run_dir: str) -> float:
    name = run_dir.rstrip("/").split("/")[-1]
    return next(scaling.run_size(c)["compute"] for n, c in runs if n == name)
