"""Evaluation: the exported SR-GNN model(s) of a run date and every baseline on the same test examples.

``config`` (the options), ``scoring`` (test examples and scores), ``transforms`` (the ``evaluation``
table), ``report`` (best model, Markdown report, chart), ``job`` (the stage: :func:`evaluate`).
"""
from pipelines.evaluate.config import EvaluateConfig
from pipelines.evaluate.job import evaluate

__all__ = ["EvaluateConfig", "evaluate"]
