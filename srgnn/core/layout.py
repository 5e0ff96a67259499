"""The ``OUT`` layout: every path under the output root is built here and nowhere else.

``OUT/<table>/run_date=D/`` for the tables (see :mod:`srgnn.core.contracts`), and beside them::

    OUT/shards/run_date=D/{train,valid,test}/ + _manifest.json     stage 2
    OUT/checkpoints/run_date=D/                                     stage 3
    OUT/models/run_date=D/{model.safetensors,config.json,...}       stage 3
    OUT/mlruns/                                                     stage 3 (default MLflow store)
    OUT/stats/run_date=D/<stage>.json                               every stage
    OUT/reports/run_date=D/                                         evaluation
    OUT/_locks/, OUT/_commits/                                      run control (srgnn.core.commit)

The root may be a local path (made absolute) or a URI (``file:``, ``dbfs:/``, ``s3://`` ...).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from srgnn.core import contracts as C
from srgnn.core.dates import check_run_date
from srgnn.core.errors import InputError


def normalize_root(root: str) -> str:
    """Absolute local path for scheme-less roots; URIs (dbfs:/, s3://, file:/...) unchanged."""
    if "://" in root or root.startswith(("dbfs:", "file:")):
        return root.rstrip("/")
    return os.path.abspath(root)


def partition_name(run_date: str) -> str:
    return f"{C.PARTITION_COLUMN}={run_date}"


@dataclass(frozen=True)
class Layout:
    """Paths under one ``OUT`` root."""

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", normalize_root(self.root))

    # ---- tables --------------------------------------------------------------------------------
    def table(self, name: str) -> str:
        return f"{self.root}/{name}"

    def partition(self, table: str, run_date: str) -> str:
        return f"{self.table(table)}/{partition_name(check_run_date(run_date))}"

    # ---- folders that are not tables -----------------------------------------------------------
    def shards(self, run_date: str) -> str:
        return self.partition("shards", run_date)

    def shard_split(self, run_date: str, split: str) -> str:
        if split not in C.SPLITS:
            raise InputError(f"unknown split {split!r}; expected one of {list(C.SPLITS)}")
        return f"{self.shards(run_date)}/{split}"

    def manifest(self, run_date: str) -> str:
        return f"{self.shards(run_date)}/{C.MANIFEST_NAME}"

    def checkpoints(self, run_date: str) -> str:
        return self.partition("checkpoints", run_date)

    def models_root(self) -> str:
        return self.table("models")

    def model(self, run_date: str) -> str:
        return self.partition("models", run_date)

    def mlruns(self) -> str:
        return f"{self.root}/mlruns"

    def stats(self, run_date: str, name: str) -> str:
        """``OUT/stats/run_date=D/<name>`` (``name`` such as ``build_sessions.json``)."""
        return f"{self.partition('stats', run_date)}/{name}"

    def reports(self, run_date: str) -> str:
        return self.partition("reports", run_date)

    def report(self, run_date: str, name: str) -> str:
        return f"{self.reports(run_date)}/{name}"

    # ---- run control (names start with "_": never read as tables) ---------------------------
    def lock(self, stage: str, run_date: str) -> str:
        return f"{self.root}/_locks/{stage}-{check_run_date(run_date)}.lock"

    def commit_journal(self, stage: str, run_date: str) -> str:
        return f"{self.root}/_commits/{stage}-{check_run_date(run_date)}.json"
