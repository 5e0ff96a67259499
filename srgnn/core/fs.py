"""Filesystem access for everything the pipeline writes outside Spark: JSON side files, manifests,
checkpoints, model exports, reports.

Local paths (and ``file:`` URIs, and ``dbfs:/`` through Databricks' ``/dbfs`` mount) go through the
operating system; other URIs (``s3://``/``s3a://``, ``gs://``, ``abfss://``, ``hdfs://`` ...) through fsspec
(s3fs reads the endpoint and credentials from the standard ``AWS_*`` variables, ``AWS_ENDPOINT_URL``
included), and for pyarrow readers through :func:`arrow_filesystem`.

Object stores cannot rename a folder atomically. A folder is published there by uploading every
file but a marker file, then the marker last (:func:`publish_dir`): a reader that finds the new
marker finds the new files. The model export's marker is ``config.json``, which carries the weights'
sha256, so a reader that raced a writer fails the hash check instead of scoring with mixed files.

Atomic replacement for readers: a file is written to a hidden temporary name in its folder and
renamed over the target; a folder is written to a hidden staging folder beside it and swapped in by
two renames. Staging and trash names start with ``_`` and hold no ``=``, so Spark's and pandas'
partition discovery never takes them for a partition.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import Any, Callable

from srgnn.core.errors import InputError

STAGING_PREFIX = "_staging-"
TRASH_PREFIX = "_trash-"


def token() -> str:
    return uuid.uuid4().hex[:12]


def is_local(path: str) -> bool:
    """True for plain paths, ``file:`` URIs and ``dbfs:/`` (the ``/dbfs`` mount)."""
    return "://" not in path or path.startswith(("file:", "dbfs:"))


def local_path(path: str) -> str:
    """A filesystem path for a local location: strips ``file:``, maps ``dbfs:/`` to ``/dbfs``."""
    if path.startswith("file://"):
        return path[len("file://"):]
    if path.startswith("file:"):
        return path[len("file:"):]
    if path.startswith("dbfs:/"):
        return "/dbfs/" + path[len("dbfs:/"):].lstrip("/")
    return path


def file_url(path: str) -> str:
    """URL form for Petastorm/pyarrow readers: ``file:///abs/path`` for local paths."""
    if "://" in path:
        return path
    if path.startswith("file:"):
        return "file://" + path[len("file:"):]
    return "file://" + os.path.abspath(local_path(path))


def _fsspec(path: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(path)
    except (ImportError, ValueError) as exc:
        from srgnn.core.errors import EnvironmentProblem

        raise EnvironmentProblem(f"cannot open {path}: {exc} (object stores need their fsspec "
                                 f"package, e.g. `pip install 'srgnn-pipeline[s3]'` for s3://)") from None


# ---- reading -----------------------------------------------------------------------------------
def exists(path: str) -> bool:
    if is_local(path):
        return os.path.exists(local_path(path))
    fs, rel = _fsspec(path)
    return fs.exists(rel)


def isdir(path: str) -> bool:
    if is_local(path):
        return os.path.isdir(local_path(path))
    fs, rel = _fsspec(path)
    return fs.isdir(rel)


def read_bytes(path: str) -> bytes:
    try:
        if is_local(path):
            with open(local_path(path), "rb") as fh:
                return fh.read()
        fs, rel = _fsspec(path)
        return fs.cat_file(rel)
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder where a file was expected") from None


def read_json(path: str) -> Any:
    data = read_bytes(path)
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc})") from None


