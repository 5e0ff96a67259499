"""Process hygiene for launched workers.

torchrun starts its workers in sessions of their own, so a ``kill -9`` of the launcher's process group
(what Airflow and Databricks do to a task they stop) would leave the workers training on. A worker
that calls :func:`die_with_parent` is killed by the kernel when its parent process dies.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux); True if set."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)
    return True


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ
