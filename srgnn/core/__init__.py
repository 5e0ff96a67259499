"""The pipeline's core: no Spark, no torch.

Errors and one-line job failures (``errors``, ``cli``), logging (``log``), the typed stage config
base (``config``), the ``OUT`` layout with every path built in one place (``layout``), the contracts
between stages (``contracts``), run-date parsing (``dates``) and filesystem access with atomic
writes (``fs``). Both ``srgnn`` (the model package) and ``pipelines`` (the Spark stages) build on it;
it imports neither.
"""
