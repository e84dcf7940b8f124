"""The GPT-4 report's capability law: −E_P[log pass_rate(C)] = α·C^(−k), fitted on small runs, extrapolated.

A problem's pass rate at one run is the unbiased pass@1 estimate from its n samples, c of them passing
(gptx.eval.metrics.pass_at_k(n, c, 1) = c / n). log 0 is undefined and very low pass rates cannot be estimated
from n samples, so, as the report does ("we restrict to problems P and models M such that given some large
sample budget, every problem is solved at least once by every model"), P is the problems every fitted run solved
at least once; the others are dropped and counted. The law is a straight line in log-log space,

    log y(C) = log α − k log C,   y = −mean_{p∈P} log pass_rate_p(C),

fitted by least squares; its prediction interval at the held-out compute is the exact Student-t interval of
linear regression on n − 2 degrees of freedom (gptx.scaling.intervals.delta_t with the line's Jacobian).
A held-out run that fails every sample of a problem in P counts it at half a sample, pass rate 1 / (2n), so the
measurement stays finite; how many problems that happened to is reported beside it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from gptx.scaling.intervals import Interval, delta_t


@dataclasses.dataclass(frozen=True)
class PassCounts:
    """Per-problem sample counts of one task over several runs: n[r, p] samples, c[r, p] passing."""

    docs: tuple[int, ...]  # the problems' indices in the task file
    n: np.ndarray  # [runs, problems]
    c: np.ndarray  # [runs, problems]


def pass_counts(rows: Sequence[dict], task: str) -> PassCounts:
    """The task's counts from sweep result rows (their "eval" entries), on the problems every row evaluated."""
    problems = []
    for row in rows:
        entry = row.get("eval", {}).get(task)
        if entry is None or "problems" not in entry:
            raise ValueError(f"run {row.get('name')!r} has no per-problem results for task {task!r}")
        p = entry["problems"]
        problems.append({d: (n, c) for d, n, c in zip(p["doc"], p["n"], p["c"], strict=True)})
    docs = tuple(sorted(set.intersection(*(set(p) for p in problems)))) if problems else ()
    n = np.array([[p[d][0] for d in docs] for p in problems], np.int64).reshape(len(rows), len(docs))
    c = np.array([[p[d][1] for d in docs] for p in problems], np.int64).reshape(len(rows), len(docs))
    return PassCounts(docs, n, c)


def solved_by_all(counts: PassCounts) -> np.ndarray:
    """Mask of the problems with a non-zero pass rate in every run (the report's P)."""
    return np.all(counts.c > 0, axis=0)


def mean_neg_log_pass(n: np.ndarray, c: np.ndarray) -> np.ndarray:
    """−mean over problems of log pass@1, per run ([runs, problems] -> [runs]): pass@1 = c / n, which is
    gptx.eval.metrics.pass_at_k(n, c, 1); a problem with c = 0 counts at half a sample, pass rate 1 / (2n)."""
    n, c = np.asarray(n, np.float64), np.asarray(c, np.float64)
    rate = np.where(c > 0, c / np.maximum(n, 1), 0.5 / np.maximum(n, 1))
    return -np.mean(np.log(rate), axis=-1)


@dataclasses.dataclass(frozen=True)
class CapabilityLaw:
    """−E_P[log pass_rate(C)] = alpha · C^(−k), C in training FLOPs."""

    alpha: float
    k: float

    def __call__(self, compute) -> np.ndarray:
        return self.alpha * np.asarray(compute, np.float64) ** (-self.k)


def _line(logc: np.ndarray, logc0: float) -> np.ndarray:
    """Jacobian of log y = u + v·(log C − log C0) in (u, v): the regression design, centred for conditioning."""
    return np.stack([np.ones_like(logc), logc - logc0], axis=1)


def fit_capability(compute, neg_log_pass) -> tuple[CapabilityLaw, np.ndarray]:
    """Least-squares fit of log y = log α − k log C; returns the law and its log-space residuals."""
    logc, logy = np.log(np.asarray(compute, np.float64)), np.log(np.asarray(neg_log_pass, np.float64))
    if len(logc) < 2 or not np.all(np.isfinite(logy)):
        raise ValueError("capability fit: needs >= 2 runs with a positive, finite −E[log pass_rate]")
    logc0 = float(logc.mean())
    (u, v), *_ = np.linalg.lstsq(_line(logc, logc0), logy, rcond=None)
    law = CapabilityLaw(alpha=float(np.exp(u - v * logc0)), k=float(-v))
    return law, logy - np.log(law(np.exp(logc)))


def capability_interval(compute, neg_log_pass, law: CapabilityLaw, target_compute: float, ci: float) -> Interval:
    """Student-t interval of log y at target_compute (exact for a line with Gaussian log-space noise)."""
    logc = np.log(np.asarray(compute, np.float64))
    logc0 = float(logc.mean())
    resid = np.log(np.asarray(neg_log_pass, np.float64)) - np.log(law(compute))
    jt = _line(np.log([float(target_compute)]), logc0)[0]
    return delta_t(resid, _line(logc, logc0), jt, float(np.log(law(target_compute))), ci)


def predict_capability(compute, counts: PassCounts, target_compute: float, ci: float = 0.9) -> dict:
    """The report's prediction: P from the fitted runs, the law on P, −E_P[log pass_rate] at target_compute."""
    keep = solved_by_all(counts)
    if not keep.any():
        raise ValueError("capability fit: no problem was solved by every fitted run")
    y = mean_neg_log_pass(counts.n[:, keep], counts.c[:, keep])
    law, _ = fit_capability(compute, y)
    iv = capability_interval(compute, y, law, target_compute, ci)
    lo, hi = iv.new()
    pred = float(law(target_compute))
    return {
        "law": dataclasses.asdict(law),
        "problems": [d for d, k in zip(counts.docs, keep, strict=True) if k],
        "dropped": int((~keep).sum()),
        "fit_neg_log_pass": [float(v) for v in y],
        "target_compute": float(target_compute),
        "predicted": pred,  # −E_P[log pass_rate]
        "interval": [lo, hi],
        "interval_law": list(iv.mean()),
        "predicted_geomean_pass": float(np.exp(-pred)),  # exp E_P[log pass@1]: the geometric mean over P
        "geomean_pass_interval": [float(np.exp(-hi)), float(np.exp(-lo))],
        "ci": ci,
        "dof": iv.dof,
    }


def measure_capability(counts: PassCounts, problems: Sequence[int]) -> dict:
    """A run's −E_P[log pass_rate] on the predicted problems P (counts of one run), and its mean pass@1."""
    index = {d: i for i, d in enumerate(counts.docs)}
    missing = [d for d in problems if d not in index]
    if missing:
        raise ValueError(f"capability: the measured run lacks problems {missing[:10]}")
    cols = [index[d] for d in problems]
    n, c = counts.n[0, cols], counts.c[0, cols]
    y = float(mean_neg_log_pass(n, c))
    return {
        "measured": y,
        "measured_geomean_pass": float(np.exp(-y)),
        "measured_pass_at_1": float(np.mean(c / np.maximum(n, 1))),  # the arithmetic mean over P
        "unsolved": int((c == 0).sum()),  # counted at half a sample
    }
