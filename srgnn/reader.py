"""Read stage 2's training shards as :class:`srgnn.data.Batch` es, through Petastorm.

This is the ONLY module of the project that imports Petastorm (lazily, inside :func:`iter_batches`),
so replacing Petastorm is a change to this one file.

Layout written by :func:`pipelines.graph.build_graph` (see docs/stage2.md)::

    OUT/shards/run_date=D/_manifest.json
    OUT/shards/run_date=D/{train,valid,test}/part-00000.parquet ...   (one row group per file)

Sharding: Petastorm gives rank ``r`` of ``W`` the row groups ``i`` with ``i % W == r``, ``i`` being
the row group's position in path order. Stage 2 writes ``k * world_size`` row groups of equal size
(+-1 row), so ranks are balanced when ``W`` divides ``k * world_size``; :func:`shard_examples` gives
every rank's exact count (from the manifest) so a trainer can equalise its steps across ranks.

Every epoch reshuffles the order in which a rank reads its row groups (Petastorm's seed is derived
from ``(seed, epoch)``); rows inside a row group were shuffled once, with a seed, when written.

Object-store roots (``s3://`` ...): the manifest and the file listings go through
:mod:`srgnn.core.fs`, whole splits through pyarrow (:func:`srgnn.core.fs.arrow_filesystem`), and
Petastorm streams the row groups through fsspec (s3fs; endpoint and credentials from the ``AWS_*``
variables) behind a small adapter to the pyarrow filesystem interface Petastorm 0.12 still uses
(:class:`_PetastormFS`). The order of the row groups is the same as on a local disk, so a run on an
object store trains exactly as the same run on a local copy.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from typing import Any, Iterator, Sequence

import numpy as np

from srgnn.core import fs
from srgnn.core.contracts import MANIFEST_NAME, SCHEMA_VERSION, SPLITS
from srgnn.core.contracts import SHARD_COLUMNS as COLUMNS  # what a Batch needs; session_id is not read
from srgnn.core.errors import InputError
from srgnn.core.fs import file_url, local_path, read_json
from srgnn.core.layout import Layout, normalize_root


# ---- where things are ---------------------------------------------------------------------------
def shards_dir(output: str, run_date: str) -> str:
    """``OUT/shards/run_date=D``: a local path for local roots, else the URI (``s3://...``)."""
    return local_path(Layout(output).shards(run_date))


def _as_local_dir(path_or_url: str) -> str:
    if path_or_url.startswith("file://"):
        return path_or_url[len("file://"):].rstrip("/")
    return local_path(normalize_root(path_or_url))


def split_url(output: str, run_date: str, split: str) -> str:
    """``file:///.../shards/run_date=D/<split>`` (or ``s3://...``): the URL Petastorm reads for one split."""
    _check_split(split)
    return file_url(f"{shards_dir(output, run_date)}/{split}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {list(SPLITS)}")


# ---- manifest -----------------------------------------------------------------------------------
def load_manifest_at(shards_path: str) -> dict[str, Any]:
    """The manifest of a shard folder (``OUT/shards/run_date=D``, path or file:// URL)."""
    folder = _as_local_dir(shards_path)
    path = f"{folder}/{MANIFEST_NAME}"
    if not fs.exists(path) or fs.isdir(path):
        raise InputError(f"shard manifest not found: {path} (run jobs/build_graph.py for this run date first)")
    manifest = read_json(path)
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise InputError(f"shard manifest {path}: schema_version {version!r}, this code reads {SCHEMA_VERSION}")
    return manifest


def load_manifest(output: str, run_date: str) -> dict[str, Any]:
    """The manifest of ``OUT/shards/run_date=D``; a clear error if stage 2 has not written it."""
    return load_manifest_at(shards_dir(output, run_date))


def split_files(shards_path: str, split: str) -> list[str]:
    """Relative paths (``<split>/<file>.parquet``) of one split's shard files, sorted, on any root."""
    _check_split(split)
    folder = _as_local_dir(shards_path)
    return [f"{split}/{name}" for name in fs.listdir(f"{folder}/{split}")
            if name.endswith(".parquet") and not name.startswith((".", "_"))]


def shard_files(shards_path: str) -> list[str]:
    """Relative paths (``<split>/<file>.parquet``) of every shard file, sorted."""
    folder = _as_local_dir(shards_path)
    files = []
    for split in SPLITS:
        sub = os.path.join(folder, split)
        if os.path.isdir(sub):
            files += [f"{split}/{name}" for name in os.listdir(sub)
                      if name.endswith(".parquet") and not name.startswith((".", "_"))]
    return sorted(files)


def _le_bytes(values: np.ndarray) -> memoryview:
    """The array's values as little-endian bytes (no copy when they already are)."""
    return memoryview(np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))).cast("B")


