"""Experiments: thin, declarative layers over the measurement API (THEORY.md §6)."""
