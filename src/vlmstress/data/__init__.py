"""Samples: the schema, the synthetic benchmark and loaders for files and benchmarks."""

from vlmstress.data.schema import Sample, letters

__all__ = ["Sample", "letters"]
