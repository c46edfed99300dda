"""How good a propensity score is, on the driver (numpy): the metrics of gold.propensity_evaluation and the
deciles of gold.propensity_deciles, from arrays of scores and 0/1 labels.

`ranking` is the model's raw score (it orders users: AUC, average precision, deciles and lift use it);
`probability` is the calibrated probability (Brier, log-loss, the F1 threshold and the calibration table
use it). Deciles split the users ranked by `ranking` (ties by position, i.e. by user id) into ten groups
whose sizes differ by at most one; decile 1 holds the highest scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

DECILES = 10
# Probabilities are clipped this far from 0 and 1 for the log-loss (a calibrated 0 for a buyer is infinite loss).
LOG_LOSS_EPSILON = 1e-6


@dataclass(frozen=True)
class Metrics:
    users: int
    buyers: int
    base_rate: float
    auc: float
    average_precision: float
    brier: float
    log_loss: float
    lift_top_decile: float
    threshold: float
    accuracy: float
    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class Decile:
    decile: int
    users: int
    buyers: int
    mean_predicted: float
    observed_rate: float
    lift: float
    cumulative_buyer_share: float


def auc(ranking: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic; tied scores count one half)."""
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(ranking)
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def average_precision(ranking: np.ndarray, labels: np.ndarray) -> float:
    """Sum over distinct score thresholds of (recall step) x precision, as scikit-learn defines it."""
    positives = labels.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-ranking, kind="stable")
    scores, hits = ranking[order], labels[order]
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]
    true_positives = np.cumsum(hits)[last_of_tie]
    predicted = (np.arange(1, len(scores) + 1))[last_of_tie]
    recall_step = np.diff(np.r_[0, true_positives]) / positives
    return float(np.sum(recall_step * true_positives / predicted))


def deciles_of(ranking: np.ndarray) -> np.ndarray:
    """1..10 per user, 1 for the highest scores (ties keep their input order)."""
    order = np.argsort(-ranking, kind="stable")
    decile = np.empty(len(ranking), dtype=np.int64)
    decile[order] = np.arange(len(ranking)) * DECILES // max(len(ranking), 1) + 1
    return decile


def best_f1(probability: np.ndarray, labels: np.ndarray) -> tuple[float, float, float, float, float]:
    """(threshold, accuracy, precision, recall, f1) at the threshold that maximises F1; a user is predicted
    to buy when their probability is at least the threshold."""
    positives = labels.sum()
    order = np.argsort(-probability, kind="stable")
    scores, hits = probability[order], labels[order]
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]
    true_positives = np.cumsum(hits)[last_of_tie]
    predicted = np.arange(1, len(scores) + 1)[last_of_tie]
    f1 = 2 * true_positives / (predicted + positives)
    best = int(np.argmax(f1))
    tp, n_pred = float(true_positives[best]), float(predicted[best])
    false_positives = n_pred - tp
    true_negatives = len(labels) - positives - false_positives
    return (
        float(scores[last_of_tie][best]),
        float((tp + true_negatives) / len(labels)),
        tp / n_pred,
        float(tp / positives) if positives else float("nan"),
        float(f1[best]),
    )


def evaluate(ranking: np.ndarray, probability: np.ndarray, labels: np.ndarray) -> Metrics:
    labels = labels.astype(np.int64)
    n, buyers = len(labels), int(labels.sum())
    if n == 0:
        raise ValueError("no users to evaluate")
    clipped = np.clip(probability, LOG_LOSS_EPSILON, 1 - LOG_LOSS_EPSILON)
    top = deciles_of(ranking) == 1
    base_rate = buyers / n
    threshold, accuracy, precision, recall, f1 = best_f1(probability, labels)
    return Metrics(
        users=n,
        buyers=buyers,
        base_rate=base_rate,
        auc=auc(ranking, labels),
        average_precision=average_precision(ranking, labels),
        brier=float(np.mean((probability - labels) ** 2)),
        log_loss=float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))),
        lift_top_decile=float(labels[top].mean() / base_rate) if buyers else float("nan"),
        threshold=threshold,
        accuracy=accuracy,
        precision=precision,
        recall=recall,
        f1=f1,
    )


def decile_table(ranking: np.ndarray, probability: np.ndarray, labels: np.ndarray) -> list[Decile]:
    decile = deciles_of(ranking)
    buyers_total = max(int(labels.sum()), 1)
    base_rate = labels.mean() if len(labels) else float("nan")
    rows, cumulative = [], 0
    for d in range(1, DECILES + 1):
        members = decile == d
        users, buyers = int(members.sum()), int(labels[members].sum())
        if users == 0:
            continue
        cumulative += buyers
        observed = buyers / users
        rows.append(
            Decile(
                decile=d,
                users=users,
                buyers=buyers,
                mean_predicted=float(probability[members].mean()),
                observed_rate=observed,
                lift=float(observed / base_rate) if base_rate > 0 else float("nan"),
                cumulative_buyer_share=cumulative / buyers_total,
            )
        )
    return rows
