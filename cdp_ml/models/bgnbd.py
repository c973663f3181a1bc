"""BG/NBD (Fader, Hardie & Lee 2005): the classic "buy till you die" baseline for repurchase timing.

A small own implementation because no maintained library installs with our stack (pymc-marketing needs
Python >= 3.12, lifetimes is archived). Time unit is weeks. Per customer (or person x category track):
``x`` repeat purchases after the first, ``t_x`` time of the last purchase and ``T`` time of the cutoff,
both measured from the first purchase. The fit maximises the vectorised log-likelihood with scipy on the
unique (x, t_x, T) triples, so a million customers fit in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import betaln, digamma, gammaln

from cdp_ml.errors import CdpError


@dataclass(frozen=True)
class BgNbdParams:
    """Gamma(r, alpha) purchase rates and Beta(a, b) dropout probabilities of the population."""

    r: float
    alpha: float
    a: float
    b: float

    def __str__(self) -> str:
        return f"BG/NBD(r={self.r:.3f}, alpha={self.alpha:.3f}, a={self.a:.3f}, b={self.b:.3f})"


def log_likelihood(params: BgNbdParams, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Per-customer log-likelihood of (x, t_x, T) under the BG/NBD model."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    x = np.asarray(x, dtype=float)
    t_x = np.asarray(t_x, dtype=float)
    T = np.asarray(T, dtype=float)
    common = gammaln(r + x) - gammaln(r) + r * np.log(alpha) + betaln(a, b + x) - betaln(a, b)
    alive = -(r + x) * np.log(alpha + T)
    repeat = x > 0
    dead = np.full_like(x, -np.inf)
    xr = x[repeat]
    dead[repeat] = np.log(a) - np.log(b + xr - 1) - (r + xr) * np.log(alpha + t_x[repeat])
    return common + np.logaddexp(alive, dead)


def neg_log_likelihood(log_params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray,
                       weights: np.ndarray, x_values: np.ndarray | None = None,
                       x_index: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Weighted mean negative log-likelihood and its closed-form gradient in log-parameters (r, alpha, a, b).

    Analytic gradients: L-BFGS with finite differences evaluates the likelihood five times per step,
    and at a million customers the unique (x, t_x, T) triples run into the millions. The gamma-function
    terms depend on x alone: given ``x == x_values[x_index]`` they are evaluated once per distinct x (a few
    hundred values instead of millions of triples; the same numbers, gathered).
    """
    r, alpha, a, b = np.exp(log_params)
    if x_values is None or x_index is None:
        x_values, x_index = np.unique(x, return_inverse=True)
    alive = -(r + x) * np.log(alpha + T)
    repeat = x > 0
    dead = np.full_like(x, -np.inf)
    xr = x[repeat]
    dead[repeat] = np.log(a) - np.log(b + xr - 1) - (r + xr) * np.log(alpha + t_x[repeat])
    mix = np.logaddexp(alive, dead)
    w_alive, w_dead = np.exp(alive - mix), np.exp(dead - mix)  # shares of the two terms of the likelihood
    ll = gammaln(r + x_values)[x_index] - gammaln(r) + r * np.log(alpha) + betaln(a, b + x_values)[x_index] \
        - betaln(a, b) + mix
    dead_b = np.zeros_like(x)
    dead_b[repeat] = -1.0 / (b + xr - 1)
    d_abx = digamma(a + b + x_values)[x_index]
    grads = (
        digamma(r + x_values)[x_index] - digamma(r) + np.log(alpha) - w_alive * np.log(alpha + T)
        - w_dead * np.log(alpha + t_x),
        r / alpha - (r + x) * (w_alive / (alpha + T) + w_dead / (alpha + t_x)),
        digamma(a) - d_abx - digamma(a) + digamma(a + b) + w_dead / a,
        digamma(b + x_values)[x_index] - d_abx - digamma(b) + digamma(a + b) + w_dead * dead_b,
    )
    # plain sums, not BLAS dot products: BLAS threads spin on a busy machine and were most of the fit time
    total = weights.sum()
    value = -float((weights * ll).sum()) / total
    grad = -np.array([(weights * g).sum() for g in grads]) / total * np.array([r, alpha, a, b])
    if not np.isfinite(value) or not np.all(np.isfinite(grad)):
        return 1e10, np.zeros(4)
    return value, grad


