"""Helpers shared by the tests, the benchmarks and the tools: float64 references of every layer, finite-difference
gradient checks, and random weights calibrated so activations of deep networks stay of order one."""
