"""Profile-t intervals for the loss at a target compute under L(C) = a·C^b + c (Bates & Watts 1988, ch. 6).

The delta method linearises the law around the fit; with 5 runs and 3 parameters the law is far from linear in
its irreducible term c, and the delta-t interval covers ~85% where it claims 90% (tests/test_scaling_intervals.py).
The profile interval asks instead which target losses the data can live with: write the law through its value
m = L(C_t) at the target,

    L(C) = m + a'·((C / C_t)^(−α) − 1),   a' = a·C_t^(−α) >= 0,

so that for fixed (α, m) the fit of a' is one-dimensional least squares in closed form; minimising over an α grid
gives the profile S(m) of the sum of squared relative residuals. Then, with s² = S_min / (n − 3),

    law value:     {m : S(m) − S_min <= s² t²}                       t = t_{n−3, (1+ci)/2}
    a new run:     {u : min_v [S(e^v) + (log u − v)²] − S_min <= s² t²}   (the run's own noise: one more point)

Both reduce to the textbook Student-t confidence and prediction intervals when the law is linear.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

ALPHAS = np.geomspace(1e-3, 3.0, 400)  # exponents −b searched; real sweeps sit at 0.05-0.5


def profile_sse(compute, loss, target_compute: float, m: np.ndarray, alphas: np.ndarray = ALPHAS) -> np.ndarray:
    """S(m): min over α, a' >= 0 of Σ ((L_i − law_i) / L_i)², for each candidate target loss m [V] -> [V]."""
    y = np.asarray(loss, np.float64)
    x = np.exp(-np.outer(alphas, np.log(np.asarray(compute, np.float64) / target_compute))) - 1.0  # [A, n]
    xw = x / y  # relative residuals: weights 1 / L_i
    rw = (y[None, :] - np.asarray(m, np.float64)[:, None]) / y  # [V, n]
    a = np.maximum(np.einsum("an,vn->av", xw, rw) / np.sum(xw**2, axis=1)[:, None], 0.0)  # [A, V]
    sse = np.sum((rw[None] - a[..., None] * xw[:, None, :]) ** 2, axis=2)  # [A, V]
    return _refined_min(sse, np.log(alphas))


def _refined_min(sse: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Column minima of sse [A, V] over a uniform grid, refined by the parabola through each minimum's neighbours
    (a coarse grid in α would otherwise overstate S(m) and widen the interval)."""
    i = np.clip(np.argmin(sse, axis=0), 1, len(grid) - 2)
    cols = np.arange(sse.shape[1])
    f0, f1, f2 = sse[i - 1, cols], sse[i, cols], sse[i + 1, cols]
    curv = f0 - 2 * f1 + f2
    shift = np.where(curv > 0, 0.5 * (f0 - f2) / np.where(curv > 0, curv, 1.0), 0.0)
    best = f1 - 0.25 * (f0 - f2) * shift
    return np.minimum(np.clip(best, 0.0, None), sse.min(axis=0))


def _crossings(v: np.ndarray, q: np.ndarray, level: float, center: float) -> tuple[float, float]:
    """The outermost v on each side of center where q(v) <= level, linearly interpolated; nan if the grid ends first."""
    inside = q <= level
    if not inside.any() or inside[0] or inside[-1]:
        return float("nan"), float("nan")
    idx = np.flatnonzero(inside)
    lo, hi = idx[0], idx[-1]
    v_lo = np.interp(level, [q[lo], q[lo - 1]], [v[lo], v[lo - 1]])
    v_hi = np.interp(level, [q[hi], q[hi + 1]], [v[hi], v[hi + 1]])
    return float(min(v_lo, center)), float(max(v_hi, center))


def compute_law_intervals(
    compute, loss, target_compute: float, center: float, ci: float, fit_sse: float = np.inf, points: int = 241
) -> dict[str, list[float] | int | float]:
    """{"interval" (a new run), "interval_law" (the law's value), "dof", "sigma"} at target_compute, in loss
    units; center is the fitted prediction, around which the grid of candidate losses is laid.

    fit_sse, the relative residuals' sum of squares of a fit, bounds S_min from above: a profile minimum above
    it means the α grid is too coarse for these residuals (near noise-free points), and the intervals are nan.
    """
    n = len(np.asarray(loss))
    dof = n - 3
    nan2 = [float("nan")] * 2
    if dof <= 0:
        return {"interval": nan2, "interval_law": nan2, "dof": dof, "sigma": float("nan")}
    t2 = float(stats.t.ppf(0.5 + ci / 2, dof)) ** 2
    span = 0.05
    for _ in range(8):  # widen the grid until both intervals end inside it
        v = np.log(center) + np.linspace(-span, span, points)
        s = profile_sse(compute, loss, target_compute, np.exp(v))
        s_min = float(s.min())
        if s_min > 1.01 * fit_sse + 1e-300:
            break  # the grid cannot resolve residuals this small
        s2 = max(s_min / dof, 1e-18)
        law = _crossings(v, s - s_min, s2 * t2, np.log(center))
        # a new run: its log-loss u sits (u − v) from the law's value v, one more squared residual
        q = np.min(s[None, :] + (v[:, None] - v[None, :]) ** 2, axis=1)
        new = _crossings(v, q - s_min, s2 * t2, np.log(center))
        if not np.all(np.isfinite(law + new)):
            span *= 2  # an interval runs off the grid
            continue
        reach = max(abs(e - np.log(center)) for e in law + new)
        if reach < 20 * (2 * span / (points - 1)):
            span = 2 * reach  # the interval spans few grid steps: refine
            continue
        return {"interval": list(np.exp(new)), "interval_law": list(np.exp(law)), "dof": dof,
                "sigma": float(np.sqrt(s2))}  # fmt: skip
    return {"interval": nan2, "interval_law": nan2, "dof": dof, "sigma": float("nan")}
