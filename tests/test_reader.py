"""srgnn.reader: Petastorm batches over stage 2's shards, sharded by rank, re-chunked, checked."""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from srgnn.core.errors import InputError
from srgnn.reader import (examples_count, iter_batches, load_manifest, read_split, shard_examples, shards_dir,
                          split_url, verify_manifest)


@pytest.fixture(scope="module")
def shards(sample_stage2):
    out, run_date = sample_stage2["output"], sample_stage2["run_date"]
    return {"out": out, "run_date": run_date, "dir": shards_dir(out, run_date),
            "manifest": load_manifest(out, run_date)}


def as_rows(items, lengths, targets, ngc_w):
    return [(tuple(i.tolist()), int(n), int(t), tuple(w.tolist())) for i, n, t, w in zip(items, lengths, targets, ngc_w)]


def expected(shards, split):
    got = read_split(shards["dir"], split)
    return Counter(as_rows(got["items"], got["length"], got["target"], got["ngc_w"]))


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_all_ranks_together_read_every_example_exactly_once(shards, world):
    want = expected(shards, "train")
    seen: Counter = Counter()
    for rank in range(world):
        batches = list(iter_batches(shards["dir"], "train", 64, cur_shard=rank, shard_count=world, seed=3))
        sizes = [len(b) for b in batches]
        assert sum(sizes) == examples_count(shards["manifest"], "train", rank, world)
        assert all(s == 64 for s in sizes[:-1]) and 0 < sizes[-1] <= 64
        for b in batches:
            seen.update(as_rows(b.items.numpy(), b.lengths.numpy(), b.targets.numpy(), b.ngc_w.numpy()))
    assert seen == want
    assert sum(want.values()) == shards["manifest"]["splits"]["train"]["examples"]


def test_ranks_are_balanced_when_the_world_size_divides_the_row_groups(shards):
    m = shards["manifest"]
    for split in ("train", "test"):
        counts = shard_examples(m, split, m["world_size"])
        assert sum(counts) == m["splits"][split]["examples"]
        assert max(counts) - min(counts) <= m["splits"][split]["row_groups"] // m["world_size"]


def test_batches_have_the_batch_dtypes_and_match_petastorms_own_conversion(shards):
    fast = list(iter_batches(shards["dir"], "test", 10, seed=1, workers_count=1))
    slow = list(iter_batches(shards["dir"], "test", 10, seed=1, workers_count=1, fast_lists=False))
    b = fast[0]
    assert (b.items.dtype, b.lengths.dtype, b.targets.dtype, b.ngc_w.dtype) == (
        torch.int64, torch.int64, torch.int64, torch.float32)
    L = shards["manifest"]["max_len"]
    assert b.items.shape == (10, L) and b.ngc_w.shape == (10, L)
    # right padding: items[:length] are clicks (> 0), the rest 0; ngc_w is 0 at 0 and on padding
    pos = torch.arange(L)[None, :]
    assert torch.equal(b.items > 0, pos < b.lengths[:, None])
    assert torch.all(b.ngc_w[:, 0] == 0) and torch.all(b.ngc_w[pos >= b.lengths[:, None]] == 0)
    assert len(fast) == len(slow) == -(-shards["manifest"]["splits"]["test"]["examples"] // 10)
    for x, y in zip(fast, slow):
        assert torch.equal(x.items, y.items) and torch.equal(x.targets, y.targets)
        assert torch.equal(x.lengths, y.lengths) and torch.equal(x.ngc_w, y.ngc_w)
    no_ngc = next(iter_batches(shards["out"], "test", 10, run_date=shards["run_date"], with_ngc=False))
    assert no_ngc.ngc_w is None


def test_each_epoch_reads_row_groups_in_a_new_reproducible_order(shards):
    def targets(epoch, shuffle=True):
        return [t for b in iter_batches(shards["dir"], "train", 100, seed=5, epoch=epoch, shuffle_row_groups=shuffle,
                                        workers_count=1) for t in b.targets.tolist()]

    e0, e0_again, e1 = targets(0), targets(0), targets(1)
    assert e0 == e0_again and e0 != e1 and sorted(e0) == sorted(e1)
    # unshuffled, row groups come in path order: the order shard_examples() assumes
    assert targets(0, shuffle=False) == [int(t) for t in read_split(shards["dir"], "train")["target"]]


def test_urls_and_manifest_checks(shards, tmp_path):
    assert split_url(shards["out"], shards["run_date"], "valid") == "file://" + shards["dir"] + "/valid"
    assert verify_manifest(shards["out"], shards["run_date"]) == shards["manifest"]
    copy = tmp_path / "shards"
    shutil.copytree(shards["dir"], copy)
    assert verify_manifest(str(copy))["content_hash"] == shards["manifest"]["content_hash"]
    victim = sorted((copy / "train").glob("*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    with pytest.raises(InputError, match="do not match their manifest"):
        verify_manifest(str(copy))
    with pytest.raises(InputError, match="shard manifest not found"):
        load_manifest(str(tmp_path), "2020-01-01")
    with pytest.raises(InputError, match="fewer than shard_count=99"):
        next(iter_batches(shards["dir"], "train", 10, cur_shard=0, shard_count=99))
    with pytest.raises(InputError, match="unknown split"):
        split_url(shards["out"], shards["run_date"], "dev")


def test_content_hash_identifies_the_rows_not_the_file_bytes(tmp_path):
    """Parquet writers may encode the same rows differently from run to run (Spark orders column
    encodings differently): the manifest's hash follows the rows, row groups and files."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from srgnn.reader import content_hash

    def table(targets, w=0.5):
        n = len(targets)
        return pa.table({"items": pa.array([[i + 1, 0] for i in range(n)], pa.list_(pa.int32())),
                         "length": pa.array([1] * n, pa.int32()), "target": pa.array(targets, pa.int32()),
                         "ngc_w": pa.array([[0.0, w]] * n, pa.list_(pa.float32())),
                         "session_id": pa.array([f"s{i}" for i in range(n)])})

    folder = tmp_path / "shards"
    train, valid = folder / "train" / "part-00000.parquet", folder / "valid" / "part-00000.parquet"
    train.parent.mkdir(parents=True)
    valid.parent.mkdir()

    def write(t_train, t_valid, **kw):
        pq.write_table(t_train, train, row_group_size=3, **kw)
        pq.write_table(t_valid, valid, **kw)

    write(table([5, 6, 7, 8, 9]), table([4]), compression="snappy")
    manifest = {"schema_version": 1, "content_hash": content_hash(str(folder))}
    (folder / "_manifest.json").write_text(json.dumps(manifest))
    before = train.read_bytes()

    write(table([5, 6, 7, 8, 9]), table([4]), compression="gzip", use_dictionary=False,
          data_page_version="2.0")                            # same rows, other encodings
    assert train.read_bytes() != before
    verify_manifest(str(folder))

    for t_train, t_valid, kw in ((table([5, 6, 7, 8, 10]), table([4]), {}),       # one value
                                 (table([5, 6, 7, 8, 9], w=0.25), table([4]), {}),
                                 (table([5, 6, 7, 9, 8]), table([4]), {}),        # two rows swapped
                                 (table([5, 6, 7, 8]), table([9, 4]), {})):      # a row moved to another split
        write(t_train, t_valid, compression="snappy", **kw)
        with pytest.raises(InputError, match="do not match their manifest"):
            verify_manifest(str(folder))
    pq.write_table(table([5, 6, 7, 8, 9]), train, row_group_size=2)           # other row groups
    pq.write_table(table([4]), valid)
    with pytest.raises(InputError, match="do not match their manifest"):
        verify_manifest(str(folder))
