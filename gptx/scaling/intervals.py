"""Prediction intervals calibrated for few runs: the delta method with Student-t quantiles (numpy/scipy only).

Why not the case bootstrap: resampling 5 runs to refit 3 parameters leaves most resamples with 3-4 distinct
points, which a 3-parameter law interpolates almost exactly, so the spread of refits understates the noise; and
a percentile interval uses normal-like quantiles where the residual variance has only n - p degrees of freedom
(t_{0.95, 2} = 2.92 against z = 1.64). On the loss benchmark it missed ([3.051, 3.279] against 3.020).

Here the law is fitted in log space, log L = g(x; θ) (the log-sum-exp form of gptx.scaling.laws), and

    s² = Σ r_i² / (n - p)                     residual variance, p = rank of the Jacobian J = ∂g/∂θ at θ̂
    var(ĝ(x_t)) = s² · j_tᵀ (JᵀJ)⁻¹ j_t         the fitted law's value at the target (delta method)
    interval = ĝ(x_t) ± t_{n-p, (1+ci)/2} · sqrt(var + s²·[new])

`new` adds the noise of one more run: the interval then covers a measured run (what a held-out prediction is
judged against), not only the law's value. Exact for a linear model with Gaussian noise; for the nonlinear
laws its coverage is measured by simulation (tests/test_scaling_intervals.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import optimize, stats


def lse_law(raw: np.ndarray, logx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(g [n], J [n, 2K+1]) of g = LSE(a_k - α_k log x_k, e) with raw = (a_1..a_K, e, α_1..α_K), logx [n, K].

    Analytic Jacobian: with softmax weights w over the K+1 terms, ∂g/∂a_k = w_k, ∂g/∂e = w_e, ∂g/∂α_k = -w_k log x_k.
    """
    logx = np.atleast_2d(np.asarray(logx, np.float64))
    k = logx.shape[1]
    coefs, e, exps = raw[:k], raw[k], raw[k + 1 :]
    terms = np.concatenate([coefs[None, :] - exps[None, :] * logx, np.full((len(logx), 1), e)], axis=1)
    top = terms.max(axis=1, keepdims=True)
    g = (top + np.log(np.exp(terms - top).sum(axis=1, keepdims=True)))[:, 0]
    w = np.exp(terms - g[:, None])
    return g, np.concatenate([w[:, :k], w[:, k:], -w[:, :k] * logx], axis=1)


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point prediction in log space and its intervals; `exp` gives them in the law's units (nats/token)."""

    center: float  # ĝ(x_t), log units
    half_mean: float  # half-width for the law's value at x_t
    half_new: float  # half-width for one new measured run at x_t
    dof: int  # n - p
    sigma: float  # residual standard deviation in log space (relative noise of a run)

    def mean(self) -> tuple[float, float]:
        return float(np.exp(self.center - self.half_mean)), float(np.exp(self.center + self.half_mean))

    def new(self) -> tuple[float, float]:
        return float(np.exp(self.center - self.half_new)), float(np.exp(self.center + self.half_new))


def delta_t(
    residuals: np.ndarray, jac: np.ndarray, jac_target: np.ndarray, center: float, ci: float, rcond: float = 1e-10
) -> Interval:
    """Delta-method interval with Student-t quantiles on n - rank(J) degrees of freedom (nan when none are left)."""
    residuals = np.asarray(residuals, np.float64)
    u, sv, vt = np.linalg.svd(np.asarray(jac, np.float64), full_matrices=False)
    rank = int(np.sum(sv > rcond * sv[0])) if len(sv) else 0
    dof = len(residuals) - rank
    if dof <= 0:
        return Interval(center, float("nan"), float("nan"), dof, float("nan"))
    s2 = float(residuals @ residuals) / dof
    # j_tᵀ (JᵀJ)⁺ j_t = ||Σ⁻¹ Vᵀ j_t||² over the kept singular directions
    proj = (vt[:rank] @ np.asarray(jac_target, np.float64)) / sv[:rank]
    lever = float(proj @ proj)
    t = float(stats.t.ppf(0.5 + ci / 2, dof))
    return Interval(center, t * np.sqrt(s2 * lever), t * np.sqrt(s2 * (lever + 1.0)), dof, float(np.sqrt(s2)))


def lse_interval(raw: np.ndarray, logx: np.ndarray, logy: np.ndarray, logx_target: np.ndarray, ci: float) -> Interval:
    """The delta-t interval of a fitted log-sum-exp law (raw parameters as gptx.scaling.laws) at one target."""
    raw = np.asarray(raw, np.float64)
    g, jac = lse_law(raw, logx)
    gt, jt = lse_law(raw, np.atleast_2d(logx_target))
    return delta_t(np.asarray(logy, np.float64) - g, jac, jt[0], float(gt[0]), ci)


# ----------------------------------------------------------------------- a least-squares fit for simulations


def fit_compute_law_ls(compute, loss, exponents: np.ndarray | None = None) -> np.ndarray:
    """Least-squares fit of log L = log(a C^-α + c): raw (log a, log c, α), numpy/scipy only (fast enough for
    the hundreds of synthetic sweeps a calibration check needs; the production fit is laws.fit_compute_law).

    Variable projection for the start: for each α on a grid, (a, c) by least squares on relative residuals
    (L - a C^-α - c) / L, which is linear in (a, c); the best start is polished on the log residuals.
    """
    logc, loss = np.log(np.asarray(compute, np.float64)), np.asarray(loss, np.float64)
    logc0 = logc.mean()  # centred compute keeps a = exp(log a) in range for the solver
    alphas = np.linspace(0.01, 1.5, 150) if exponents is None else exponents
    best, best_cost = None, np.inf
    for alpha in alphas:
        design = np.stack([np.exp(-alpha * (logc - logc0)), np.ones_like(logc)], axis=1) / loss[:, None]
        (a, c), *_ = np.linalg.lstsq(design, np.ones_like(loss), rcond=None)
        if a <= 0:
            continue
        c = max(c, 1e-3 * loss.min())
        cost = float(np.sum(np.log(loss / (a * np.exp(-alpha * (logc - logc0)) + c)) ** 2))
        if cost < best_cost:
            best, best_cost = np.array([np.log(a), np.log(c), alpha]), cost
    if best is None:
        raise ValueError("scaling fit: no decreasing power law fits these losses")

    def resid(p):
        return lse_law(p, (logc - logc0)[:, None])[0] - np.log(loss)

    def jac(p):
        return lse_law(p, (logc - logc0)[:, None])[1]

    p = optimize.least_squares(resid, best, jac=jac, method="lm").x
    return np.array([p[0] + p[2] * logc0, p[1], p[2]])  # undo the centring: a C^-α = a' (C/C0)^-α