def _hash_array(digest, arr) -> None:
    """Feed one decoded column (or a list column's values) to ``digest``: its type, its nulls, then
    its values (list lengths and the flattened values, string lengths and bytes, fixed-width
    values as little-endian bytes). Independent of how the file encoded or compressed them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    digest.update(f"{arr.type}|{len(arr)}|{arr.null_count}\0".encode())
    if arr.null_count:
        digest.update(np.packbits(arr.is_null().to_numpy(zero_copy_only=False)).tobytes())
    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False)
        digest.update(_le_bytes(lengths.astype(np.int64, copy=False)))
        _hash_array(digest, pc.list_flatten(arr))
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        values = arr.cast(pa.large_binary())
        if values.null_count:
            values = values.fill_null(b"")
        _, offsets, data = values.buffers()
        offs = np.frombuffer(offsets, dtype="<i8", count=len(values) + 1, offset=values.offset * 8)
        digest.update(_le_bytes(np.diff(offs)))
        if data is not None and len(values):
            digest.update(memoryview(data)[int(offs[0]):int(offs[-1])])
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        if arr.null_count:
            arr = arr.fill_null(False if pa.types.is_boolean(t) else 0)
        digest.update(_le_bytes(arr.to_numpy(zero_copy_only=False)))
    else:  # not in shards; still decoded values, not bytes
        digest.update(repr(arr.to_pylist()).encode())


def content_hash(shards_path: str) -> str:
    """sha256 over the rows of the shard files, independent of how Parquet encoded them: files
    sorted by relative path; for each, its relative path and a NUL byte, then per row group its row
    count and per column its name and decoded values (:func:`_hash_array`). A rerun that writes the
    same rows in the same files and row groups gives the same hash (Spark's writer may order column
    encodings differently from run to run, so the file bytes may differ). A file that cannot be
    read as Parquet contributes its bytes (so it still fails verification). Stage 2 records the
    hash in the manifest; readers recompute it to check."""
    import pyarrow.parquet as pq

    folder = _as_local_dir(shards_path)
    digest = hashlib.sha256()
    for rel in shard_files(folder):
        digest.update(rel.encode() + b"\0")
        path = os.path.join(folder, rel)
        try:
            pf = pq.ParquetFile(path)
            for i in range(pf.num_row_groups):
                table = pf.read_row_group(i)
                digest.update(f"row_group|{table.num_rows}\0".encode())
                for name, column in zip(table.column_names, table.columns):
                    digest.update(f"column|{name}\0".encode())
                    _hash_array(digest, column)
        except (OSError, ValueError) as exc:   # pyarrow.ArrowInvalid is a ValueError
            digest.update(f"unreadable|{type(exc).__name__}\0".encode())
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(block)
    return "sha256:" + digest.hexdigest()


def verify_manifest(output: str, run_date: str | None = None,
                    manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Recompute the shards' content hash and compare it with the manifest's; return the manifest.

    ``output`` is OUT (with ``run_date``) or, with ``run_date=None``, the shard folder itself.
    """
    folder = shards_dir(output, run_date) if run_date is not None else _as_local_dir(output)
    manifest = manifest if manifest is not None else load_manifest_at(folder)
    if fs.is_local(folder):
        got = content_hash(folder)
    else:  # hash a local copy: the same bytes, read once
        import tempfile

        with tempfile.TemporaryDirectory(prefix="srgnn-shards-") as tmp:
            for split in SPLITS:
                if fs.exists(f"{folder}/{split}"):
                    fs.fetch_dir(f"{folder}/{split}", os.path.join(tmp, split))
            got = content_hash(tmp)
    if got != manifest.get("content_hash"):
        raise InputError(f"shards under {folder} do not match their manifest: content hash {got}, "
                         f"manifest says {manifest.get('content_hash')} (files changed after stage 2 "
                         f"wrote them; rerun jobs/build_graph.py)")
    return manifest


# ---- counts per rank ----------------------------------------------------------------------------
def shard_examples(manifest: dict[str, Any], split: str, shard_count: int) -> list[int]:
    """Examples each of ``shard_count`` ranks reads from ``split`` (Petastorm: row group i -> i % W)."""
    _check_split(split)
    rows = manifest["splits"][split]["row_group_rows"]
    counts = [0] * shard_count
    for i, n in enumerate(rows):
        counts[i % shard_count] += int(n)
    return counts


