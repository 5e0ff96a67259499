"""srgnn.core.fs on a local disk and on an S3-compatible server on 127.0.0.1."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from srgnn.core import fs
from srgnn.core.errors import InputError
from tests.s3server import s3_bucket


@pytest.fixture()
def s3_root():
    with s3_bucket() as bucket:
        yield f"{bucket}/out"


def _model_folder(tmp_path, weights: bytes, version: str):
    folder = tmp_path / f"export-{version}"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text(json.dumps({"model_version": version}))
    return folder


def test_json_round_trip_and_errors_on_s3(s3_root):
    path = f"{s3_root}/stats/run_date=2016-06-01/x.json"
    fs.write_json_atomic(path, {"a": 1})
    assert fs.read_json(path) == {"a": 1}
    assert fs.read_json(path.replace("s3://", "s3a://")) == {"a": 1}  # Hadoop's scheme names the same object
    assert fs.isdir(f"{s3_root}/stats") and fs.exists(path)
    fs.write_bytes_atomic(f"{s3_root}/bad.json", b"{trunc")
    with pytest.raises(InputError, match="bad.json is not valid JSON"):
        fs.read_json(f"{s3_root}/bad.json")
    with pytest.raises(InputError, match="file not found"):
        fs.read_json(f"{s3_root}/missing.json")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_publish_dir_replaces_the_folder_and_fetch_dir_reads_it_back(tmp_path, s3_root, where):
    final = f"{s3_root}/models/run_date=2016-06-01" if where == "s3" else str(tmp_path / "models" / "run_date=2016-06-01")
    old = _model_folder(tmp_path, b"old", "v1")
    (old / "stale.txt").write_text("only in the old version")
    fs.publish_dir(str(old), final, marker="config.json")
    fs.publish_dir(str(_model_folder(tmp_path, b"new", "v2")), final, marker="config.json")
    assert fs.listdir(final) == ["config.json", "model.safetensors"]
    local = fs.fetch_dir(final, str(tmp_path / "fetched"))
    with open(f"{local}/config.json") as fh:
        assert json.load(fh) == {"model_version": "v2"}
    fs.remove_tree(final)
    assert fs.listdir(final) == []


def test_arrow_filesystem_reads_parquet_from_s3(tmp_path, s3_root):
    local = tmp_path / "part-0.parquet"
    pq.write_table(pa.table({"x": [1, 2, 3]}), local)
    fs.write_bytes_atomic(f"{s3_root}/t/part-0.parquet", local.read_bytes())
    arrow_fs, inner = fs.arrow_filesystem(f"{s3_root}/t/part-0.parquet")
    assert pq.read_table(inner, filesystem=arrow_fs).column("x").to_pylist() == [1, 2, 3]


def test_a_file_where_a_folder_belongs_is_one_clear_error(tmp_path):
    (tmp_path / "models").write_text("not a folder")
    with pytest.raises(InputError, match="is a file where a folder belongs"):
        fs.makedirs(str(tmp_path / "models"))


def test_run_commit_and_lease_lock_on_s3(s3_root):
    from srgnn.core.commit import LockHeld, RunCommit, RunLock
    from srgnn.core.layout import Layout

    layout = Layout(s3_root)
    for text in ("old", "new"):
        with RunCommit(layout, "stage", "2016-06-01") as commit:
            commit.add(layout.partition("a", "2016-06-01"),
                       lambda p, text=text: fs.write_bytes_atomic(f"{p}/part-0.txt", text.encode()))
            commit.add_json(layout.stats("2016-06-01", "stage.json"), {"text": text})
            with pytest.raises(LockHeld, match="already running"):
                RunLock(layout, "stage", "2016-06-01").acquire()
    assert fs.read_bytes(f"{layout.partition('a', '2016-06-01')}/part-0.txt") == b"new"
    assert fs.read_json(layout.stats("2016-06-01", "stage.json")) == {"text": "new"}
    assert [n for n in fs.listdir(layout.table("a")) if n.startswith("_")] == []
    RunLock(layout, "stage", "2016-06-01").acquire().release()  # released with the commit
