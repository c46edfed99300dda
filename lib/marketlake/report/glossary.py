"""The report's glossary: every technical word it uses, in plain words for marketers, with the technical
name kept for the data engineers. Sections, facts and column headings link to a term by its key
(`#term-<key>` on the page); the glossary at the end of the page lists them all."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Term:
    name: str  # as the report writes it
    plain: str  # what it means, in a marketer's words
    technical: str = ""  # the statistical or column name, for the data engineers


TERMS: dict[str, Term] = {
    "segment": Term(
        "segment",
        "A group of customers who behave alike (how recently and how often they visit and buy, how much "
        "they spend). Each gets a name and a suggested strategy.",
        "KMeans clustering of the scaled gold.user_features columns",
    ),
    "silhouette": Term(
        "silhouette",
        "How clearly the customer groups are apart from one another, from -1 to 1: above about 0.5 the "
        "groups are reasonably distinct; below about 0.25 they blur into each other and are rough "
        "groupings only.",
        "mean silhouette coefficient (squared Euclidean distance)",
    ),
    "rfm": Term(
        "RFM",
        "Recency, frequency, money: how recently a customer bought, how often and how much, each scored "
        "1 (lowest fifth of buyers) to 5 (highest fifth). The label (Champions, Loyal, ...) names the mix.",
        "r_score, f_score, m_score quintiles in gold.user_features",
    ),
    "support": Term(
        "support",
        "The share of all baskets that hold both items of a rule: how common the pair is.",
        "FPGrowth support",
    ),
    "confidence": Term(
        "confidence",
        "Of the baskets with the first item(s), the share that also hold the second: 50% means every "
        "other buyer of the first item also took the second.",
        "FPGrowth rule confidence",
    ),
    "rule-lift": Term(
        "lift (items)",
        "How many times likelier the second item is in a basket that has the first than in any basket: "
        "1 means no link, 3 means three times as likely.",
        "confidence / support(consequent)",
    ),
    "precision-at-k": Term(
        "precision@k",
        "Of the k items recommended to a customer, the share they went on to buy or use in the held-out "
        "period.",
        "precisionAtK (Spark RankingMetrics)",
    ),
    "recall-at-k": Term(
        "recall@k",
        "Of the items a customer went on to buy or use, the share that were among the k recommended.",
        "recallAtK",
    ),
    "ndcg": Term(
        "nDCG",
        "Ranking quality: like precision@k, but a right item counts more the higher it is on the list "
        "(1 is a perfect order, 0 nothing right).",
        "normalised discounted cumulative gain, ndcgAtK",
    ),
    "map": Term(
        "MAP",
        "Another ranking score: how early in the list the right items come, averaged over customers "
        "(higher is better).",
        "mean average precision at k, meanAveragePrecisionAtK",
    ),
    "coverage": Term(
        "coverage",
        "The share of the catalogue that is recommended to anyone at all: low coverage means the same few "
        "items go to everybody.",
        "distinct recommended items / catalogue size",
    ),
    "als": Term(
        "ALS",
        "The personal recommendation model: it learns from what each customer viewed and bought, and from "
        "customers with similar tastes, which items each customer is likely to want next.",
        "implicit-feedback alternating least squares (Spark MLlib ALS)",
    ),
    "popularity-baseline": Term(
        "popularity baseline",
        "The simplest alternative: recommend the best-selling items to everyone. Personal recommendations "
        "are only worth having when they beat it.",
        "model 'popularity' in gold.recommendation_evaluation",
    ),
    "bgnbd": Term(
        "BG/NBD baseline",
        "A classic customer-lifetime model that guesses who will buy again from purchase history alone (how "
        "often and how recently each customer bought); a machine-learned model is only worth using when it "
        "beats it.",
        "beta-geometric/negative-binomial distribution model (Fader, Hardie and Lee 2005)",
    ),
    "decile": Term(
        "decile",
        "One tenth of the customers, after sorting them by their score: decile 1 is the tenth most likely "
        "to buy, decile 10 the tenth least likely.",
        "decile of p_purchase",
    ),
    "auc": Term(
        "AUC",
        "The chance that the model scores a random buyer above a random non-buyer: 0.5 is a coin toss, "
        "1 is perfect.",
        "area under the ROC curve",
    ),
    "average-precision": Term(
        "average precision",
        "How well the buyers are packed at the top of the list: picking customers at random gives the "
        "share of buyers, 1 is perfect.",
        "area under the precision-recall curve",
    ),
    "brier": Term(
        "Brier score",
        "The average squared gap between the predicted chance and what happened (lower is better); "
        "log-loss is a stricter cousin that punishes confident mistakes hardest.",
        "Brier score, log-loss",
    ),
    "precision-recall": Term(
        "precision, recall, F1",
        "If everyone scored at or above the threshold were called a buyer: precision is the share of them "
        "who bought, recall the share of all buyers they include, F1 a balance of the two.",
        "at the threshold that maximises F1",
    ),
    "top-decile-lift": Term(
        "top-decile lift",
        "How many times more buyers the top 10% by score held than 10% of customers picked at random: 2.8x "
        "means the top tenth held 28% of the buyers.",
        "buyer share of decile 1 / 0.1",
    ),
    "gain": Term(
        "gain chart",
        "The share of all buyers you reach when you contact the customers with the highest scores first, "
        "against the share of customers contacted; the diagonal is contacting at random.",
        "cumulative gains curve",
    ),
    "calibration": Term(
        "calibration",
        "Whether the predicted chances come true: of customers given 20%, about 20% should buy. Points on "
        "the diagonal mean the chances can be used as they are, for example to size a budget.",
        "reliability diagram by decile",
    ),
    "control-group": Term(
        "control group",
        "Customers picked at random and left out of a campaign or shown the current version, so that what "
        "the campaign or the change adds can be measured against them.",
        "group = 'control' in gold.campaign_audience; is_control in gold.experiment_results",
    ),
    "conversion-rate": Term(
        "conversion rate",
        "The share of the users in a variant who bought (within the experiment's window after first "
        "seeing it).",
        "conversions / users",
    ),
    "revenue-per-user": Term(
        "revenue per user",
        "The revenue of a variant divided by all its users, buyers or not.",
        "metric revenue_per_user: rate = conversions (the revenue) / users",
    ),
    "percentage-points": Term(
        "percentage points (pts)",
        "The plain difference of two rates: from 10% to 12% is +2 pts (and +20% relative).",
        "lift = rate(variant) - rate(control)",
    ),
    "lift": Term(
        "difference (lift)",
        "How much better or worse the variant does than the control, as the plain difference and as a share "
        "of the control's figure (relative: +20% means a fifth more).",
        "lift, lift_relative",
    ),
    "interval": Term(
        "interval",
        "The range the true difference very likely lies in (95% of the time for a 95% interval). When it "
        "holds 0, the test cannot tell the variant from the control yet; the more users, the narrower it is.",
        "confidence interval (fixed test) or confidence sequence (sequential test)",
    ),
    "p-value": Term(
        "p-value",
        "How surprising the difference would be if the variant truly changed nothing: below the "
        "experiments' threshold (0.05 unless set otherwise) it counts as real. It is adjusted when several "
        "variants are compared with one control, so that one of many does not win by luck.",
        "two-sided p-value, Holm-adjusted (p_value_adjusted, sequential_p_value_adjusted)",
    ),
    "sequential": Term(
        "sequential test",
        "A test built to be looked at every day: its intervals and p-values stay valid however often you "
        "look, so you may stop as soon as it says ship or do not ship. The price: it needs somewhat more "
        "users than a fixed test read once.",
        "always-valid p-values and asymptotic confidence sequences (Waudby-Smith et al.), as in GrowthBook",
    ),
    "fixed-horizon": Term(
        "fixed-horizon test",
        "The classic test: valid only when read once, at the end planned before the start. Looking every "
        "day and stopping at the first good-looking result makes false winners several times likelier.",
        "two-proportion z-test, Welch's t-test",
    ),
    "prob-beat-control": Term(
        "chance to beat control",
        "The probability that the variant's true conversion rate is above the control's, given the data "
        "so far. Shown for context beside fixed-horizon results only (it is as misleading as they are when "
        "looked at every day): the decision does not use it.",
        "Bayesian Beta-Binomial posterior probability, prob_beat_control",
    ),
    "cuped": Term(
        "CUPED",
        "Adjusted figures: each user's result is corrected by what they did before the experiment (their "
        "purchases and revenue in the weeks before), which removes noise and narrows the interval without "
        "changing what is measured.",
        "Controlled-experiment Using Pre-Experiment Data (Deng et al. 2013), rows with cuped = true",
    ),
    "srm": Term(
        "split check (SRM)",
        "Whether the users came out split between the variants as planned (for example 50/50). When it is "
        "off, the assignment is broken and no figure of the experiment can be trusted: fix it and restart.",
        "sample-ratio mismatch, chi-square test against the planned split (srm, srm_p_value)",
    ),
    "value-cap": Term(
        "cap",
        "The most one user's revenue may count for in an experiment: a few very large baskets would "
        "otherwise decide the result by chance. Users above it count as the cap.",
        "winsorising at value_cap (absolute or a percentile of all the experiment's users); capped_users",
    ),
}


def anchor(key: str) -> str:
    """The id of a term's entry on the page."""
    return f"term-{key}"
