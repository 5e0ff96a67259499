"""A test-only hook that kills the process at a named write step (the fault-matrix tests).

``SRGNN_KILL_AT=<point>`` (e.g. ``build_sessions:publish:1``) makes :func:`point` send SIGKILL to the
running process when it reaches that point: nothing is cleaned up, exactly as ``kill -9`` would leave
it. Unset (always, outside tests), :func:`point` does nothing.
"""
from __future__ import annotations

import os
import signal

ENV = "SRGNN_KILL_AT"


def point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
