"""marketlake.lake.files (the lake's one file-system helper) on a local folder, and where the lake puts what
is not a table (Layout)."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from marketlake.lake import Layout
from marketlake.lake import files as files_module
from marketlake.lake.files import Files, absolute, s3_options, store_uri


def tree(folder) -> dict[str, str]:
    return {
        os.path.relpath(os.path.join(here, name), folder): open(os.path.join(here, name)).read()
        for here, _, names in os.walk(folder)
        for name in names
    }


@pytest.fixture()
def files() -> Files:
    return Files()


def test_list_is_recursive_with_sizes_and_times_and_empty_for_a_missing_folder(files, tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f.txt").write_text("hello")
    (tmp_path / "top.txt").write_text("x")
    entries = files.list(str(tmp_path))
    assert [(e.relative, e.is_dir, e.size) for e in entries] == [
        ("a", True, None),
        ("a/b", True, None),
        ("a/b/f.txt", False, 5),
        ("top.txt", False, 1),
    ]
    assert entries[2].uri == f"{tmp_path}/a/b/f.txt"
    assert abs(entries[2].mtime.timestamp() - os.path.getmtime(tmp_path / "a" / "b" / "f.txt")) < 1
    assert [e.relative for e in files.list(f"file:{tmp_path}", recursive=False)] == ["a", "top.txt"]
    assert files.list(str(tmp_path / "missing")) == []


def test_move_creates_the_target_folder_and_replaces_a_file(files, tmp_path):
    (tmp_path / "part-0").write_text("new")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "audience.csv").write_text("old")
    files.move(str(tmp_path / "part-0"), str(tmp_path / "old" / "audience.csv"))
    assert tree(tmp_path) == {"old/audience.csv": "new"}
    files.move(f"file://{tmp_path}/old/audience.csv", f"file://{tmp_path}/x/y/z.csv")
    assert tree(tmp_path) == {"x/y/z.csv": "new"}


def test_delete_of_a_missing_folder_is_fine_and_a_root_is_refused(files, tmp_path):
    assert files.delete(str(tmp_path / "missing")) is False
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f").write_text("x")
    (tmp_path / "g").write_text("x")
    assert files.delete(str(tmp_path / "d")) and files.delete(str(tmp_path / "g"))
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="root"):
        files.delete("/")
    with pytest.raises(ValueError, match="not a path"):
        files.delete("")


def test_delete_if_empty_keeps_a_folder_with_anything_in_it(files, tmp_path):
    (tmp_path / "full" / "sub").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    assert not files.delete_if_empty(str(tmp_path / "full"))
    assert files.delete_if_empty(str(tmp_path / "empty"))
    assert not files.delete_if_empty(str(tmp_path / "missing"))
    assert sorted(os.listdir(tmp_path)) == ["full"]


def test_write_and_read_text(files, tmp_path):
    target = str(tmp_path / "reports" / "2024-06-30" / "r.html")
    files.write_text(target, "ünï\n")
    files.write_text(target, "second ünï\n")
    assert (
        files.read_text(target) == "second ünï\n"
        and files.is_file(target)
        and files.is_dir(str(tmp_path / "reports"))
    )
    assert not files.exists(str(tmp_path / "nothing"))


@pytest.mark.parametrize("renames_folders", [True, False], ids=["folder-rename", "file-by-file"])
def test_staged_replace_swaps_the_folder_only_when_the_block_succeeds(
    files, tmp_path, monkeypatch, renames_folders
):
    if not renames_folders:  # the object-store way, on a local disk
        monkeypatch.setattr(files_module, "FOLDER_RENAMES", set())
    folder = tmp_path / "exports" / "c1" / "2024-06-30"
    folder.mkdir(parents=True)
    (folder / "stale.csv").write_text("stale")
    (folder / "audience.csv").write_text("old")

    with pytest.raises(RuntimeError, match="half way"), files.staged_replace(str(folder)) as staging:
        files.write_text(f"{staging}/audience.csv", "half")
        raise RuntimeError("half way")
    assert tree(tmp_path) == {
        "exports/c1/2024-06-30/stale.csv": "stale",
        "exports/c1/2024-06-30/audience.csv": "old",
    }

    with files.staged_replace(str(folder)) as staging:
        assert staging.startswith(f"{tmp_path}/exports/c1/_staging-") and not os.path.exists(staging)
        files.write_text(f"{staging}/audience.csv", "new")
        files.write_text(f"{staging}/sub/audience.parquet", "pq")
    assert tree(tmp_path) == {
        "exports/c1/2024-06-30/audience.csv": "new",
        "exports/c1/2024-06-30/sub/audience.parquet": "pq",
    }

    fresh = tmp_path / "exports" / "c2" / "2024-06-30"
    with files.staged_replace(str(fresh)) as staging:
        files.write_text(f"{staging}/audience.csv", "first")
    assert tree(fresh) == {"audience.csv": "first"} and sorted(os.listdir(fresh.parent)) == ["2024-06-30"]


def test_store_uris_and_storage_options():
    assert store_uri("s3a://bucket/lake/x") == "s3://bucket/lake/x" and store_uri("/tmp/x") == "/tmp/x"
    assert absolute("s3a://bucket/lake/") == "s3a://bucket/lake" and absolute("lake") == os.path.abspath(
        "lake"
    )
    assert s3_options(
        {
            "AWS_ACCESS_KEY_ID": "k",
            "aws_secret_access_key": "s",
            "AWS_REGION": "eu-west-1",
            "AWS_ENDPOINT_URL": "http://minio:9000",
            "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
        }
    ) == {
        "access_key": "k",
        "secret_key": "s",
        "region": "eu-west-1",
        "endpoint_override": "minio:9000",
        "scheme": "http",
    }
    assert s3_options({"AWS_ENDPOINT": "minio:9000", "AWS_ALLOW_HTTP": "true"}) == {
        "endpoint_override": "minio:9000",
        "scheme": "http",
    }


@pytest.mark.parametrize("root", ["/data/lake", "s3a://bucket/lake/"])
def test_the_lake_puts_what_is_not_a_table_where_it_always_did(root):
    layout, base = Layout(root), root.rstrip("/")
    run_date = dt.date(2024, 6, 30)
    assert (
        layout.model_path("recommend_als", "2024-06-30-3f9a1c0b")
        == f"{base}/models/recommend_als/2024-06-30-3f9a1c0b"
    )
    assert layout.checkpoint_dir("run-1") == f"{base}/_checkpoints/run-1"
    assert layout.export_dir("spring", run_date) == f"{base}/exports/spring/2024-06-30"
    assert layout.report_path(run_date) == f"{base}/reports/2024-06-30/marketlake-report.html"
