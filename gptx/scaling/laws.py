"""Scaling laws: L(C) = a·C^b + c (GPT-4 report) and L(N, D) = E + A/N^α + B/D^β (Chinchilla), fitted and bootstrapped.

Fits run in float64 (inside `jax.enable_x64`, so the rest of gptx keeps float32 defaults) with optax's L-BFGS,
vmapped over starting points or bootstrap resamples. Both laws use the log-sum-exp parameterisation of the
Chinchilla paper and its replication (Besiroglu et al. 2024, epoch-research/analyzing-chinchilla):

    log L(x) = LSE(a_1 - alpha_1 log x_1, ..., a_K - alpha_K log x_K, e)

with a Huber loss (delta = 1e-3) on log-loss residuals, summed over points. K = 1, x = C gives the GPT-4 law
L(C) = a C^b + c (a = exp(a_1), b = -alpha_1, c = exp(e)); K = 2, x = (N, D) gives L = E + A/N^alpha + B/D^beta.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gptx.scaling import intervals, profile

# The replication's starting grid (their notebook: alpha, beta in arange(0, 2.5, .5), e in arange(-1, 1.5, .5),
# a, b in arange(0, 30, 5)): 5 * 5 * 5 * 6 * 6 = 4500 starts, in (a, b, e, alpha, beta) order.
EPOCH_GRID = np.array(
    [
        (a, b, e, alpha, beta)
        for alpha, beta, e, a, b in itertools.product(
            np.arange(0, 2.5, 0.5),
            np.arange(0, 2.5, 0.5),
            np.arange(-1, 1.5, 0.5),
            np.arange(0, 30, 5.0),
            np.arange(0, 30, 5.0),
        )
    ]
)
# Starts for L(C) in (a, e, alpha) order; log C of real runs lies between ~25 (CPU toys) and ~60 (GPT-4).
COMPUTE_GRID = np.array(
    [
        (a, e, alpha)
        for alpha, e, a in itertools.product(
            (0.0, 0.05, 0.1, 0.2, 0.4, 0.8), np.arange(-1, 2.0, 0.5), np.arange(0, 35, 5.0)
        )
    ]
)


# ----------------------------------------------------------------------------------------------- the solver


def _objective(params, logx, logy, w, delta):
    """Weighted sum of Huber losses of log-loss residuals; params = (a_1..a_K, e, alpha_1..alpha_K)."""
    k = logx.shape[1]
    coefs, e, exps = params[:k], params[k], params[k + 1 :]
    terms = coefs[None, :] - exps[None, :] * logx  # [n, K]
    pred = jax.nn.logsumexp(jnp.concatenate([terms, jnp.full((logx.shape[0], 1), e)], axis=1), axis=1)
    return jnp.sum(w * optax.losses.huber_loss(pred, logy, delta=delta))


@jax.jit
def _solve_batch(x0, w, logx, logy, delta, max_iter, tol):
    """L-BFGS from each row of x0 [B, P] with point weights w [B, n]; returns (params [B, P], objective [B])."""

    def solve(p0, wi):
        fun = lambda p: _objective(p, logx, logy, wi, delta)
        opt = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(fun)

        def cond(carry):
            _, _, i, gnorm = carry
            return (i < max_iter) & (gnorm > tol)

        def body(carry):
            p, state, i, _ = carry
            value, grad = value_and_grad(p, state=state)
            updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=fun)
            return optax.apply_updates(p, updates), state, i + 1, optax.tree.norm(grad)

        p, _, _, _ = jax.lax.while_loop(cond, body, (p0, opt.init(p0), 0, jnp.asarray(jnp.inf, p0.dtype)))
        return p, fun(p)

    return jax.vmap(solve)(x0, w)


def _multistart(
    logx: np.ndarray,
    logy: np.ndarray,
    starts: np.ndarray,
    weights: np.ndarray | None = None,
    delta: float = 1e-3,
    screen_iters: int = 10,
    polish: int = 16,
    max_iter: int = 1000,
    chunk: int = 500,
) -> tuple[np.ndarray, float]:
    """Best-by-objective L-BFGS fit over the starting points.

    Every start gets `screen_iters` L-BFGS iterations; the `polish` best continue to convergence (max_iter).
    Running all 4500 replication starts to convergence costs minutes on a CPU and, on the Chinchilla points,
    ends at the same optimum, so the screen only saves time.
    """
    n = len(logy)
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    with jax.enable_x64(True):
        args = (jnp.asarray(logx, jnp.float64), jnp.asarray(logy, jnp.float64), delta)
        params, values = [], []
        for s in range(0, len(starts), chunk):
            x0 = jnp.asarray(starts[s : s + chunk], jnp.float64)
            p, f = _solve_batch(x0, jnp.broadcast_to(jnp.asarray(w), (len(x0), n)), *args, screen_iters, 1e-12)
            params.append(np.asarray(p))
            values.append(np.asarray(f))
        params, values = np.concatenate(params), np.concatenate(values)
        values = np.where(np.isfinite(values) & np.all(np.isfinite(params), axis=1), values, np.inf)
        best = params[np.argsort(values, kind="stable")[:polish]]
        p, f = _solve_batch(jnp.asarray(best), jnp.broadcast_to(jnp.asarray(w), (len(best), n)), *args, max_iter, 1e-12)
        p, f = np.asarray(p), np.asarray(f)
    f = np.where(np.isfinite(f), f, np.inf)
    i = int(np.argmin(f))
    return p[i], float(f[i])


def _refit_weighted(logx, logy, start: np.ndarray, weights: np.ndarray, delta: float, max_iter: int) -> np.ndarray:
    """One L-BFGS run from `start` per row of weights [B, n] (bootstrap resamples as point multiplicities)."""
    with jax.enable_x64(True):
        x0 = jnp.broadcast_to(jnp.asarray(start, jnp.float64), (len(weights), len(start)))
        p, f = _solve_batch(
            x0, jnp.asarray(weights, jnp.float64), jnp.asarray(logx), jnp.asarray(logy), delta, max_iter, 1e-12
        )
        return np.where(np.isfinite(np.asarray(f))[:, None], np.asarray(p), np.nan)


# ------------------------------------------------------------------------------------------------- the laws


@dataclasses.dataclass(frozen=True)
class ComputeLaw:
    """GPT-4's L(C) = a * C^b + c (b < 0 when loss falls with compute)."""

    a: float
    b: float
    c: float
    objective: float = float("nan")

    def __call__(self, compute):
        return self.a * np.asarray(compute, np.float64) ** self.b + self.c

    @classmethod
    def from_raw(cls, p: np.ndarray, objective: float = float("nan")) -> ComputeLaw:
        return cls(a=float(np.exp(p[0])), b=float(-p[2]), c=float(np.exp(p[1])), objective=objective)


