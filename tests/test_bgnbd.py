"""bgnbd: the paper's CDNOW fit reproduced to the digits published, the README's holdout figures on the
master file, the unit and weights conventions, E[X] and P(any purchase) against a simulation of the
BG/NBD process and against numerical integration (also where scipy's 2F1 fails), parameters recovered
from 10^6 simulated customers, and bad input refused in one line. No Spark."""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA
from scipy import integrate, special, stats
from sklearn.metrics import average_precision_score, roc_auc_score

from marketlake import bgnbd
from marketlake.bgnbd import BgNbd, BgNbdFitError
from marketlake.errors import UsageError

CDNOW = SHARED_DATA / "cdnow"
CALIBRATION_END = dt.date(1997, 9, 30)  # the paper's 39 weeks from 1997-01-01
HOLDOUT_END = dt.date(1998, 6, 30)  # the next 39 weeks
WEEK = 7.0
PAPER = BgNbd(r=0.243, alpha=4.414, a=0.793, b=2.426, log_likelihood=-9582.4, customers=2357)


def cdnow(name: str) -> pd.DataFrame:
    """x, t_x, T (weeks, from day counts: T of a 1997-01-01 buyer is 272 / 7 = 38.86) and the holdout
    purchase days per customer; a purchase is a distinct (customer, day)."""
    path = CDNOW / name
    if name == "CDNOW_sample.txt":
        raw = pd.read_csv(
            path, sep=r"\s+", header=None, names=["customer", "sample_id", "date", "cds", "dollars"]
        )
    else:
        raw = pd.read_csv(path, sep=r"\s+")
        raw.columns = ["customer", "date", "cds", "dollars"]
    days = raw.assign(date=pd.to_datetime(raw["date"].astype(str), format="%Y%m%d"))[["customer", "date"]]
    days = days.drop_duplicates()
    in_calibration = days[days["date"] <= pd.Timestamp(CALIBRATION_END)].groupby("customer")["date"]
    first, last = in_calibration.min(), in_calibration.max()
    holdout = days[
        (days["date"] > pd.Timestamp(CALIBRATION_END)) & (days["date"] <= pd.Timestamp(HOLDOUT_END))
    ]
    return pd.DataFrame(
        {
            "x": in_calibration.nunique() - 1.0,
            "t_x": (last - first).dt.days / WEEK,
            "T": (pd.Timestamp(CALIBRATION_END) - first).dt.days / WEEK,
            "holdout": holdout.groupby("customer").size().reindex(first.index, fill_value=0),
        }
    )


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return cdnow("CDNOW_sample.txt")


@pytest.fixture(scope="module")
def paper_fit(sample: pd.DataFrame) -> BgNbd:
    return bgnbd.fit(sample["x"], sample["t_x"], sample["T"])


def test_cdnow_sample_reproduces_the_published_fit(sample: pd.DataFrame, paper_fit: BgNbd) -> None:
    # Customer 0001 as in Fader & Hardie's data: purchases 1997-01-01, 01-18, 08-02 (and 12-12, holdout).
    assert sample.loc[4, ["x", "t_x", "T"]].round(2).tolist() == [2.0, 30.43, 38.86]
    assert paper_fit.customers == 2357
    for name in ("r", "alpha", "a", "b"):
        assert round(getattr(paper_fit, name), 3) == getattr(PAPER, name), name
    assert paper_fit.log_likelihood == pytest.approx(PAPER.log_likelihood, abs=0.05)


