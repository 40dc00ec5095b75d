"""Benchmarks writing JSON under results/benchmarks/."""
