"""Benchmark: what looking at an experiment every day does to the experiment job's decisions (issue 19).

Simulated experiments, two variants (control, treatment), 14 daily looks, 1,000 new users per variant per
day, conversion rate 5%; every user converts or not (0/1). At each look the cumulative users and
conversions of each arm become the moments the job would have (moment_sums of a 0/1 column: n, sum =
conversions, sum of squares = conversions; no covariate, no revenue) and go through the job's own
statistics and decision (`marketlake.experiment`: moments, srm_p_value, compare_proportions,
adjusted_p_values, compare_sequential, users_needed, decide), in the order experiment_rows calls them for
the conversion metric without CUPED. Each look is decided under three rules:

- fixed: `test: fixed`, the fixed-horizon z-test (the baseline: the ratio is sequential / fixed);
- sequential: `test: sequential` with the configured sequential_tuning_users (5,000 by default);
- sequential, tuned to the plan: the same with sequential_tuning_users = the planned total (2 variants x
  1,000 users x 14 days = 28,000 users), as the planner would suggest.

"Declared a winner" is a decision taken because of significance: ship (REASON_WIN) or do not ship
(REASON_LOSS). A futility "do not ship" (the sequential interval lies below min_detectable_lift, or the
fixed test reached its needed users) is not a winner. Reported:

- A/A (no true effect): the share of experiments that declared a winner at any of the 14 looks (the false
  positive rate under daily peeking; goal <= 5% for sequential), with its binomial standard error; also
  the share if the first decision is acted upon (a futility stop ends the experiment), and the fixed
  rule read once at the last look (what it is valid for).
- A/B (true relative lift `--lift`, 5% -> 5.5%): the power (share that declared the treatment better,
  ship, by the last look), the median day of that decision, and the shares stopped for futility first
  or declared worse.

The job's compare_proportions also computes prob_beat_control, a numerical integration (tens of ms) that
no decision reads and that would dominate the run (56,000 looks by default); the bench calls it with
with_probability=False. `check` runs experiment_rows itself on a few simulated experiments and stops the run unless
every decision is the same (tests/test_experiment_peeking.py does the same on chosen cases). statsmodels'
Holm correction calls gc.collect() on every call, so the workers freeze the imported objects out of the
collector first (gc.freeze), or each call would walk the whole heap.

    python bench/experiment_peeking.py [--experiments 2000] [--seed 42] [--workers 2] [--config conf/X.yaml]

The last line of stdout is JSON with every figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing
import resource
import sys
import time
from typing import Any

import numpy as np

from marketlake import experiment as ex
from marketlake.config import ExperimentConfig

CONTROL, TREATMENT = "control", "treatment"
FIXED, SEQUENTIAL, SEQUENTIAL_PLANNED = "fixed", "sequential", "sequential_planned"
# What a look decided, as a code: significance (win, loss), futility, anything else that is not keep running.
KEEP, WIN, LOSS, FUTILITY, OTHER = 0, 1, 2, 3, 4
CODES = {
    ex.REASON_WIN: WIN,
    ex.REASON_LOSS: LOSS,
    ex.REASON_BELOW_MINIMUM: FUTILITY,
    ex.REASON_POWERED: FUTILITY,
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rules(settings: ExperimentConfig, planned_users: int) -> dict[str, ExperimentConfig]:
    """The three decision rules: the configured settings with test fixed, sequential, and sequential tuned
    to the planned total of users. CUPED and the revenue metric off (conversions only)."""
    base = settings.model_copy(update={"cuped": False, "value_metric": False})
    return {
        FIXED: base.model_copy(update={"test": "fixed"}),
        SEQUENTIAL: base.model_copy(update={"test": "sequential"}),
        SEQUENTIAL_PLANNED: base.model_copy(
            update={"test": "sequential", "sequential_tuning_users": planned_users}
        ),
    }


def conversion_sums(users: int, conversions: int) -> dict[str, Any]:
    """What moment_sums gives for `users` users of whom `conversions` converted (0/1, so the sum of squares
    is the sum), no covariate and no revenue."""
    sums: dict[str, Any] = {"n": users}
    for metric in ex.MOMENTS:
        sums.update({f"{metric}_{name}": 0 for name in ("sum", "sum2", "x_sum", "x_sum2", "xy_sum")})
    sums["conversion_sum"] = sums["conversion_sum2"] = conversions
    return sums


class LookDecisions:
    """(decision, reason) of the treatment at one look under each rule (`decision_rules`, which may differ
    only in test and sequential_tuning_users): the calls and arguments of experiment_rows for the
    conversion metric without CUPED. srm_p_value and users_needed are memoised: the first is a function of
    the users per variant alone, the second reads of the variant only its users (the ratio to control;
    tests/test_experiment_peeking.py holds it to that), and both repeat across experiments."""

    def __init__(self, decision_rules: dict[str, ExperimentConfig]) -> None:
        self.rules = decision_rules
        self.settings = next(iter(decision_rules.values()))
        shared = {"test", "sequential_tuning_users"}
        if any(
            r.model_dump(exclude=shared) != self.settings.model_dump(exclude=shared)
            for r in decision_rules.values()
        ):
            raise ValueError("the rules may differ only in test and sequential_tuning_users")
        self._srm: dict[tuple[tuple[str, int], ...], bool] = {}
        self._needed: dict[tuple[ex.Arm, int], float | None] = {}

    def __call__(self, counts: dict[str, tuple[int, int]]) -> dict[str, tuple[str, str]]:
        """`counts`: variant (control, treatment) -> (users, conversions)."""
        settings = self.settings
        arms = {variant: ex.moments(conversion_sums(*pair)) for variant, pair in counts.items()}
        users = {variant: int(row["n"]) for variant, row in arms.items()}
        key = tuple(sorted(users.items()))
        if key not in self._srm:
            planned = {variant: 1 / len(users) for variant in users}
            self._srm[key] = ex.srm_p_value(users, planned) < settings.srm_threshold
        srm = self._srm[key]
        control = ex._arm(CONTROL, arms[CONTROL], ex.CONVERSION)
        variant = ex._arm(TREATMENT, arms[TREATMENT], ex.CONVERSION)
        comparison = ex.compare_proportions(control, variant, settings.alpha, with_probability=False)
        (p_adjusted,) = ex.adjusted_p_values([comparison.p_value], settings.correction)
        if (control, variant.n) not in self._needed:
            self._needed[control, variant.n] = ex.users_needed(control, variant, settings, 1, True)
        needed = self._needed[control, variant.n]
        decided = {}
        for name, rule in self.rules.items():
            sequential = ex.compare_sequential(
                control, variant, rule.alpha, rule.sequential_tuning_users, True
            )
            (sequential_p,) = ex.adjusted_p_values([sequential.p_value], rule.correction)
            decided[name] = ex.decide(
                srm, control, variant, comparison, p_adjusted, needed, rule, sequential, sequential_p
            )
        return decided


def job_decisions(
    counts: dict[str, tuple[int, int]], decision_rules: dict[str, ExperimentConfig]
) -> dict[str, tuple[str, str]]:
    """The same from experiment_rows itself (slow: every figure of the row), one call per rule."""
    arms = {variant: ex.moments(conversion_sums(*pair)) for variant, pair in counts.items()}
    pooled = ex.moments(
        conversion_sums(sum(u for u, _ in counts.values()), sum(c for _, c in counts.values()))
    )
    decided = {}
    for name, rule in decision_rules.items():
        rows, _ = ex.experiment_rows("bench", ex.FROM_CSV, arms, pooled, ex.Plan(CONTROL, None), rule)
        (row,) = [r for r in rows if r["variant"] == TREATMENT]
        decided[name] = (row["decision"], row["decision_reason"])
    return decided


def simulate(
    rng: np.random.Generator, experiments: int, days: int, per_day: int, rates: tuple[float, float]
) -> np.ndarray:
    """Cumulative conversions, shape (experiments, days, 2: control, treatment): each day per_day new users
    per variant, each converting with the variant's rate."""
    daily = rng.binomial(per_day, rates, size=(experiments, days, 2))
    return np.cumsum(daily, axis=1)


