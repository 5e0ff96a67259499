"""Model selection: which model scores tonight's sessions (see :mod:`srgnn.selection` for the rule)."""
from pipelines.select.config import SelectConfig
from pipelines.select.job import select_model

__all__ = ["SelectConfig", "select_model"]
