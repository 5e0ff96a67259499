"""Spark stages of the SR-GNN pipeline (importable, unit-tested; the jobs in jobs/ are thin)."""
