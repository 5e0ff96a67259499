"""Run-level commits: a stage publishes all its outputs for a run date at once, or none of them.

A stage writes every output (table partitions, folders, side files) to a hidden staging location
beside its final place, then publishes them together::

    with RunCommit(layout, "build_sessions", run_date) as commit:   # lock, then recover / sweep
        commit.add(final_path, write=lambda staging: ...)          # writes into staging now
        commit.add_json(layout.stats(run_date, "build_sessions.json"), stats)
    # leaving the block without an error publishes; with an error, removes the staging copies

Publishing first writes a journal ``OUT/_commits/<stage>-<run_date>.json`` listing every
(staging -> final) move, then makes the moves (old folder aside to a trash name, staging onto the
final name), then removes the trash and the journal. A process killed at any point leaves either no
journal (nothing was published: the old outputs stand, the staging copies are swept by the next run)
or a journal whose moves the next run of the same stage and date completes first (roll forward): all
staging copies were complete before the journal was written. So readers see, per output, the old
version or the new one, and after the next run, all of one run.

Staging and trash names are ``_staging-<stage>-<run_date>-<token>`` / ``_trash-...``: they start
with ``_`` and hold no ``=``, so Spark and pandas never take them for partitions.

One writer per (OUT, stage, run date): :class:`RunLock` (see there) is taken before anything else.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from srgnn.core import faults
from srgnn.core.errors import PipelineError
from srgnn.core import fs
from srgnn.core.fs import is_local, local_path, token, write_bytes_atomic
from srgnn.core.layout import Layout
from srgnn.core.log import get_logger

log = get_logger(__name__)


class LockHeld(PipelineError):
    """Another run holds the lock of this (OUT, stage, run date)."""


def _holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _holder_is_gone(held: dict[str, Any]) -> bool:
    """True when a lease's holder ran on this host and its process no longer exists (a killed run)."""
    if held.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(held["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, TypeError, ValueError, OverflowError):
        return False
    return False


class RunLock:
    """An exclusive lock on ``OUT/_locks/<stage>-<run_date>.lock``.

    Local roots (and ``dbfs:/`` through its mount): ``flock`` on the lock file, which the kernel
    releases when the holder dies (kill -9 included), so a dead holder's lock is simply free. The
    file names the holder (host, pid, start time) for the error a second run prints.
    """

    def __init__(self, layout: Layout, stage: str, run_date: str):
        self.path = layout.lock(stage, run_date)
        self.stage, self.run_date = stage, run_date
        self._fh = None

    def acquire(self) -> "RunLock":
        if not is_local(self.path):
            return self._acquire_lease()
        path = local_path(self.path)
        self._made = [d for d in (os.path.dirname(os.path.dirname(path)), os.path.dirname(path))
                      if not os.path.isdir(d)]   # removed again on release when left empty
        os.makedirs(os.path.dirname(path), exist_ok=True)
        while True:
            fh = open(path, "a+")
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                text = fh.read().strip()
                fh.close()
                try:
                    h = json.loads(text)
                    who = f"host {h['host']} pid {h['pid']} since {h['started']}"
                except (ValueError, KeyError, TypeError):
                    who = "another process"
                raise LockHeld(f"{self.stage} for run_date={self.run_date} is already running ({who}); "
                               f"lock {self.path}") from None
            try:  # the holder before us removes the file on release: lock the file that is there now
                if os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            fh.close()
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(_holder()) + "\n")
        fh.flush()
        self._fh = fh
        return self

    # Object stores have no flock: a lease object naming the holder and its expiry, written when
    # absent or expired and read back to confirm (two writers racing within one round trip can both
    # win; the stages' content hashes then catch a mixed result). A lease whose holder ran on this
    # host and is dead (kill -9) is free at once, so a killed run can be resumed right away.
    LEASE_S = 6 * 3600

    def _acquire_lease(self) -> "RunLock":
        now = time.time()
        if fs.exists(self.path):
            try:
                held = json.loads(fs.read_bytes(self.path))
            except (ValueError, PipelineError):
                held = {}
            if held.get("expires", 0) > now and _holder_is_gone(held):
                log.warning("taking over lease %s: its holder (host %s pid %s) is no longer running",
                            self.path, held.get("host"), held.get("pid"))
            elif held.get("expires", 0) > now:
                raise LockHeld(f"{self.stage} for run_date={self.run_date} is already running (host "
                               f"{held.get('host')} pid {held.get('pid')} since {held.get('started')}); "
                               f"lease {self.path} until {time.strftime('%H:%M:%SZ', time.gmtime(held['expires']))}")
        mine = {**_holder(), "token": token(), "expires": now + self.LEASE_S}
        fs.write_bytes_atomic(self.path, json.dumps(mine).encode())
        if json.loads(fs.read_bytes(self.path)).get("token") != mine["token"]:
            raise LockHeld(f"{self.stage} for run_date={self.run_date}: another run took the lease {self.path}")
        self._lease = mine["token"]
        return self

    def release(self) -> None:
        if getattr(self, "_lease", None):
            try:
                if json.loads(fs.read_bytes(self.path)).get("token") == self._lease:
                    fs.remove_tree(self.path)
            finally:
                self._lease = None
        if self._fh is not None:
            fh, self._fh = self._fh, None
            path = local_path(self.path)
            os.unlink(path)   # before unlocking: a waiter that opened it re-checks the inode
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            fh.close()
            for folder in reversed(getattr(self, "_made", [])):   # what acquire created, if empty
                try:
                    os.rmdir(folder)
                except OSError:
                    pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@dataclass
class _Move:
    staging: str
    final: str

    @property
    def trash(self) -> str:
        parent, name = self.staging.rsplit("/", 1)
        return f"{parent}/_trash-{name[len('_staging-'):]}"


def _remove_if_empty(folder: str) -> None:
    if is_local(folder):
        try:
            os.rmdir(local_path(folder))
        except OSError:
            pass


def _apply(move: _Move) -> None:
    """Put ``move.staging`` in place of ``move.final``; safe to repeat after a kill at any point."""
    if fs.exists(move.staging):
        if fs.isdir(move.staging):
            if fs.exists(move.final):
                if fs.exists(move.trash):
                    fs.remove_tree(move.final)
                else:
                    fs.rename(move.final, move.trash)
            fs.rename(move.staging, move.final)
        elif is_local(move.final):
            os.replace(local_path(move.staging), local_path(move.final))
        else:
            fs.rename(move.staging, move.final)
    fs.remove_tree(move.trash)


@dataclass
class RunCommit:
    """Stage outputs of one (stage, run date) and publish them together (see the module doc)."""

    layout: Layout
    stage: str
    run_date: str
    moves: list[_Move] = field(default_factory=list)
    _lock: RunLock | None = None
    _after: list[Callable[[], None]] = field(default_factory=list)

    # ---- staging -----------------------------------------------------------------------------
    def staging_for(self, final: str, suffix: str = "") -> str:
        """A fresh staging path beside ``final`` (registered for publishing)."""
        parent = final.rstrip("/").rsplit("/", 1)[0]
        staging = f"{parent}/_staging-{self.stage}-{self.run_date}-{token()}{suffix}"
        self.moves.append(_Move(staging, final.rstrip("/")))
        return staging

    def add(self, final: str, write: Callable[[str], None]) -> str:
        """``write(staging)`` now; ``final`` becomes that staging folder when the commit publishes."""
        staging = self.staging_for(final)
        fs.makedirs(staging.rsplit("/", 1)[0])
        write(staging)
        return staging

    def add_bytes(self, final: str, data: bytes) -> str:
        """A file whose content is ``data``, published at ``final``."""
        staging = self.staging_for(final, os.path.splitext(final)[1])
        write_bytes_atomic(staging, data)
        return staging

    def add_json(self, final: str, obj: Any) -> str:
        return self.add_bytes(final, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())

    def after_publish(self, action: Callable[[], None]) -> None:
        """Run ``action`` once everything is published (e.g. a Delta write, which is atomic alone)."""
        self._after.append(action)

    # ---- publishing --------------------------------------------------------------------------
    def journal_path(self) -> str:
        return self.layout.commit_journal(self.stage, self.run_date)

    def publish(self) -> None:
        faults.point(f"{self.stage}:before_publish")
        journal = {"stage": self.stage, "run_date": self.run_date, "holder": _holder(),
                   "moves": [{"staging": m.staging, "final": m.final} for m in self.moves]}
        write_bytes_atomic(self.journal_path(), (json.dumps(journal, indent=2) + "\n").encode())
        for i, move in enumerate(self.moves):
            faults.point(f"{self.stage}:publish:{i}")
            _apply(move)
        fs.remove_tree(self.journal_path())
        _remove_if_empty(self.journal_path().rsplit("/", 1)[0])
        faults.point(f"{self.stage}:after_publish")
        for action in self._after:
            action()
        log.info("%s run_date=%s: published %d outputs", self.stage, self.run_date, len(self.moves))
        self.moves = []

    def discard(self) -> None:
        for move in self.moves:
            fs.remove_tree(move.staging)
        self.moves = []

    # ---- recovery ----------------------------------------------------------------------------
    def recover(self) -> int:
        """Complete an interrupted publish of this (stage, run date), then sweep its staging and
        trash leftovers; returns the number of moves rolled forward."""
        path = self.journal_path()
        rolled = 0
        if fs.exists(path):
            journal = fs.read_json(path)
            for m in journal["moves"]:
                _apply(_Move(m["staging"], m["final"]))
                rolled += 1
            fs.remove_tree(path)
            log.warning("%s run_date=%s: completed an interrupted publish (%d outputs)",
                        self.stage, self.run_date, rolled)
        swept = sweep(self.layout, self.stage, self.run_date)
        if swept:
            log.info("%s run_date=%s: removed %d staging leftovers of an earlier run", self.stage,
                     self.run_date, swept)
        return rolled

    def __enter__(self) -> "RunCommit":
        self._lock = RunLock(self.layout, self.stage, self.run_date).acquire()
        try:
            self.recover()
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.publish()
            else:
                self.discard()
        finally:
            if self._lock is not None:
                self._lock.release()


def sweep(layout: Layout, stage: str, run_date: str) -> int:
    """Remove ``_staging-<stage>-<run_date>-*`` / ``_trash-...`` under OUT (tables, and the run
    date's partition folders, where side files live)."""
    prefixes = (f"_staging-{stage}-{run_date}-", f"_trash-{stage}-{run_date}-")
    removed = 0
    for table in fs.listdir(layout.root):
        if table.startswith(("_", ".")):
            continue
        for folder in (layout.table(table), layout.partition(table, run_date)):
            for name in fs.listdir(folder) if fs.isdir(folder) else []:
                if name.startswith(prefixes):
                    fs.remove_tree(f"{folder}/{name}")
                    removed += 1
    return removed


def complete_pending(layout: Layout, stages: tuple[str, ...] | list[str], run_date: str) -> None:
    """Before a stage reads what ``stages`` wrote for ``run_date``: complete their interrupted
    publishes (under their locks), so a reader never starts from half of a run. A stage that is
    running right now is an error naming it (wait for it, then retry)."""
    for stage in stages:
        if not fs.exists(layout.commit_journal(stage, run_date)):
            continue
        with RunLock(layout, stage, run_date):
            RunCommit(layout, stage, run_date).recover()
