"""Stage 1: sessionize click logs exactly as the official SR-GNN ``datasets/preprocess.py`` does.

The official semantics (CRIPAC-DIG/SR-GNN), reproduced here with Spark, in this order:

1. rows in file order; a session's clicks are its rows (diginetica: stably sorted by ``timeframe``;
   yoochoose: file order); its date is set each time the session id changes, so it is the date of
   the session's *last row in the file*; sessions keep the dict order in which they were first
   closed (the end of their first contiguous block) - this breaks ties between equal dates;
2. drop sessions with fewer than ``min_session_length`` (2) clicks;
3. count every occurrence of each item over the remaining sessions (``support``) and remove items
   seen fewer than ``min_item_support`` (5) times; drop sessions left with < 2 clicks;
4. ``split = max date - split_days`` (7 diginetica, 1 yoochoose); train: date < split,
   test: date > split (sessions exactly on it are in neither, unless ``inclusive_split``: test);
5. train and test sorted by date (stable); items numbered 1.. by first appearance walking the
   sorted train sessions; test clicks on unknown items removed; test sessions left with < 2 dropped.

``--fraction`` (yoochoose 1/64, 1/4) is only recorded here: stage 2 keeps the last fraction of the
augmented training pairs (``tr_seqs[-int(len / 64):]`` in the official code).

Outputs (``OUT/<table>/run_date=D``): ``sessions``, ``item_vocab``, ``quarantine``, and the stats
JSON ``OUT/stats/run_date=D/build_sessions.json`` (also returned and logged).

Modules: ``config`` (:class:`SessionsConfig`), ``inputs`` (files, headers, columns), ``sources``
(the click-log formats parsed into clicks or quarantine reasons), ``transforms`` (pure DataFrame
transforms), ``job`` (:func:`build_sessions`: read, transform, write, stats).
"""
from pipelines.sessions.config import FORMATS, SessionsConfig, parse_fraction
from pipelines.sessions.job import build_sessions

__all__ = ["FORMATS", "SessionsConfig", "build_sessions", "parse_fraction"]