@dataclasses.dataclass(frozen=True)
class ChinchillaLaw:
    """Chinchilla approach 3: L(N, D) = E + A / N^alpha + B / D^beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float = float("nan")

    def __call__(self, n, d):
        n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    @classmethod
    def from_raw(cls, p: np.ndarray, objective: float = float("nan")) -> ChinchillaLaw:
        a, b, e, alpha, beta = (float(x) for x in p)
        return cls(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta, objective=objective)

    @property
    def n_exponent(self) -> float:
        """N_opt ∝ C^(beta / (alpha + beta)) (the replication's 'a')."""
        return self.beta / (self.alpha + self.beta)

    @property
    def d_exponent(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def compute_optimal(self, compute) -> tuple[np.ndarray, np.ndarray]:
        """(N_opt, D_opt) minimising L(N, D) subject to C = 6 N D (Hoffmann et al. 2022, appendix D.2)."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        c6 = np.asarray(compute, np.float64) / 6
        return g * c6**self.n_exponent, c6**self.d_exponent / g

    def as_dict(self) -> dict[str, float]:
        return {**dataclasses.asdict(self), "n_exponent": self.n_exponent, "d_exponent": self.d_exponent}


def _check_points(*arrays: Sequence[float], minimum: int) -> list[np.ndarray]:
    out = [np.asarray(a, np.float64).ravel() for a in arrays]
    if len({len(a) for a in out}) != 1:
        raise ValueError(f"scaling fit: arrays of different lengths {[len(a) for a in out]}")
    if len(out[0]) < minimum:
        raise ValueError(f"scaling fit: {len(out[0])} points, need at least {minimum}")
    for a in out:
        if not np.all(np.isfinite(a) & (a > 0)):
            raise ValueError("scaling fit: compute, sizes, tokens and losses must be finite and positive")
    return out


def fit_compute_law(compute, loss, *, delta: float = 1e-3, weights=None) -> ComputeLaw:
    """Fits L(C) = a C^b + c to final losses of runs with compute C (FLOPs)."""
    compute, loss = _check_points(compute, loss, minimum=3)
    p, f = _multistart(np.log(compute)[:, None], np.log(loss), COMPUTE_GRID, weights, delta, polish=8)
    return ComputeLaw.from_raw(p, f)


def drop_highest_losses(loss, k: int) -> np.ndarray:
    """Mask keeping all but the k highest-loss points: the replication's outlier rule (k = 5)."""
    loss = np.asarray(loss, np.float64)
    return np.ones(len(loss), bool) if k <= 0 else loss < np.sort(loss)[-k]


def fit_chinchilla(
    n, d, loss, *, delta: float = 1e-3, starts: np.ndarray = EPOCH_GRID, weights=None, screen_iters: int = 10
) -> ChinchillaLaw:
    """Fits L(N, D) = E + A/N^alpha + B/D^beta: Huber on log-loss, L-BFGS from `starts`, best by objective."""
    n, d, loss = _check_points(n, d, loss, minimum=5)
    logx = np.stack([np.log(n), np.log(d)], axis=1)
    p, f = _multistart(logx, np.log(loss), starts, weights, delta, screen_iters=screen_iters)
    return ChinchillaLaw.from_raw(p, f)


# ---------------------------------------------------------------------------------------------- bootstrap


def _log(x: float) -> float:
    """log of a fitted coefficient; one that underflowed to 0 (a term the fit switched off) starts at log(tiny)."""
    return math.log(max(x, np.finfo(np.float64).tiny))


def bootstrap_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n] multiplicities of n points drawn with replacement by a seeded numpy generator."""
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    return np.stack([np.bincount(row, minlength=n) for row in idx]).astype(np.float64)


def interval(samples: np.ndarray, ci: float) -> tuple[float, float]:
    """Central `ci` percentile interval of finite samples."""
    s = np.asarray(samples, np.float64)
    s = s[np.isfinite(s)]
    lo, hi = np.percentile(s, [50 * (1 - ci), 50 * (1 + ci)])
    return float(lo), float(hi)


def bootstrap_compute_law(
    compute, loss, fit: ComputeLaw, *, resamples: int = 200, seed: int = 0, delta: float = 1e-3, max_iter: int = 500
) -> list[ComputeLaw]:
    """Refits of L(C) on resampled points, each started from `fit` (deterministic for a seed)."""
    compute, loss = _check_points(compute, loss, minimum=3)
    start = np.array([_log(fit.a), _log(fit.c), -fit.b])
    w = bootstrap_weights(len(loss), resamples, seed)
    raw = _refit_weighted(np.log(compute)[:, None], np.log(loss), start, w, delta, max_iter)
    return [ComputeLaw.from_raw(p) for p in raw if np.all(np.isfinite(p))]


def bootstrap_chinchilla(
    n, d, loss, fit: ChinchillaLaw, *, resamples: int = 200, seed: int = 0, delta: float = 1e-3, max_iter: int = 1000
) -> list[ChinchillaLaw]:
    """Refits of L(N, D) on resampled points, each started from `fit`, as the replication's bootstrap."""
    n, d, loss = _check_points(n, d, loss, minimum=5)
    start = np.array([_log(fit.A), _log(fit.B), _log(fit.E), fit.alpha, fit.beta])
    w = bootstrap_weights(len(loss), resamples, seed)
    raw = _refit_weighted(np.stack([np.log(n), np.log(d)], axis=1), np.log(loss), start, w, delta, max_iter)
    return [ChinchillaLaw.from_raw(p) for p in raw if np.all(np.isfinite(p))]


def _intervals(raw, logx, loss, logx_target, ci: float, boot_values: list[float] | None) -> dict:
    """The delta-t intervals of a fitted law at one target (gptx.scaling.intervals) and, when resampled, the case
    bootstrap's, kept for comparison: "interval" covers a measured run, "interval_law" the law's own value."""
    iv = intervals.lse_interval(np.asarray(raw), logx, np.log(loss), logx_target, ci)
    out = {"interval": list(iv.new()), "interval_law": list(iv.mean()), "interval_method": "delta-t"}
    out.update(dof=iv.dof, sigma=iv.sigma, ci=ci)
    if boot_values:
        out.update(bootstrap_interval=list(interval(boot_values, ci)), resamples=len(boot_values))
    return out


def predict_compute(compute, loss, target_compute: float, *, resamples=200, seed=0, ci=0.9, delta=1e-3) -> dict:
    """GPT-4 style prediction of the loss at target_compute from (compute, loss) of smaller runs, with intervals:
    profile-t (gptx.scaling.profile), or delta-t where the profile cannot resolve near noise-free points."""
    fit = fit_compute_law(compute, loss, delta=delta)
    boots = bootstrap_compute_law(compute, loss, fit, resamples=resamples, seed=seed, delta=delta) if resamples else []
    raw = [_log(fit.a), _log(fit.c), -fit.b]
    logx = np.log(np.asarray(compute, np.float64))[:, None]
    out = _intervals(raw, logx, loss, np.log([target_compute]), ci, [b(target_compute) for b in boots])
    predicted = float(fit(target_compute))
    fit_sse = float(np.sum((1 - fit(compute) / np.asarray(loss, np.float64)) ** 2))
    prof = profile.compute_law_intervals(compute, loss, target_compute, predicted, ci, fit_sse)
    if np.all(np.isfinite(prof["interval"] + prof["interval_law"])):
        out.update(prof, interval_method="profile-t")
    return {"law": "compute", "fit": dataclasses.asdict(fit), "target_compute": float(target_compute),
            "predicted": predicted, **out}  # fmt: skip


def predict_chinchilla(n, d, loss, target_n: float, target_d: float, *, resamples=200, seed=0, ci=0.9, delta=1e-3):
    """The loss of a (target_n, target_d) run from an approach-3 fit on smaller runs, with intervals."""
    fit = fit_chinchilla(n, d, loss, delta=delta)
    boots = bootstrap_chinchilla(n, d, loss, fit, resamples=resamples, seed=seed, delta=delta) if resamples else []
    raw = [_log(fit.A), _log(fit.B), _log(fit.E), fit.alpha, fit.beta]
    logx = np.log(np.stack([np.asarray(n, np.float64), np.asarray(d, np.float64)], axis=1))
    values = [b(target_n, target_d) for b in boots]
    return {
        "law": "chinchilla",
        "fit": fit.as_dict(),
        "target_n": float(target_n),
        "target_d": float(target_d),
        "predicted": float(fit(target_n, target_d)),
        **_intervals(raw, logx, loss, np.log([target_n, target_d]), ci, values),
    }
