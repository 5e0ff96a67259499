"""Stage 3: the training job (``config``: TrainJobConfig, ``job``: train_job, ``launch``: launchers)."""
from pipelines.train.config import TrainJobConfig
from pipelines.train.job import train_job

__all__ = ["TrainJobConfig", "train_job"]