def test_the_fit_does_not_depend_on_the_time_unit_or_on_aggregation(
    sample: pd.DataFrame, paper_fit: BgNbd
) -> None:
    in_days = bgnbd.fit(sample["x"], sample["t_x"] * WEEK, sample["T"] * WEEK)
    assert in_days.r == pytest.approx(paper_fit.r, rel=1e-6)
    assert in_days.alpha == pytest.approx(paper_fit.alpha * WEEK, rel=1e-6)
    assert (in_days.a, in_days.b) == pytest.approx((paper_fit.a, paper_fit.b), rel=1e-6)
    # The likelihood is a density in the purchase times: x of them per customer, each per unit of time.
    shift = sample["x"].sum() * np.log(WEEK)
    assert in_days.log_likelihood == pytest.approx(paper_fit.log_likelihood - shift, abs=1e-6)

    counted = sample.groupby(["x", "t_x", "T"]).size().reset_index(name="customers")
    assert len(counted) < len(sample)
    aggregated = bgnbd.fit(counted["x"], counted["t_x"], counted["T"], weights=counted["customers"])
    assert aggregated.customers == paper_fit.customers
    for name in ("r", "alpha", "a", "b", "log_likelihood"):
        assert getattr(aggregated, name) == pytest.approx(getattr(paper_fit, name), rel=1e-6), name


