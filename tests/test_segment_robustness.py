"""A small version of bench/segment_robustness.py: the segment job on two generated shops it was not tuned
on finds the five planted personas (k = 5, ARI >= 0.9) where a supervised classifier on the same features
separates them (ceiling >= 0.95)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "segment_robustness.py"
_spec = importlib.util.spec_from_file_location("segment_robustness", BENCH)
assert _spec is not None and _spec.loader is not None
robustness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(robustness)


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.parametrize("shop", ["2000:100:2", "2000:100:3"])
def test_the_planted_personas_are_found_where_they_are_separable(spark, tmp_path, shop):
    cache, work = tmp_path / "cache", tmp_path / "work"
    cache.mkdir()
    work.mkdir()
    result = robustness.measure(spark, shop, str(cache), str(work))
    assert result["ceiling"] >= 0.95  # these shops are separable: the goal applies
    assert (result["k"], result["users"], result["sampled_users"]) == (5, 2000, 2000)
    assert result["ari"] >= 0.9 and result["goal_met"] is True
    assert set(result["stability"]) == set(result["silhouette"]) == set(range(2, 9))