# ---- writing -----------------------------------------------------------------------------------
def makedirs(path: str) -> None:
    if is_local(path):
        target = local_path(path)
        if os.path.exists(target) and not os.path.isdir(target):
            raise InputError(f"{path} is a file where a folder belongs; move it away")
        try:
            os.makedirs(target, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise InputError(f"cannot create folder {path}: a file is in the way") from None
        return
    fs, rel = _fsspec(path)
    fs.makedirs(rel, exist_ok=True)


def write_bytes_atomic(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` so that readers see the old content or the new, never a part."""
    if not is_local(path):
        fs, rel = _fsspec(path)
        fs.pipe_file(rel, data)  # object stores publish a whole object on completion
        return path
    return write_file_atomic(path, lambda fh: fh.write(data))


def file_sha256(path: str) -> str:
    """The sha256 (hex) of a file's bytes, read in blocks."""
    import hashlib

    digest = hashlib.sha256()
    if not is_local(path):
        digest.update(read_bytes(path))
        return digest.hexdigest()
    with open(local_path(path), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: str, obj: Any) -> str:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    return write_bytes_atomic(path, text.encode())


def write_file_atomic(path: str, write: Callable[[Any], None]) -> str:
    """Call ``write(binary_file_handle)`` for a temporary file, then rename it onto ``path``."""
    if not is_local(path):
        import io

        buf = io.BytesIO()
        write(buf)
        fs, rel = _fsspec(path)
        fs.pipe_file(rel, buf.getvalue())  # object stores publish a whole object on completion
        return path
    target = local_path(path)
    folder = os.path.dirname(target) or "."
    makedirs(folder)
    tmp = os.path.join(folder, f".{os.path.basename(target)}.tmp-{token()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def replace_dir_atomic(final: str, write: Callable[[str], None]) -> str:
    """Run ``write(staging_dir)`` for a local staging folder beside ``final``, then swap it in.

    A reader of ``final`` sees the old folder or the new one. On failure the staging folder is
    removed and ``final`` is left as it was.
    """
    target = os.path.abspath(local_path(final).rstrip("/"))
    parent = os.path.dirname(target)
    makedirs(parent)
    tok = token()
    staging = os.path.join(parent, f"{STAGING_PREFIX}{tok}")
    trash = os.path.join(parent, f"{TRASH_PREFIX}{tok}")
    os.makedirs(staging)
    try:
        write(staging)
        had_old = os.path.exists(target)
        if had_old:
            os.rename(target, trash)
        try:
            os.rename(staging, target)
        except BaseException:
            if had_old:
                os.rename(trash, target)
            raise
        if had_old:
            shutil.rmtree(trash, ignore_errors=True)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return target


# ---- folders between local disks and any root ---------------------------------------------------
def listdir(path: str) -> list[str]:
    """Names in a folder (files and sub-folders), sorted; [] if it does not exist."""
    if is_local(path):
        target = local_path(path)
        return sorted(os.listdir(target)) if os.path.isdir(target) else []
    fs, rel = _fsspec(path)
    if not fs.exists(rel):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(rel, detail=False))


def remove_tree(path: str) -> None:
    if is_local(path):
        target = local_path(path)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target, ignore_errors=True)
        elif os.path.lexists(target):
            os.unlink(target)
        return
    fs, rel = _fsspec(path)
    if fs.exists(rel):
        fs.rm(rel, recursive=True)


def rename(src: str, dst: str) -> None:
    """Rename a file or folder: atomic on local disks; a copy then a delete on object stores."""
    if is_local(src) and is_local(dst):
        os.rename(local_path(src), local_path(dst))
        return
    fs, rel_src = _fsspec(src)
    _, rel_dst = _fsspec(dst)
    rel_src, rel_dst = rel_src.rstrip("/"), rel_dst.rstrip("/")
    if not fs.isdir(rel_src):
        fs.copy(rel_src, rel_dst)
    else:
        for path in fs.find(rel_src):
            fs.copy(path, rel_dst + path[len(rel_src):])
    fs.rm(rel_src, recursive=True)


def _local_files(folder: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), folder)
                  for d, _, files in os.walk(folder) for f in files)


def publish_dir(local_dir: str, final: str, marker: str | None = None) -> str:
    """Make ``final`` hold exactly the files of the local folder ``local_dir``.

    Local ``final``: the folder is swapped in by renames (:func:`replace_dir_atomic`). Object
    stores: every file is uploaded, ``marker`` (a relative name) last, then files of an older
    version that the new one lacks are deleted.
    """
    if is_local(final):
        return replace_dir_atomic(final, lambda staging: shutil.copytree(local_dir, staging, dirs_exist_ok=True))
    fs, rel = _fsspec(final)
    rel = rel.rstrip("/")
    files = _local_files(local_dir)
    ordered = [f for f in files if f != marker] + ([marker] if marker in files else [])
    for name in ordered:
        fs.put_file(os.path.join(local_dir, name), f"{rel}/{name}")
    if fs.exists(rel):
        new = set(ordered)
        for path in fs.find(rel):
            if path[len(rel) + 1:] not in new:
                fs.rm_file(path)
    return final


def fetch_dir(path: str, local_dir: str) -> str:
    """A local folder with the files of ``path``: ``path`` itself when local, else a copy."""
    if is_local(path):
        return local_path(path)
    fs, rel = _fsspec(path)
    rel = rel.rstrip("/")
    if not fs.exists(rel):
        raise InputError(f"folder not found: {path}")
    for remote in fs.find(rel):
        dest = os.path.join(local_dir, remote[len(rel) + 1:])
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        fs.get_file(remote, dest)
    return local_dir


def fsspec_filesystem(path: str):
    """``(fsspec.AbstractFileSystem, path inside it)`` of an object-store URI, for readers that take
    an fsspec filesystem (Petastorm, through :mod:`srgnn.reader`)."""
    return _fsspec(path)


def arrow_filesystem(path: str):
    """``(pyarrow.fs.FileSystem, path inside it)`` for pyarrow/Parquet readers of any root."""
    import pyarrow.fs as pafs

    if is_local(path):
        return pafs.LocalFileSystem(), os.path.abspath(local_path(path))
    if path.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs: dict[str, Any] = {}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        if os.environ.get("AWS_ACCESS_KEY_ID"):
            kwargs.update(access_key=os.environ["AWS_ACCESS_KEY_ID"],
                          secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
                          session_token=os.environ.get("AWS_SESSION_TOKEN"))
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), path.split("://", 1)[1]
    fs, rel = _fsspec(path)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), rel
