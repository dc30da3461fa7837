"""Benchmarks: scripts with a printed table and a JSON file (see bench/README.md)."""