def decide_looks(conversions: np.ndarray, per_day: int, look_decisions: LookDecisions) -> np.ndarray:
    """Codes (KEEP, WIN, ...) of every look, shape (experiments, rules, days)."""
    experiments, days, _ = conversions.shape
    codes = np.zeros((experiments, len(look_decisions.rules), days), dtype=np.int8)
    for e in range(experiments):
        for d in range(days):
            users = per_day * (d + 1)
            counts = {
                CONTROL: (users, int(conversions[e, d, 0])),
                TREATMENT: (users, int(conversions[e, d, 1])),
            }
            for r, (decision, reason) in enumerate(look_decisions(counts).values()):
                codes[e, r, d] = CODES.get(reason, KEEP if decision == ex.KEEP_RUNNING else OTHER)
    return codes


_worker: LookDecisions | None = None  # each worker process's own, with its memos


def _start_worker(decision_rules: dict[str, ExperimentConfig]) -> None:
    global _worker
    _worker = LookDecisions(decision_rules)
    gc.freeze()


def _decide_chunk(job: tuple[np.ndarray, int]) -> np.ndarray:
    assert _worker is not None
    return decide_looks(*job, _worker)


def decide_all(
    conversions: np.ndarray, per_day: int, decision_rules: dict[str, ExperimentConfig], workers: int
) -> np.ndarray:
    """decide_looks over `workers` processes (the same codes for any number of workers)."""
    chunks = [chunk for chunk in np.array_split(conversions, 8 * workers) if len(chunk)]
    if workers == 1:
        _start_worker(decision_rules)
        return np.concatenate([_decide_chunk((chunk, per_day)) for chunk in chunks])
    with multiprocessing.get_context("fork").Pool(workers, _start_worker, (decision_rules,)) as pool:
        codes = pool.map(_decide_chunk, [(chunk, per_day) for chunk in chunks])
        pool.close()
        pool.join()  # the workers' CPU time then counts in cpu_seconds()
    return np.concatenate(codes)


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished workers."""
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


def check(
    conversions: np.ndarray, per_day: int, decision_rules: dict[str, ExperimentConfig]
) -> tuple[int, float]:
    """Every look of these experiments decided by experiment_rows and by look_decisions: (looks compared,
    mean CPU seconds of experiment_rows per look and rule). Raises when a decision differs."""
    looks, seconds = 0, 0.0
    look_decisions = LookDecisions(decision_rules)
    for e in range(len(conversions)):
        for d in range(conversions.shape[1]):
            users = per_day * (d + 1)
            counts = {
                CONTROL: (users, int(conversions[e, d, 0])),
                TREATMENT: (users, int(conversions[e, d, 1])),
            }
            start = time.process_time()
            expected = job_decisions(counts, decision_rules)
            seconds += time.process_time() - start
            found = look_decisions(counts)
            if found != expected:
                raise AssertionError(f"look {counts}: experiment_rows {expected}, the bench {found}")
            looks += 1
    return looks, seconds / max(1, looks * len(decision_rules))


def share(hits: np.ndarray) -> tuple[float, float]:
    """The share of True and its binomial standard error."""
    p = float(hits.mean())
    return p, math.sqrt(p * (1 - p) / len(hits))


def first_day(hits: np.ndarray) -> np.ndarray:
    """Per row of a (experiments, days) bool array: the first day (1-based) that is True, 0 for never."""
    return np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)


def summarise_aa(codes: np.ndarray) -> dict[str, float]:
    """False positive figures of one rule's codes (experiments, days) on A/A experiments."""
    significant = first_day((codes == WIN) | (codes == LOSS))
    decided = first_day(codes != KEEP)
    rate, se = share(significant > 0)
    acted, acted_se = share((significant > 0) & (significant == decided))
    last, last_se = share(np.isin(codes[:, -1], (WIN, LOSS)))
    return {
        "false_positive_rate": rate,
        "false_positive_se": se,
        "false_positive_rate_first_decision": acted,
        "false_positive_first_decision_se": acted_se,
        "false_positive_rate_last_look_only": last,
        "false_positive_last_look_only_se": last_se,
        "futility_stop_rate": float((first_day(codes == FUTILITY) > 0).mean()),
    }


