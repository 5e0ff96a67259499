"""Thin-job helper: run a library function and turn a PipelineError into one clear line."""
from __future__ import annotations

import sys
from typing import Callable

from srgnn.core.errors import PipelineError


def run_job(main: Callable[[], object]) -> None:
    """Call ``main()``; on PipelineError print ``error: ...`` on stderr and exit with status 2."""
    try:
        main()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