def examples_count(manifest: dict[str, Any], split: str, cur_shard: int = 0, shard_count: int = 1) -> int:
    """Examples rank ``cur_shard`` of ``shard_count`` reads from ``split`` in one epoch."""
    return shard_examples(manifest, split, shard_count)[cur_shard]


# ---- batches ------------------------------------------------------------------------------------
def _epoch_seed(seed: int, epoch: int) -> int:
    """A Petastorm seed per (seed, epoch): a new row-group order every epoch, reproducibly."""
    digest = hashlib.sha256(f"{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _list_column(column, width: int, dtype) -> np.ndarray:
    """A fixed-length list column as a [rows, width] array, without a Python loop over rows."""
    import pyarrow as pa

    chunks = []
    for chunk in (column.chunks if isinstance(column, pa.ChunkedArray) else [column]):
        flat = chunk.flatten().to_numpy(zero_copy_only=False)
        if flat.size != len(chunk) * width:
            raise InputError(f"shard column '{column}' has lists that are not all {width} long")
        chunks.append(flat.reshape(len(chunk), width))
    out = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    out = out.astype(dtype, copy=False)
    return out if out.flags.writeable else out.copy()  # torch wants writable memory


def _petastorm_filesystem(folder: str):
    """None for local folders (Petastorm opens ``file://`` URLs itself); for object stores, the
    fsspec filesystem of ``folder`` behind the pyarrow interface Petastorm 0.12 reads through.

    Petastorm's own s3 support hands s3fs to pyarrow's new dataset API, which rejects the options
    Petastorm passes, and pyarrow's ``S3FSWrapper`` lists through s3fs' (now asynchronous) private
    ``_ls``; :class:`_PetastormFS` lists through the public API instead.
    """
    if fs.is_local(folder):
        return None
    import posixpath

    import pyarrow.filesystem as legacy_fs

    class _PetastormFS(legacy_fs.S3FSWrapper):
        def isdir(self, path):
            return self.fs.isdir(path)

        def isfile(self, path):
            return self.fs.isfile(path)

        def walk(self, path, refresh=False):
            path = path.rstrip("/")
            dirs, files = [], []
            for entry in self.fs.ls(path, detail=True, refresh=True):  # never a cached listing
                name = posixpath.basename(entry["name"].rstrip("/"))
                (dirs if entry["type"] == "directory" else files).append(name)
            yield path, sorted(dirs), sorted(files)
            for name in sorted(dirs):
                yield from self.walk(f"{path}/{name}", refresh=refresh)

    with warnings.catch_warnings():  # pyarrow.filesystem is deprecated, as is all Petastorm 0.12 uses
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return _PetastormFS(fs.fsspec_filesystem(folder)[0])


def _make_reader(url: str, cur_shard: int, shard_count: int, seed: int, shuffle_row_groups: bool,
                 shuffle_rows: bool, reader_pool_type: str, workers_count: int,
                 results_queue_size: int, width: int, fast_lists: bool, filesystem=None):
    """``petastorm.make_batch_reader`` over one split. With ``fast_lists`` its results skip
    Petastorm's per-row ``np.vstack`` of list columns: they come out as [rows, L] arrays straight
    from Arrow (the only change to Petastorm's behaviour; see bench/read_throughput.py).
    ``filesystem``: :func:`_petastorm_filesystem` for object stores, None for ``file://`` URLs."""
    # Petastorm 0.12 drives pyarrow's legacy dataset API: one FutureWarning per call, nothing to act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\..*)?$")
    from petastorm import make_batch_reader
    from petastorm.arrow_reader_worker import ArrowReaderWorkerResultsQueueReader
    from petastorm.workers_pool import EmptyResultError

    class FastListResults(ArrowReaderWorkerResultsQueueReader):
        def read_next(self, workers_pool, schema, ngram):
            try:
                table = workers_pool.get_results()
            except EmptyResultError:
                raise StopIteration
            cols = {}
            for name in table.column_names:
                col = table.column(name)
                if name in ("items", "ngc_w"):
                    cols[name] = _list_column(col, width, np.int64 if name == "items" else np.float32)
                else:
                    cols[name] = col.to_numpy()
            return schema.make_namedtuple(**cols)

    reader = make_batch_reader(
        url, schema_fields=[f"^{c}$" for c in COLUMNS], reader_pool_type=reader_pool_type,
        workers_count=workers_count, results_queue_size=results_queue_size, seed=seed,
        shuffle_rows=shuffle_rows, shuffle_row_groups=shuffle_row_groups, num_epochs=1,
        cur_shard=cur_shard, shard_count=shard_count, filesystem=filesystem)
    if fast_lists:
        reader._results_queue_reader = FastListResults()
    return reader


def iter_batches(output_or_url: str, split: str, batch_size: int, cur_shard: int = 0, shard_count: int = 1,
                 seed: int = 0, epoch: int = 0, shuffle_row_groups: bool = True, device=None, *,
                 run_date: str | None = None, shuffle_rows: bool = False, reader_pool_type: str = "thread",
                 workers_count: int = 4, results_queue_size: int = 8, with_ngc: bool = True,
                 drop_last: bool = False, fast_lists: bool = True) -> Iterator["Batch"]:
    """Batches of exactly ``batch_size`` examples (the last one smaller unless ``drop_last``) of one
    split, for rank ``cur_shard`` of ``shard_count``, in one pass (one epoch).

    ``output_or_url``: the shard folder ``OUT/shards/run_date=D`` (path, file:// URL or object-store
    URI), or OUT itself when ``run_date`` is given. Tensors are int64 (items, lengths, targets) and float32
    (ngc_w, or None when ``with_ngc`` is False), moved to ``device`` if one is given.
    """
    import torch

    from srgnn.data import Batch

    _check_split(split)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= cur_shard < shard_count:
        raise InputError(f"cur_shard {cur_shard} is not in [0, shard_count={shard_count})")
    folder = shards_dir(output_or_url, run_date) if run_date is not None else _as_local_dir(output_or_url)
    manifest = load_manifest_at(folder)
    info = manifest["splits"][split]
    if info["examples"] == 0:
        return
    if info["row_groups"] < shard_count:
        raise InputError(f"split '{split}' under {folder} has {info['row_groups']} row groups, fewer than "
                         f"shard_count={shard_count}; rerun stage 2 with --world-size {shard_count} or more")
    width = int(manifest["max_len"])

    def emit(items, lengths, targets, ngc_w):
        batch = Batch(items=torch.from_numpy(items), lengths=torch.from_numpy(lengths),
                      targets=torch.from_numpy(targets),
                      ngc_w=torch.from_numpy(ngc_w) if with_ngc else None)
        return batch if device is None else batch.to(device, non_blocking=True)

    pending: list[tuple[np.ndarray, ...]] = []  # leftover rows (< batch_size) from the last row group
    # Petastorm also shuffles the row-group order whenever it gets a seed: no seed = path order
    petastorm_seed = _epoch_seed(seed, epoch) if (shuffle_row_groups or shuffle_rows) else None
    reader = _make_reader(file_url(f"{folder}/{split}"), cur_shard, shard_count, petastorm_seed,
                          shuffle_row_groups, shuffle_rows, reader_pool_type, workers_count,
                          results_queue_size, width, fast_lists, _petastorm_filesystem(folder))
    with reader:
        for group in reader:
            arrays = (np.asarray(group.items, dtype=np.int64), group.length.astype(np.int64),
                      group.target.astype(np.int64), np.asarray(group.ngc_w, dtype=np.float32))
            if pending:
                arrays = tuple(np.concatenate([p[i] for p in pending] + [arrays[i]]) for i in range(4))
                pending = []
            n = len(arrays[2])
            full = n - n % batch_size
            for start in range(0, full, batch_size):
                yield emit(*(a[start:start + batch_size] for a in arrays))
            if full < n:
                pending.append(tuple(a[full:] for a in arrays))
    if pending and not drop_last:
        yield emit(*pending[0])


def read_split(output_or_url: str, split: str, *, run_date: str | None = None,
               columns: Sequence[str] = ("items", "length", "target", "ngc_w", "session_id")) -> dict[str, np.ndarray]:
    """A whole split in memory (tests, scoring small splits), in file order, with pyarrow only."""
    import pyarrow.parquet as pq

    _check_split(split)
    folder = shards_dir(output_or_url, run_date) if run_date is not None else _as_local_dir(output_or_url)
    manifest = load_manifest_at(folder)
    width = int(manifest["max_len"])
    files = split_files(folder, split)
    if not files:
        return {c: np.zeros((0, width) if c in ("items", "ngc_w") else 0) for c in columns}
    if fs.is_local(folder):
        table = pq.ParquetDataset([os.path.join(folder, f) for f in files]).read(columns=list(columns))
    else:
        arrow_fs, inner = fs.arrow_filesystem(folder)
        table = pq.ParquetDataset([f"{inner}/{f}" for f in files], filesystem=arrow_fs).read(columns=list(columns))
    out = {}
    for c in columns:
        col = table.column(c)
        if c in ("items", "ngc_w"):
            out[c] = _list_column(col, width, np.int64 if c == "items" else np.float32)
        else:
            out[c] = col.to_numpy()
    return out
