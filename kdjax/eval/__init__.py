"""Evaluation: throughput, the comparison report, `kdjax evaluate` and `kdjax select`."""
