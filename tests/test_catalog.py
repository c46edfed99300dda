"""The table catalog is the one place that names tables: docs/tables.md is generated from it, and no other
file of the library, the jobs, the DAG or the benchmarks spells a table name."""

from __future__ import annotations

import re

from conftest import ROOT

from marketlake import catalog

TABLE_LITERAL = re.compile(r"""["'](bronze|silver|gold|quarantine|ops)\.[a-z_]+["']""")


def test_docs_tables_md_is_generated_from_the_catalog():
    written = (ROOT / "docs" / "tables.md").read_text()
    assert written == catalog.markdown(), "docs/tables.md is stale: run `make docs`"


def test_no_table_name_is_spelled_outside_the_catalog():
    places = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for folder in ("lib", "jobs", "dags", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != ROOT / "lib" / "marketlake" / "catalog.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if TABLE_LITERAL.search(line)
    ]
    assert places == []


def test_every_table_has_a_writer_readers_that_are_jobs_and_unique_columns():
    from marketlake.jobs import ALL_JOBS

    jobs = set(ALL_JOBS) | {catalog.EVERY_JOB}
    for table in catalog.TABLES:
        assert re.fullmatch(r"[a-z]+\.[a-z_]+", table.name)
        assert table.written_by and set(table.written_by) <= jobs, table.name
        assert set(table.read_by) <= jobs, table.name
        assert len(set(table.column_names)) == len(table.columns), table.name
        assert set(table.partition_by) <= set(table.column_names), table.name
        assert set(table.keys) <= set(table.column_names), table.name


def test_a_missing_table_names_the_job_that_writes_it(spark, config, lake_root):
    import pytest

    from marketlake.errors import UsageError
    from marketlake.lake import Lake

    lake = Lake(spark, config.lake.model_copy(update={"engine": "delta-rs"}), lake_root)
    with pytest.raises(UsageError, match="gold.user_segments does not exist in this lake; run segment first"):
        lake.require(catalog.USER_SEGMENTS.name)


def test_py4j_and_engine_modules_stay_inside_the_lake():
    """One module reaches into the JVM (lake/jvm.py); nothing outside lib/marketlake/lake imports an engine."""
    jvm_calls, engine_imports = [], []
    for path in sorted((ROOT / "lib").rglob("*.py")):
        text = path.read_text()
        relative = str(path.relative_to(ROOT))
        if re.search(r"\._jvm\b|\._jsc\b", text) and not relative.endswith("lake/jvm.py"):
            jvm_calls.append(relative)
        if re.search(r"marketlake\.lake\.delta_(rs|spark)", text) and "/lake/" not in relative:
            engine_imports.append(relative)
    assert jvm_calls == [] and engine_imports == []
