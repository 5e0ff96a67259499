"""Logging set-up shared by the jobs: one format, INFO by default, quiet third-party loggers."""
from __future__ import annotations

import logging
import os

_FMT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def get_logger(name: str) -> logging.Logger:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=os.environ.get("SRGNN_LOG_LEVEL", "INFO"), format=_FMT)
        for noisy in ("py4j", "petastorm", "urllib3", "mlflow", "filelock"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(name)
