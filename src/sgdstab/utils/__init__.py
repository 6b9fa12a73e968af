"""Plumbing every layer may use, and nothing numerical: durable atomic file writes (``files``), signal handling
(``signals``), bounded JSON/TOML parsing (``parsing``), printable text (``text``), memory budgets (``memory``),
result dataclasses and their JSON encoding (``results``), and argument checks (``validation``).

May import: :mod:`sgdstab.errors` only.
"""
