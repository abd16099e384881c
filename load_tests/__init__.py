"""Measures the service from outside: a server launcher, load generators, benchmarks."""
