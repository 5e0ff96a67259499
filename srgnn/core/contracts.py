"""Names and versions the stages agree on (docs/contracts.md describes them).

Change one only together with every reader and writer, and say why in the commit.
"""
from __future__ import annotations

# Tables under OUT, each partitioned by run_date (OUT/<table>/run_date=D/).
SESSIONS = "sessions"
ITEM_VOCAB = "item_vocab"
QUARANTINE = "quarantine"
ITEM_GRAPH = "item_graph"
EVALUATION = "evaluation"
RECOMMENDATIONS = "recommendations"
MODEL_SELECTION = "model_selection"
TABLES = (SESSIONS, ITEM_VOCAB, QUARANTINE, ITEM_GRAPH, EVALUATION, MODEL_SELECTION, RECOMMENDATIONS)

PARTITION_COLUMN = "run_date"
TABLE_FORMATS = ("parquet", "delta")

# Stage 2 -> stage 3: Petastorm/Parquet shards, one folder per split, and their manifest.
SPLITS = ("train", "valid", "test")
MANIFEST_NAME = "_manifest.json"
SCHEMA_VERSION = 1
SHARD_COLUMNS = ("items", "length", "target", "ngc_w")  # what a training batch reads

# Stage 3 -> evaluation / stage 4: the exported model folder.
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VOCAB_FILE = "item_vocab.parquet"      # the item ids of the export, for the next warm start

# Side files.
STATS_SESSIONS = "build_sessions.json"
STATS_RECOMMEND = "recommend.json"
REPORT_EVALUATION = "evaluation.md"

# Metrics.
SELECT_METRIC = "mrr@20"               # picks the best epoch and the best model
REPORT_KS = (10, 20)