def summarise_ab(codes: np.ndarray) -> dict[str, float | None]:
    """Power figures of one rule's codes (experiments, days) on A/B experiments with a positive lift."""
    win = first_day(codes == WIN)
    futility = first_day(codes == FUTILITY)
    power, se = share(win > 0)
    last, last_se = share(codes[:, -1] == WIN)
    return {
        "power": power,
        "power_se": se,
        "power_last_look_only": last,
        "power_last_look_only_se": last_se,
        "median_decision_day": float(np.median(win[win > 0])) if (win > 0).any() else None,
        "futility_before_win_rate": float(((futility > 0) & ((win == 0) | (futility < win))).mean()),
        "declared_worse_rate": float((first_day(codes == LOSS) > 0).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--experiments", type=int, default=2000, help="A/A and as many A/B experiments (2000)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--days", type=int, default=14, help="daily looks (14)")
    parser.add_argument(
        "--users-per-day", type=int, default=1000, help="new users per variant per day (1000)"
    )
    parser.add_argument("--rate", type=float, default=0.05, help="control conversion rate (0.05)")
    parser.add_argument("--lift", type=float, default=0.10, help="A/B true relative lift (0.10)")
    parser.add_argument("--workers", type=int, default=2, help="processes (2)")
    parser.add_argument(
        "--check", type=int, default=1, help="experiments of each kind checked against experiment_rows (1)"
    )
    parser.add_argument(
        "--config", help="YAML merged over the default config (its experiment section is used)"
    )
    args = parser.parse_args(argv)
    problems = [
        f"--{name} must be at least {low}"
        for name, value, low in (
            ("experiments", args.experiments, 1),
            ("days", args.days, 1),
            ("users-per-day", args.users_per_day, 1),
            ("workers", args.workers, 1),
            ("check", args.check, 0),
        )
        if value < low
    ]
    if not 0 < args.rate < 1 or not 0 < args.rate * (1 + args.lift) < 1:
        problems.append("--rate and --rate * (1 + --lift) must lie between 0 and 1")
    if problems:
        print(f"experiment_peeking: {problems[0]}", file=sys.stderr)
        return 2

    from marketlake.config import load_config
    from marketlake.errors import ConfigError

    try:
        settings = load_config(args.config).experiment
    except ConfigError as exc:
        print(f"experiment_peeking: {exc}", file=sys.stderr)
        return 2
    planned_users = 2 * args.users_per_day * args.days
    decision_rules = rules(settings, planned_users)
    aa_seed, ab_seed = np.random.SeedSequence(args.seed).spawn(2)
    aa = simulate(
        np.random.default_rng(aa_seed), args.experiments, args.days, args.users_per_day, (args.rate,) * 2
    )
    treated = args.rate * (1 + args.lift)
    ab = simulate(
        np.random.default_rng(ab_seed), args.experiments, args.days, args.users_per_day, (args.rate, treated)
    )

    started = time.perf_counter()
    gc.freeze()
    checked, job_look_s = check(
        np.concatenate([aa[: args.check], ab[: args.check]]), args.users_per_day, decision_rules
    )
    check_s = time.perf_counter() - started
    log(f"checked {checked} looks against experiment_rows: same decisions ({check_s:.1f} s)")
    started, cpu_started = time.perf_counter(), cpu_seconds()
    aa_codes = decide_all(aa, args.users_per_day, decision_rules, args.workers)
    ab_codes = decide_all(ab, args.users_per_day, decision_rules, args.workers)
    decide_s, decide_cpu_s = time.perf_counter() - started, cpu_seconds() - cpu_started
    looks = 2 * args.experiments * args.days

    names = list(decision_rules)
    aa_figures = {name: summarise_aa(aa_codes[:, r]) for r, name in enumerate(names)}
    ab_figures = {name: summarise_ab(ab_codes[:, r]) for r, name in enumerate(names)}
    fixed_fp, sequential_fp = (
        aa_figures[FIXED]["false_positive_rate"],
        aa_figures[SEQUENTIAL]["false_positive_rate"],
    )
    ratio = sequential_fp / fixed_fp if fixed_fp else None
    labels = {
        FIXED: "fixed (baseline)",
        SEQUENTIAL: f"sequential, tuning {settings.sequential_tuning_users:,}",
        SEQUENTIAL_PLANNED: f"sequential, tuning {planned_users:,}",
    }

    print(
        f"settings: alpha {settings.alpha}, correction {settings.correction}, min_users {settings.min_users}, "
        f"min_detectable_lift {settings.min_detectable_lift}, power {settings.power}, sequential_tuning_users "
        f"{settings.sequential_tuning_users:,} (configured) and {planned_users:,} (the planned total)"
    )
    print(
        f"simulation: {args.experiments:,} A/A and {args.experiments:,} A/B experiments, {args.days} daily looks, "
        f"{args.users_per_day:,} users per variant per day, conversion {args.rate:.1%} "
        f"(A/B treatment {treated:.2%}, lift {args.lift:+.0%}), seed {args.seed}"
    )
    print(
        "winner = ship or do not ship because the difference is significant (not a futility 'do not ship')\n"
    )
    print(f"A/A: share that declared a winner at any look (goal for sequential <= {settings.alpha:.0%})")
    print(f"  {'rule':<30} {'any look':>16} {'acting on 1st':>16} {'last look only':>16} {'futility':>9}")
    for name in names:
        f = aa_figures[name]
        print(
            f"  {labels[name]:<30} {f['false_positive_rate']:>8.2%} ± {f['false_positive_se']:.2%}"
            f" {f['false_positive_rate_first_decision']:>8.2%} ± {f['false_positive_first_decision_se']:.2%}"
            f" {f['false_positive_rate_last_look_only']:>8.2%} ± {f['false_positive_last_look_only_se']:.2%}"
            f" {f['futility_stop_rate']:>8.2%}"
        )
    print(
        f"  ratio sequential / fixed: {ratio:.3f}"
        if ratio is not None
        else "  ratio: fixed rule had no false positive"
    )
    print(f"\nA/B ({args.lift:+.0%}): share that declared the treatment better (ship) by day {args.days}")
    print(
        f"  {'rule':<30} {'any look':>16} {'median day':>11} {'last look only':>16}"
        f" {'futility 1st':>13} {'said worse':>11}"
    )
    for name in names:
        g = ab_figures[name]
        day = f"{g['median_decision_day']:.1f}" if g["median_decision_day"] is not None else "-"
        print(
            f"  {labels[name]:<30} {g['power']:>8.2%} ± {g['power_se']:.2%} {day:>11}"
            f" {g['power_last_look_only']:>8.2%} ± {g['power_last_look_only_se']:.2%}"
            f" {g['futility_before_win_rate']:>12.2%} {g['declared_worse_rate']:>10.2%}"
        )
    print(
        f"\nrun: {looks:,} looks x {len(names)} rules in {decide_s:.1f} s on {args.workers} workers, "
        f"{decide_cpu_s:.1f} CPU s ({1000 * decide_cpu_s / looks:.2f} CPU ms per look, all rules); "
        f"experiment_rows itself {1000 * job_look_s:.1f} CPU ms per look and rule; check {check_s:.1f} s"
    )

    result: dict[str, Any] = {
        "experiments": args.experiments,
        "seed": args.seed,
        "days": args.days,
        "users_per_variant_per_day": args.users_per_day,
        "rate": args.rate,
        "lift": args.lift,
        "alpha": settings.alpha,
        "min_users": settings.min_users,
        "min_detectable_lift": settings.min_detectable_lift,
        "sequential_tuning_users": settings.sequential_tuning_users,
        "planned_tuning_users": planned_users,
        "false_positive_ratio": ratio,
    }
    for name in names:
        result.update({f"{name}_{key}": value for key, value in aa_figures[name].items()})
        result.update({f"{name}_{key}": value for key, value in ab_figures[name].items()})
    result.update(
        {
            "looks_checked": checked,
            "decide_s": round(decide_s, 1),
            "decide_cpu_s": round(decide_cpu_s, 1),
            "check_s": round(check_s, 1),
        }
    )
    result["job_cpu_ms_per_look_and_rule"] = round(1000 * job_look_s, 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
