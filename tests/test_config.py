from __future__ import annotations

import pytest

from marketlake.config import RulesConfig, SegmentConfig, load_config, with_overrides
from marketlake.errors import ConfigError, UsageError


def test_embedded_default_is_conf_local_yaml():
    config = load_config(None, {})
    assert config.lake.root == "./lakehouse" and config.lake.engine == "auto"
    assert config == load_config("conf/local.yaml", {})


def test_file_merges_over_default(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lake:\n  engine: delta-rs\nspark:\n  shuffle_partitions: 3\n  conf: {spark.x: 'y'}\n")
    config = load_config(path, {})
    assert config.lake.engine == "delta-rs" and config.lake.root == "./lakehouse"
    assert config.spark.shuffle_partitions == 3 and config.spark.conf == {"spark.x": "y"}


def test_environment_overrides_paths_and_any_key(tmp_path):
    config = load_config(
        None, {"MARKETLAKE_LAKE": "/data/lake", "MARKETLAKE__SPARK__SHUFFLE_PARTITIONS": "12"}
    )
    assert config.lake.root == "/data/lake" and config.spark.shuffle_partitions == 12


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ("lake:\n  rooot: x\n", {}, "unknown key 'lake.rooot'"),
        ("sparky: {}\n", {}, "unknown key 'sparky'"),
        ("lake:\n  engine: parquet\n", {}, "bad value for 'lake.engine'"),
        ("spark:\n  shuffle_partitions: many\n", {}, "bad value for 'spark.shuffle_partitions'"),
        ("spark:\n  shuffle_partitions: 0\n", {}, "bad value for 'spark.shuffle_partitions'"),
        ("", {"MARKETLAKE__LAKE__ENGIN": "delta-rs"}, "unknown key 'lake.engin'"),
        ("", {"MARKETLAKE_ENGINE": "spark"}, "bad value for 'lake.engine'"),
        ("lake: [1, 2\n", {}, "not valid YAML"),
        ("- a\n- b\n", {}, "must be a mapping"),
    ],
)
def test_errors_name_the_key(tmp_path, text, environ, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path, environ)
    assert "\n" not in str(info.value)


def test_command_line_overrides_are_checked_like_the_config_and_name_the_option():
    rules = RulesConfig()
    assert with_overrides(rules, {"min_support": None, "top_n": None}) is rules  # None: not given
    assert with_overrides(rules, {"min_support": 0.5, "top_n": None}) == rules.model_copy(
        update={"min_support": 0.5}
    )
    with pytest.raises(UsageError, match=r"^--min-support: Input should be greater than 0 \(got 0\.0\)$"):
        with_overrides(rules, {"min_support": 0.0})
    with pytest.raises(UsageError, match="^--k: Input should be greater than or equal to 2 "):
        with_overrides(SegmentConfig(), {"k": 1})


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("conf/nope.yaml", {})


def test_cluster_example_is_valid():
    config = load_config("conf/cluster.yaml", {})
    assert config.lake.engine == "delta-spark" and config.lake.root.startswith("s3a://")