def test_holdout_predictions_on_the_master_file_match_the_readme() -> None:
    """The README's figures for the full CDNOW file (23,570 customers; any purchase in the 39-week
    holdout): base rate 29.9%, BG/NBD expected purchases at AUC 0.763, AP 0.647, top-decile lift 2.69."""
    master = cdnow("CDNOW_master.txt")
    model = bgnbd.fit(master["x"], master["t_x"], master["T"])
    expected = model.expected_purchases(39.0, master["x"], master["t_x"], master["T"])
    bought = (master["holdout"] > 0).to_numpy()
    assert len(master) == 23_570
    assert bought.mean() == pytest.approx(0.299, abs=5e-4)
    assert roc_auc_score(bought, expected) == pytest.approx(0.763, abs=5e-4)
    assert average_precision_score(bought, expected) == pytest.approx(0.647, abs=1e-3)
    top_decile = np.argsort(-expected, kind="stable")[: len(expected) // 10]
    assert bought[top_decile].mean() / bought.mean() == pytest.approx(2.69, abs=5e-3)
    # Totals: the model expects fewer holdout purchases than CDNOW's customers made (16,874 of 19,684
    # purchase days) and fewer buyers (6,260 of 7,058); measured here, not published.
    assert expected.sum() == pytest.approx(16_874, abs=1)
    assert master["holdout"].sum() == 19_684
    any_purchase = model.p_any_purchase(39.0, master["x"], master["t_x"], master["T"])
    assert any_purchase.sum() == pytest.approx(6_260, abs=1)


# ---- predictions against the BG/NBD process ---------------------------------------------------------


def simulate(rng: np.random.Generator, n: int, model: BgNbd, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, t_x) of n customers whose first purchase is at 0: Poisson(lambda) purchases, drop-out with
    probability p right after each repeat purchase (so after G ~ Geometric(p) of them)."""
    lam = rng.gamma(model.r, 1.0 / model.alpha, n)
    p = rng.beta(model.a, model.b, n)
    purchases = rng.poisson(lam * T)
    x = np.minimum(purchases, rng.geometric(p))
    # Given n purchases in (0, T], their times are uniform order statistics: the x-th is T Beta(x, n - x + 1).
    t_x = np.where(x > 0, T * rng.beta(np.maximum(x, 1), purchases - x + 1), 0.0)
    return x.astype(float), t_x


def future_purchases(rng: np.random.Generator, lam: np.ndarray, p: np.ndarray, t: float) -> np.ndarray:
    """Purchases in the next t of customers alive now: the process is memoryless."""
    return np.minimum(rng.poisson(lam * t), rng.geometric(p))


def test_predictions_for_customers_without_repeat_purchases_match_the_simulated_process() -> None:
    """Simulate calibration and holdout, keep the customers with x = 0 (t_x = 0 exactly): no weighting."""
    model = BgNbd(r=0.243, alpha=4.414, a=0.793, b=2.426, log_likelihood=0.0, customers=0)
    rng = np.random.default_rng(7)
    n, T, t = 2_000_000, 20.0, 39.0
    lam = rng.gamma(model.r, 1.0 / model.alpha, n)
    p = rng.beta(model.a, model.b, n)
    purchases, lifetime = rng.poisson(lam * T), rng.geometric(p)
    kept = np.minimum(purchases, lifetime) == 0  # no repeat purchase, so alive at T
    later = future_purchases(rng, lam[kept], p[kept], t)
    assert kept.sum() > 1_000_000
    assert model.p_alive(0, 0, T) == 1.0
    assert model.expected_purchases(t, 0, 0, T) == pytest.approx(later.mean(), abs=3e-3)
    assert model.p_any_purchase(t, 0, 0, T) == pytest.approx((later > 0).mean(), abs=2e-3)


@pytest.mark.parametrize(
    ("x", "t_x", "T", "t"), [(1, 5.0, 39.0, 39.0), (2, 30.43, 38.86, 20.0), (6, 12.0, 30.0, 52.0)]
)
def test_predictions_after_repeat_purchases_match_the_simulated_process(
    x: int, t_x: float, T: float, t: float
) -> None:
    """Customers drawn from the prior, weighted by the probability (density) of the observed (x, t_x):
    (1 - p)^x lambda^x e^(-lambda T) if alive at T, p (1 - p)^(x - 1) lambda^x e^(-lambda t_x) if they
    dropped out after the last purchase; the alive ones then buy on as simulated."""
    model = BgNbd(r=0.8, alpha=6.0, a=1.3, b=3.5, log_likelihood=0.0, customers=0)
    rng = np.random.default_rng(11)
    n = 2_000_000
    lam = rng.gamma(model.r, 1.0 / model.alpha, n)
    p = rng.beta(model.a, model.b, n)
    common = x * np.log(lam) + (x - 1) * np.log1p(-p)
    log_alive = common + np.log1p(-p) - lam * T
    log_gone = common + np.log(p) - lam * t_x
    top = max(log_alive.max(), log_gone.max())
    alive, gone = np.exp(log_alive - top), np.exp(log_gone - top)
    evidence = (alive + gone).sum()
    later = future_purchases(rng, lam, p, t)
    assert evidence**2 / ((alive + gone) ** 2).sum() > 20_000  # effective sample size
    assert model.p_alive(x, t_x, T) == pytest.approx(alive.sum() / evidence, abs=3e-3)
    assert model.expected_purchases(t, x, t_x, T) == pytest.approx((alive * later).sum() / evidence, rel=1e-2)
    assert model.p_any_purchase(t, x, t_x, T) == pytest.approx(
        (alive * (later > 0)).sum() / evidence, abs=3e-3
    )


def expected_if_alive(model: BgNbd, t: float, x: float, T: float) -> float:
    """E[(1 - (1 + p s)^-(r + x)) / p] over p ~ Beta(a, b + x), s = t / (alpha + T), by quad in p."""
    k, s, n = model.r + x, t / (model.alpha + T), model.b + x

    def integrand(p: float) -> float:
        return float(-np.expm1(-k * np.log1p(p * s)) / p * stats.beta.pdf(p, model.a, n))

    mean = model.a / (model.a + n)
    value, _ = integrate.quad(
        integrand, 0.0, 1.0, points=[mean, 10 * mean], epsabs=0.0, epsrel=1e-12, limit=500
    )
    return float(value)


@pytest.mark.parametrize(
    ("r", "alpha", "a", "b", "x", "T", "t"),
    [
        (0.243, 4.414, 0.793, 2.426, 0, 38.86, 39.0),
        (0.243, 4.414, 0.793, 2.426, 2, 38.86, 39.0),
        (0.243, 4.414, 0.793, 2.426, 60, 39.0, 0.5),
        (2.0, 10.0, 1.5, 5.0, 300, 39.0, 500.0),  # the paper's 2F1(r + x, b + x; ...) overflows here
        (0.5, 1.0, 1.0, 3.0, 4, 10.0, 30.0),  # a = 1 exactly: the closed form is 0 / 0
        (0.5, 1.0, 1.0 + 3e-6, 3.0, 4, 10.0, 30.0),
        (5.0, 1.0, 3.0, 0.5, 300, 0.0, 500.0),  # scipy's 2F1 returns nan: integrated instead
        (2.0, 1.0, 1.5, 5000.0, 0, 0.0, 1000.0),  # the same
    ],
)
def test_expected_purchases_match_numerical_integration(
    r: float, alpha: float, a: float, b: float, x: int, T: float, t: float
) -> None:
    model = BgNbd(r=r, alpha=alpha, a=a, b=b, log_likelihood=0.0, customers=0)
    t_x = T / 2 if x else 0.0
    reference = model.p_alive(x, t_x, T) * expected_if_alive(model, t, x, T)
    assert model.expected_purchases(t, x, t_x, T) == pytest.approx(reference, rel=1e-8)


def test_the_fallback_covers_where_scipys_hypergeometric_fails() -> None:
    # a + b + x - 1 = 302.5 and z = 500 / 501: scipy gives nan.
    assert np.isnan(special.hyp2f1(5.0 + 0.5 - 1.0 - 5.0, 3.0 - 1.0, 3.0 + 0.5 + 300 - 1.0, 500.0 / 501.0))
    model = BgNbd(r=5.0, alpha=1.0, a=3.0, b=0.5, log_likelihood=0.0, customers=0)
    frequency = np.array([300.0, 2.0, 300.0, 0.0])
    zeros = np.zeros(4)
    if_alive = model.expected_purchases(500.0, frequency, zeros, zeros) / model.p_alive(
        frequency, zeros, zeros
    )
    # E[X | alive] for x = 300 by mpmath.hyp2f1 at 60 digits: 151.2494072796146.
    assert if_alive[0] == if_alive[2] == pytest.approx(151.2494072796146, rel=1e-9)
    for i in (1, 3):
        assert if_alive[i] == pytest.approx(expected_if_alive(model, 500.0, frequency[i], 0.0), rel=1e-8)


def test_predictions_broadcast_and_grow_with_the_horizon(paper_fit: BgNbd, sample: pd.DataFrame) -> None:
    x, t_x, T = sample["x"].to_numpy(), sample["t_x"].to_numpy(), sample["T"].to_numpy()
    horizons = np.array([[0.0], [1.0], [10.0], [100.0]])
    expected = paper_fit.expected_purchases(horizons, x, t_x, T)
    any_purchase = paper_fit.p_any_purchase(horizons, x, t_x, T)
    assert expected.shape == any_purchase.shape == (4, len(sample))
    assert np.all(expected[0] == 0) and np.all(any_purchase[0] == 0)
    assert np.all(np.diff(expected, axis=0) > 0) and np.all(np.diff(any_purchase, axis=0) > 0)
    assert np.all(any_purchase <= paper_fit.p_alive(x, t_x, T))
    assert np.all(any_purchase[1:] <= expected[1:])  # P(X >= 1) <= E[X]


def test_a_million_customers_fit_in_seconds_and_recover_the_parameters() -> None:
    truth = BgNbd(r=0.243, alpha=4.414, a=0.793, b=2.426, log_likelihood=0.0, customers=0)
    rng = np.random.default_rng(3)
    n = 1_000_000
    T = rng.uniform(1.0, 52.0, n)  # continuous times: no two customers alike, nothing to aggregate
    x, t_x = simulate(rng, n, truth, T)
    started = time.process_time()
    model = bgnbd.fit(x, t_x, T)
    assert time.process_time() - started < 20.0  # about 2 s of CPU on an idle machine
    assert model.customers == n
    for name, tolerance in (("r", 0.01), ("alpha", 0.02), ("a", 0.05), ("b", 0.05)):
        assert getattr(model, name) == pytest.approx(getattr(truth, name), rel=tolerance), name


# ---- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frequency", "recency", "T", "message"),
    [
        ([1, 2], [1.0], [2.0, 3.0], r"frequency, recency and T differ in shape: \(2,\), \(1,\), \(2,\)"),
        ([1, -1], [1.0, 0.0], [2.0, 3.0], r"frequency must be >= 0: 1 row\(s\), the first at index 1"),
        ([1.5, 1], [1.0, 1.0], [2.0, 3.0], r"frequency must be a whole number"),
        (
            [1, 1],
            [1.0, 4.0],
            [2.0, 3.0],
            r"recency must be <= T: 1 row\(s\), the first at index 1 \(frequency=1, recency=4, T=3\)",
        ),
        ([1, 1], [-1.0, 1.0], [2.0, 3.0], r"recency must be >= 0"),
        ([0, 1], [1.0, 1.0], [2.0, 3.0], r"recency must be 0 where frequency is 0"),
        ([1, np.nan], [1.0, 1.0], [2.0, 3.0], r"frequency, recency and T must be finite"),
        ([1, 1], [1.0, 1.0], [2.0, np.inf], r"frequency, recency and T must be finite"),
    ],
)
def test_bad_customers_are_refused_in_one_line(frequency, recency, T, message) -> None:
    model = BgNbd(r=0.243, alpha=4.414, a=0.793, b=2.426, log_likelihood=0.0, customers=0)
    for call in (
        lambda: bgnbd.fit(frequency, recency, T),
        lambda: model.p_alive(frequency, recency, T),
        lambda: model.expected_purchases(1.0, frequency, recency, T),
        lambda: model.p_any_purchase(1.0, frequency, recency, T),
    ):
        with pytest.raises(ValueError, match=message) as raised:
            call()
        assert "\n" not in str(raised.value)


def test_bad_horizons_and_weights_are_refused(paper_fit: BgNbd) -> None:
    for t in (-1.0, np.nan, [1.0, -2.0]):
        with pytest.raises(
            ValueError, match=r"t \(the length of the prediction period\) must be finite and >= 0"
        ):
            paper_fit.expected_purchases(t, 1, 1.0, 2.0)
        with pytest.raises(ValueError, match="must be finite and >= 0"):
            paper_fit.p_any_purchase(t, 1, 1.0, 2.0)
    x, t_x, T = np.ones(20), np.ones(20), np.full(20, 2.0)
    with pytest.raises(ValueError, match=r"weights has shape \(19,\), the customers \(20,\)"):
        bgnbd.fit(x, t_x, T, weights=np.ones(19))
    for weights in (np.full(20, -1.0), np.full(20, 0.5)):
        with pytest.raises(ValueError, match="weights must be whole numbers >= 0"):
            bgnbd.fit(x, t_x, T, weights=weights)


def test_data_that_cannot_identify_the_model_are_refused() -> None:
    with pytest.raises(BgNbdFitError, match="BG/NBD needs at least 10 customers, got 9"):
        bgnbd.fit(np.ones(9), np.ones(9), np.full(9, 2.0))
    with pytest.raises(BgNbdFitError, match="BG/NBD needs at least 10 customers, got 5"):
        bgnbd.fit(np.ones(20), np.ones(20), np.full(20, 2.0), weights=np.r_[np.ones(5), np.zeros(15)])
    with pytest.raises(BgNbdFitError, match="no customer made a repeat purchase"):
        bgnbd.fit(np.zeros(100), np.zeros(100), np.full(100, 30.0))
    # Customers all alike: nothing tells the spread of the purchase rates or of the drop-out.
    with pytest.raises(BgNbdFitError, match=r"the data do not identify .*\(it ran to a bound\)"):
        bgnbd.fit(np.full(100, 3.0), np.full(100, 20.0), np.full(100, 30.0))
    assert issubclass(BgNbdFitError, UsageError)


def test_without_drop_outs_the_fit_is_the_nbd_limit() -> None:
    """Customers who never drop out (Poisson purchases at gamma-distributed rates): the drop-out
    probability goes to 0 (a -> 0 or b -> infinity), which is a fit, with P(alive) about 1."""
    rng = np.random.default_rng(3)
    n, horizon = 3_000, 30.0
    rates = rng.gamma(2.0, 1 / 20.0, n)
    counts, last = np.zeros(n), np.zeros(n)
    big_t = rng.uniform(5, horizon, n)
    for i in range(n):
        times = np.cumsum(rng.exponential(1 / rates[i], 200))
        times = times[times < big_t[i]]
        counts[i], last[i] = len(times), times[-1] if len(times) else 0.0
    model = bgnbd.fit(counts, last, big_t)
    assert model.a / (model.a + model.b) < 0.02
    assert model.r == pytest.approx(2.0, rel=0.15) and model.alpha == pytest.approx(20.0, rel=0.15)
    assert model.p_alive(counts, last, big_t).mean() > 0.97
