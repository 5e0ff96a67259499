"""Thin-job helper: run a library function and turn an expected failure into one clear line.

Expected failures are the ones a user fixes without reading code: a :class:`PipelineError`
(bad input, option or environment), an operating-system error on a named path (no space left, a
file where a folder belongs, permissions), or an engine error that says the same (the Spark stages
register a translator for Spark's errors, see :func:`register_translator`). Each ends as one line
``error: ...`` on stderr and exit status 2; ``SRGNN_DEBUG=1`` prints the traceback too. Anything else
is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno
import os
import sys
import traceback
from typing import Callable

from srgnn.core.errors import PipelineError

# errno values that describe the environment rather than a bug
EXPECTED_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                   errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                   errno.ENOTDIR: "a file is where a folder belongs", errno.EISDIR: "a folder is where a file belongs",
                   errno.EEXIST: "a file is in the way", errno.EROFS: "read-only file system",
                   errno.ENOENT: "no such file or folder"}

_translators: list[Callable[[BaseException], str | None]] = []


def register_translator(fn: Callable[[BaseException], str | None]) -> None:
    """``fn(exc)`` returns one line for an expected failure, or None (not its kind)."""
    if fn not in _translators:
        _translators.append(fn)


def os_error_line(exc: BaseException) -> str | None:
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in EXPECTED_ERRNOS:
            where = " -> ".join(str(p) for p in (e.filename, e.filename2) if p)
            return f"{EXPECTED_ERRNOS[e.errno]}{': ' + where if where else ''} ({e.strerror or e})"
    return None


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


OBJECT_STORE_ERRORS = ("NoCredentialsError", "PartialCredentialsError", "EndpointConnectionError",
                       "InvalidAccessKeyId", "SignatureDoesNotMatch")


def object_store_line(exc: BaseException) -> str | None:
    """Missing or wrong object-store credentials, or an unreachable endpoint (boto's errors)."""
    for e in _chain(exc):
        if type(e).__name__ in OBJECT_STORE_ERRORS or any(k in str(e) for k in OBJECT_STORE_ERRORS[3:]):
            return (f"object store: {e} (credentials and endpoint come from the AWS_* variables, "
                    f"AWS_ENDPOINT_URL included)")
    return None


def describe(exc: BaseException) -> str | None:
    """The one line for an expected failure, or None for a bug."""
    for e in _chain(exc):
        if isinstance(e, PipelineError):
            return str(e)
    for fn in [os_error_line, object_store_line, *_translators]:
        line = fn(exc)
        if line:
            return line
    return None


def run_job(main: Callable[[], object]) -> None:
    """Call ``main()``; on an expected failure print ``error: ...`` on stderr and exit with status 2."""
    try:
        main()
    except Exception as exc:  # noqa: BLE001 - sorted into expected (one line) and bugs (re-raised)
        line = describe(exc)
        if line is None:
            raise
        if os.environ.get("SRGNN_DEBUG") == "1":
            traceback.print_exc()
        print(f"error: {' '.join(line.split())}", file=sys.stderr, flush=True)
        sys.exit(2)
