"""Benchmarks and the synthetic click-log generator (``bench.synth``), importable from the repo root."""
