"""The BG/NBD model of repeat buying, fitted by maximum likelihood on the driver (numpy/scipy).

Fader, Hardie & Lee (2005), "Counting your customers the easy way: an alternative to the Pareto/NBD
model", Marketing Science 24(2), 275-284. While alive, a customer buys at Poisson rate
lambda ~ Gamma(r, alpha); right after each purchase they drop out for good with probability p ~ Beta(a, b).

Per customer, counted from their first purchase, in one time unit of the caller's choosing:

- frequency x: repeat purchases in the calibration period (distinct purchase days - 1 for daily data);
- recency t_x: time from the first to the last purchase (0 when x = 0);
- T: time from the first purchase to the end of the calibration period;
- t: the length of the period after T that a prediction is for.

alpha is in that time unit and so is the log-likelihood (a density in the purchase times: changing the
unit by a factor c adds -sum(x) * log(c)); r, a and b do not depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import integrate, optimize, special

from marketlake.errors import UsageError

Array = NDArray[np.float64]
IntArray = NDArray[np.intp]

MIN_CUSTOMERS = 10
PARAMETERS = ("r", "alpha", "a", "b")
# The fit runs on log-parameters within +-LOG_BOUND, with times divided by the largest T; an optimum on
# a bound means the data do not pin that parameter down (e.g. nobody drops out: b -> infinity).
LOG_BOUND = 12.0
# E[X(t)]'s closed form divides by a - 1; within this distance of a = 1 it is interpolated linearly
# between a = 1 - NEAR_ONE and a = 1 + NEAR_ONE (error ~NEAR_ONE**2, cancellation ~1e-16 / NEAR_ONE).
NEAR_ONE = 1e-5


class BgNbdFitError(UsageError):
    """The data cannot identify the model, or the maximisation of the likelihood failed."""


@dataclass(frozen=True)
class BgNbd:
    """A fitted BG/NBD model: the parameters, the log-likelihood at them and the customers fitted on."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float
    customers: int

    def p_alive(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> Array:
        """P(alive at T | x, t_x, T) = 1 / (1 + [x > 0] a / (b + x - 1) ((alpha + T) / (alpha + t_x))^(r + x))."""
        x, t_x, big_t = _columns(frequency, recency, T)
        return _p_alive(self, x, t_x, big_t)

    def expected_purchases(
        self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
    ) -> Array:
        """E[X(T, T + t] | x, t_x, T], the expected purchases in the next t: eq. (10) of the paper,

        P(alive) (a + b + x - 1) / (a - 1) [1 - ((alpha + T) / (alpha + T + t))^(r + x)
        2F1(r + x, b + x; a + b + x - 1; z)], z = t / (alpha + T + t),

        with the 2F1 term rewritten by Pfaff's transformations as ((alpha + T + t) / (alpha + T))^(1 - a)
        2F1(a + b - 1 - r, a - 1; a + b + x - 1; z), whose first parameters do not grow with x (the
        paper's form overflows for heavy buyers as z -> 1). Where scipy's 2F1 still fails (z near 1 with
        large parameters) the expectation is integrated numerically over p instead."""
        x, t_x, big_t = _columns(frequency, recency, T)
        horizon = _horizon(t)
        x, t_x, big_t, horizon = np.broadcast_arrays(x, t_x, big_t, horizon)
        s = horizon / (self.alpha + big_t)
        if abs(self.a - 1.0) >= NEAR_ONE:
            alive = _expected_if_alive(self.r, self.a, self.b, x, s)
        else:
            below = _expected_if_alive(self.r, 1.0 - NEAR_ONE, self.b, x, s)
            above = _expected_if_alive(self.r, 1.0 + NEAR_ONE, self.b, x, s)
            alive = below + (self.a - 1.0 + NEAR_ONE) / (2.0 * NEAR_ONE) * (above - below)
        failed = ~np.isfinite(alive)
        if failed.any():
            alive[failed] = _integrated_if_alive(self.r, self.a, self.b, x[failed], s[failed])
        return np.asarray(alive * _p_alive(self, x, t_x, big_t), dtype=np.float64)

    def p_any_purchase(self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> Array:
        """P(X(T, T + t] >= 1 | x, t_x, T) = P(alive) (1 - ((alpha + T) / (alpha + T + t))^(r + x)).

        Drop-out happens only right after a purchase, so a customer alive at T buys again within t with
        probability 1 - exp(-lambda t), whatever p; given alive at T, lambda ~ Gamma(r + x, alpha + T)."""
        x, t_x, big_t = _columns(frequency, recency, T)
        horizon = _horizon(t)
        buys_if_alive = -np.expm1(-(self.r + x) * np.log1p(horizon / (self.alpha + big_t)))
        return np.asarray(_p_alive(self, x, t_x, big_t) * buys_if_alive, dtype=np.float64)


def fit(frequency: ArrayLike, recency: ArrayLike, T: ArrayLike, weights: ArrayLike | None = None) -> BgNbd:
    """Maximum-likelihood BG/NBD parameters for the customers given, one per row or `weights[i]`
    identical customers per row. Raises ValueError on malformed input and BgNbdFitError when the data
    cannot identify the model."""
    x, t_x, big_t = _columns(frequency, recency, T)
    if weights is None:
        w = np.ones_like(x)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != x.shape:
            raise ValueError(f"weights has shape {w.shape}, the customers {x.shape}")
        if not np.all(np.isfinite(w) & (w >= 0) & (w == np.round(w))):
            raise ValueError("weights must be whole numbers >= 0 (customers per row)")
    x, t_x, big_t, w = (column.ravel() for column in (x, t_x, big_t, w))
    customers = int(w.sum())
    if customers < MIN_CUSTOMERS:
        raise BgNbdFitError(f"BG/NBD needs at least {MIN_CUSTOMERS} customers, got {customers}")
    if not np.any((x > 0) & (w > 0)):
        raise BgNbdFitError("BG/NBD cannot be fitted: no customer made a repeat purchase")

    keep = w > 0
    x, t_x, big_t, w = x[keep], t_x[keep], big_t[keep], w[keep]
    if 2 * np.unique(big_t).size <= big_t.size:  # times on a coarse grid (days): (x, t_x, T) rows repeat
        (x, t_x, big_t), w = _distinct_rows(x, t_x, big_t, w)
    # The model is the same with all times and alpha divided by `scale`: fitting in that unit keeps the
    # bounds and the optimiser's steps independent of the caller's unit.
    scale = float(big_t.max())
    data = _LogLikelihood(x, t_x / scale, big_t / scale, w)

    def objective(theta: Array) -> tuple[float, Array]:
        value, gradient = data(theta)
        return -value / customers, -gradient / customers

    # scipy's default tolerances stop ~1e-3 short in b on the paper's data (a flat ridge in a and b).
    result = optimize.minimize(
        objective,
        np.zeros(4),
        jac=True,
        method="L-BFGS-B",
        bounds=[(-LOG_BOUND, LOG_BOUND)] * 4,
        options={"ftol": 1e-14, "gtol": 1e-9, "maxiter": 1000},
    )
    # a -> 0 or b -> infinity is the drop-out probability p -> 0: nobody seen dropping out (short
    # histories do that). That limit is the NBD model, a usable fit with P(alive) ~ 1; any other bound is not.
    # Checked before convergence: a run to a bound along a ridge (r and alpha growing together) may end in an
    # abnormal line search (seen with scipy 1.17's L-BFGS-B) with the ridge's gradient not yet small; the cause
    # to report is the bound.
    no_drop_out = {("a", -1.0), ("b", 1.0)}
    at_bound = [
        name
        for name, value in zip(PARAMETERS, result.x, strict=True)
        if abs(value) > LOG_BOUND - 1e-3 and (name, float(np.sign(value))) not in no_drop_out
    ]
    if at_bound:
        raise BgNbdFitError(
            f"BG/NBD fit failed: the data do not identify {', '.join(at_bound)} (it ran to a bound); too few "
            "customers, repeat purchases or drop-outs in the calibration period?"
        )
    # A line search that gives up at the optimum (no better point in double precision) is not a failure.
    converged = result.success or float(np.max(np.abs(result.jac))) < 1e-6
    if not converged or not np.all(np.isfinite(result.x)):
        raise BgNbdFitError(f"BG/NBD fit failed to converge: {result.message}")
    r, alpha, a, b = np.exp(result.x)
    alpha *= scale
    log_likelihood, _ = _LogLikelihood(x, t_x, big_t, w)(np.log([r, alpha, a, b]))
    return BgNbd(float(r), float(alpha), float(a), float(b), float(log_likelihood), customers)


class _LogLikelihood:
    """The weighted log-likelihood of (x, t_x, T) rows and its gradient in log-parameters.

    Per customer (eq. 6 of the paper), with k = r + x:
    log[ B(a, b + x) / B(a, b) Gamma(k) alpha^r / Gamma(r) / (alpha + T)^k
    + [x > 0] B(a + 1, b + x - 1) / B(a, b) Gamma(k) alpha^r / Gamma(r) / (alpha + t_x)^k ]
    = head(x) - k log(alpha + T) + [x > 0] softplus(log(a / (b + x - 1)) + k log((alpha + T) / (alpha + t_x))).
    What depends on x alone is computed once per distinct x; customers without repeat purchases
    (often most of them) only need log(alpha + T)."""

    def __init__(self, x: Array, t_x: Array, big_t: Array, w: Array) -> None:
        order = np.argsort(x, kind="stable")
        x, t_x, big_t, w = x[order], t_x[order], big_t[order], w[order]
        self.xs, starts, counts = np.unique(x, return_index=True, return_counts=True)
        self.per_x = np.add.reduceat(w, starts)
        once = int(np.searchsorted(x, 0.0, side="right"))
        self.T0, self.w0 = big_t[:once], w[:once]
        self.x, self.t_x, self.T, self.w = x[once:], t_x[once:], big_t[once:], w[once:]
        self.repeat = self.xs > 0
        self.counts, self.starts = counts[self.repeat], starts[self.repeat] - once

    def __call__(self, theta: Array) -> tuple[float, Array]:
        r, alpha, a, b = np.exp(theta)
        xs, per_x, w = self.xs, self.per_x, self.w
        head = special.gammaln(r + xs) - special.gammaln(r) + r * np.log(alpha)
        head += (
            special.gammaln(a + b)
            + special.gammaln(b + xs)
            - special.gammaln(b)
            - special.gammaln(a + b + xs)
        )
        log_t0 = np.log(alpha + self.T0)
        b_x1 = b + xs[self.repeat] - 1.0
        k = r + self.x
        log_t = np.log(alpha + self.T)
        log_ratio = log_t - np.log(alpha + self.t_x)
        d = np.repeat(np.log(a) - np.log(b_x1), self.counts) + k * log_ratio
        small = np.exp(-np.abs(d))
        softplus = np.maximum(d, 0.0) + np.log1p(small)
        value = float(np.dot(per_x, head) - r * np.dot(self.w0, log_t0) + np.dot(w, softplus - k * log_t))

        # each row's posterior weight of the second term (dropped out after the last purchase)
        w_gone = w * np.where(d > 0, 1.0, small) / (1.0 + small)
        gone_x = np.add.reduceat(w_gone, self.starts) if w.size else np.zeros(0)
        d_r = np.dot(per_x, special.digamma(r + xs) - special.digamma(r) + np.log(alpha))
        d_r += np.dot(w_gone, log_ratio) - np.dot(w, log_t) - np.dot(self.w0, log_t0)
        d_alpha = r / alpha * per_x.sum() - r * np.dot(self.w0, 1.0 / (alpha + self.T0))
        d_alpha -= np.dot(w * k, 1.0 / (alpha + self.T)) + np.dot(
            w_gone * k, 1.0 / (alpha + self.t_x) - 1.0 / (alpha + self.T)
        )
        common = special.digamma(a + b) - special.digamma(a + b + xs)
        d_a = np.dot(per_x, common) + gone_x.sum() / a
        d_b = np.dot(per_x, common + special.digamma(b + xs) - special.digamma(b)) - np.dot(
            gone_x, 1.0 / b_x1
        )
        return value, np.array([d_r * r, d_alpha * alpha, d_a * a, d_b * b])


def _distinct_rows(*columns: Array) -> tuple[list[Array], Array]:
    """The distinct rows of the (x, t_x, T, w) columns, all but the last, with the last summed per row."""
    *keys, w = columns
    order = np.lexsort(keys[::-1])
    ordered = [key[order] for key in keys]
    starts = np.ones(order.size, dtype=bool)
    starts[1:] = np.any([np.diff(key) != 0 for key in ordered], axis=0)
    first = np.flatnonzero(starts)
    return [key[first] for key in ordered], np.add.reduceat(w[order], first)


def _columns(frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> tuple[Array, Array, Array]:
    """The three customer columns as float arrays of one shape, checked."""
    x, t_x, big_t = (np.asarray(column, dtype=np.float64) for column in (frequency, recency, T))
    if not x.shape == t_x.shape == big_t.shape:
        raise ValueError(f"frequency, recency and T differ in shape: {x.shape}, {t_x.shape}, {big_t.shape}")
    with np.errstate(invalid="ignore"):
        problems = [
            (
                np.isfinite(x) & np.isfinite(t_x) & np.isfinite(big_t),
                "frequency, recency and T must be finite",
            ),
            (x >= 0, "frequency must be >= 0"),
            (x == np.round(x), "frequency must be a whole number (repeat purchases)"),
            (t_x >= 0, "recency must be >= 0"),
            (t_x <= big_t, "recency must be <= T"),
            ((x > 0) | (t_x == 0), "recency must be 0 where frequency is 0"),
        ]
    for ok, message in problems:
        bad = np.flatnonzero(~ok)
        if bad.size:
            first = bad[0]
            raise ValueError(
                f"{message}: {bad.size} row(s), the first at index {first} "
                f"(frequency={x.flat[first]:g}, recency={t_x.flat[first]:g}, T={big_t.flat[first]:g})"
            )
    return x, t_x, big_t


def _horizon(t: ArrayLike) -> Array:
    horizon = np.asarray(t, dtype=np.float64)
    if not np.all(np.isfinite(horizon) & (horizon >= 0)):
        raise ValueError("t (the length of the prediction period) must be finite and >= 0")
    return horizon


def _p_alive(model: BgNbd, x: Array, t_x: Array, big_t: Array) -> Array:
    repeat = x > 0
    log_odds = np.log(model.a) - np.log(np.where(repeat, model.b + x - 1.0, 1.0))
    log_odds += (model.r + x) * (np.log(model.alpha + big_t) - np.log(model.alpha + t_x))
    return np.asarray(np.where(repeat, special.expit(-log_odds), 1.0), dtype=np.float64)


def _expected_if_alive(r: float, a: float, b: float, x: Array, s: Array) -> Array:
    """E[X(T, T + t] | alive at T, x], s = t / (alpha + T), by the closed form (nan where 2F1 fails)."""
    with np.errstate(all="ignore"):
        tail = np.exp((1.0 - a) * np.log1p(s)) * special.hyp2f1(
            a + b - 1.0 - r, a - 1.0, a + b + x - 1.0, s / (1.0 + s)
        )
        return np.asarray((a + b + x - 1.0) / (a - 1.0) * (1.0 - tail), dtype=np.float64)


def _integrated_if_alive(r: float, a: float, b: float, x: Array, s: Array) -> Array:
    """The same by numerical integration, once per distinct (x, s): given alive at T, lambda ~ Gamma(r + x,
    alpha + T) and p ~ Beta(a, b + x), and E[X(T, T + t] | lambda, p] = (1 - exp(-lambda p t)) / p, so
    the expectation is E_p[g(p)], g(p) = (1 - (1 + p s)^-(r + x)) / p. It is integrated over u = logit(p)
    (smooth, unimodal); beyond u = +-40 (and below where p s (r + x) < e^-40) g is constant to double
    precision and the Beta tails are incomplete beta functions."""
    (xs, ss), inverse = _distinct_pairs(x, s)
    values = np.empty(xs.size)
    for i, (x_i, s_i) in enumerate(zip(xs, ss, strict=True)):
        values[i] = _integrate_g(a, b + x_i, r + x_i, s_i)
    return values[inverse]


def _distinct_pairs(x: Array, s: Array) -> tuple[tuple[Array, Array], IntArray]:
    pairs, inverse = np.unique(np.column_stack([x, s]), axis=0, return_inverse=True)
    return (pairs[:, 0], pairs[:, 1]), inverse.ravel()


def _integrate_g(a: float, n: float, k: float, s: float) -> float:
    at_zero = k * s
    at_one = -np.expm1(-k * np.log1p(s))
    log_beta = special.betaln(a, n)

    def integrand(u: float) -> float:
        p = special.expit(u)
        g = -np.expm1(-k * np.log1p(p * s)) / p
        return float(g * np.exp(a * u - (a + n) * np.logaddexp(0.0, u) - log_beta))

    lo, hi = -np.log1p(at_zero) - 40.0, 40.0
    points = sorted(q for q in {np.log(a / n), -np.log1p(at_zero), -np.log1p(s), 0.0} if lo < q < hi)
    inner, _ = integrate.quad(integrand, lo, hi, points=points, epsabs=0.0, epsrel=1e-11, limit=500)
    # The Beta mass above expit(hi) as P(1 - p < expit(-hi)): expit(hi) rounds to 1.
    tails = at_zero * special.betainc(a, n, special.expit(lo)) + at_one * special.betainc(
        n, a, special.expit(-hi)
    )
    return float(inner + tails)
