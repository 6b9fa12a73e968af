"""Tracking a user's own training loop: the :class:`~sgdstab.tracking.tracker.Tracker`, what it reads from
``torch.optim`` (``optimizers``), when it measures (``schedule``), its data (``evaluation``), one measurement
(``measures``), its durable table (``table``) and its figure (``figures``).

May import: every layer below ``sgdstab.experiments`` (``errors`` … ``training``).
"""