def fit(x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> BgNbdParams:
    """Maximum-likelihood parameters; identical customers are collapsed into weighted triples first."""
    x = np.asarray(x, dtype=float)
    t_x = np.asarray(t_x, dtype=float)
    T = np.asarray(T, dtype=float)
    if len(x) < 10:
        raise CdpError(f"BG/NBD baseline: {len(x)} customers with purchases is too few to fit (need 10)")
    if np.any(t_x > T + 1e-9) or np.any(x < 0) or np.any((x == 0) & (t_x > 0)):
        raise ValueError("BG/NBD data must satisfy 0 <= t_x <= T, and t_x = 0 when x = 0")
    triples, counts = np.unique(np.column_stack([x, np.round(t_x, 4), np.round(T, 4)]), axis=0, return_counts=True)
    ux, ut, uT = (np.ascontiguousarray(triples[:, j]) for j in range(3))
    weights = counts.astype(float)
    x_values, x_index = np.unique(ux, return_inverse=True)
    best = None
    for start in ([0.0, np.log(max(float(np.mean(T)), 1.0)), 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]):
        res = minimize(neg_log_likelihood, np.array(start), args=(ux, ut, uT, weights, x_values, x_index), jac=True,
                       method="L-BFGS-B", bounds=[(-9.0, 9.0)] * 4)
        if best is None or res.fun < best.fun:
            best = res
    return BgNbdParams(*(float(v) for v in np.exp(best.x)))


def p_alive(params: BgNbdParams, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Probability each customer is still active at T."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    x = np.asarray(x, dtype=float)
    t_x = np.asarray(t_x, dtype=float)
    T = np.asarray(T, dtype=float)
    log_ratio = np.full_like(x, -np.inf)
    repeat = x > 0
    xr = x[repeat]
    log_ratio[repeat] = (np.log(a) - np.log(b + xr - 1)
                         + (r + xr) * (np.log(alpha + T[repeat]) - np.log(alpha + t_x[repeat])))
    return 1.0 / (1.0 + np.exp(log_ratio))


def prob_no_purchase(params: BgNbdParams, x: np.ndarray, t_x: np.ndarray, T: np.ndarray,
                     t: np.ndarray | float) -> np.ndarray:
    """P(no purchase in (T, T + t]) given the history: dead, or alive with no Poisson event in t.

    A customer can only drop out right after a purchase, so the first purchase after T happens iff the
    customer is alive and its Poisson clock ticks; given alive, lambda ~ Gamma(r + x, alpha + T).
    ``t`` broadcasts: pass shape (1, H) with x of shape (n, 1) for a whole horizon at once.
    """
    x = np.asarray(x, dtype=float)
    T = np.asarray(T, dtype=float)
    alive = p_alive(params, x, t_x, T)
    stay = np.exp((params.r + x) * (np.log(params.alpha + T) - np.log(params.alpha + T + np.asarray(t, dtype=float))))
    return 1.0 - alive + alive * stay


def simulate(params: BgNbdParams, n: int, T: np.ndarray | float, seed: int = 0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw (x, t_x, T) for ``n`` customers from the BG/NBD process (used to test the fit)."""
    rng = np.random.default_rng(seed)
    T = np.broadcast_to(np.asarray(T, dtype=float), (n,)).copy()
    lam = rng.gamma(params.r, 1.0 / params.alpha, n)
    p = rng.beta(params.a, params.b, n)
    x = np.zeros(n)
    t_x = np.zeros(n)
    now = np.zeros(n)
    active = np.ones(n, dtype=bool)
    while active.any():
        idx = np.flatnonzero(active)
        now[idx] += rng.exponential(1.0 / lam[idx])
        bought = now[idx] <= T[idx]
        got = idx[bought]
        x[got] += 1
        t_x[got] = now[got]
        active[idx[~bought]] = False
        active[got[rng.random(len(got)) < p[got]]] = False  # drop out right after a purchase
    return x, t_x, T
