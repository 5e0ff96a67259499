"""Stage 2: the global item-transition graph (NGC weights) and the training shards Petastorm reads.

Reads stage 1's ``sessions`` and ``item_vocab`` tables and its ``build_sessions.json`` stats for one
run date, and writes (see docs/stage2.md and docs/contracts.md):

- ``OUT/item_graph/run_date=D/``: ``src_idx``, ``dst_idx``, ``count`` (times ``src`` is directly
  followed by ``dst`` in the training sessions, repeats counted), ``weight`` = count / out-count of
  ``src`` (the NGC weight), ``in_weight`` = count / in-count of ``dst``. Self-loops (a repeated
  click ``a -> a``) are ordinary edges by default (``--self-loops drop`` leaves them out).
- ``OUT/shards/run_date=D/{train,valid,test}/part-NNNNN.parquet`` and ``_manifest.json``: every
  prefix of every session as one example (``items`` the last L clicks, right-padded, ``length``,
  ``target``, ``ngc_w``, ``session_id``), ``k * world_size`` files of equal size (+-1 row), each one
  row group, rows in a seeded shuffled order. The whole folder is swapped in atomically.

Order of the steps (each a pure DataFrame -> DataFrame function below):

1. ``recent_fraction_sessions``: stage 1's ``fraction`` keeps the last ``int(n * fraction)`` training
   pairs in the official order (sessions by ``session_order``, longest prefix first), i.e. the
   official ``tr_seqs[-split:]``; a session whose pairs are cut part-way keeps its first clicks.
2. ``sessions_with_role``: ``train`` sessions whose ``xxhash64(session_id)`` falls in the first
   ``valid_share`` of the hash range become ``valid`` (whole sessions, so never on both sides).
3. ``session_transitions`` -> ``item_graph`` (from ``train`` sessions only).
4. ``sessions_with_ngc_weights``: each session's items and, once per session, the weight of the
   transition into each position; every example then slices the same window out of both arrays.
5. ``session_offsets`` / ``session_row_groups`` / ``padded_examples``: sessions in a seeded hash
   order get consecutive example numbers g; example g goes to row group ``g * P // N``, so the P
   row groups hold ``floor(N/P)`` or ``ceil(N/P)`` examples. Sessions (not padded examples) are
   what is shuffled across the cluster; the examples are exploded and padded after the shuffle.

Modules: ``config`` (:class:`GraphConfig`), ``transforms`` (the pure DataFrame transforms above),
``shards`` (row group counts, the shard files and the manifest), ``job`` (:func:`build_graph`:
read, check, transform, write).
"""
from pipelines.graph.config import GraphConfig
from pipelines.graph.job import build_graph

__all__ = ["GraphConfig", "build_graph"]
