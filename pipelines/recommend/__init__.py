"""Stage 4: top-k recommendations per session, scored inside Spark.

``config`` (the options), ``transforms`` (pure DataFrame -> DataFrame), ``executor`` (the scoring
function run in Spark's Python workers), ``job`` (the stage: :func:`recommend`, and
:func:`session_recommendations` for one session's rows).
"""
from pipelines.recommend.config import RecommendConfig, ShowRecommendationsConfig
from pipelines.recommend.job import recommend, session_recommendations

__all__ = ["RecommendConfig", "ShowRecommendationsConfig", "recommend", "session_recommendations"]
