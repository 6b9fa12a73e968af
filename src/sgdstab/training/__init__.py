"""Training: plain SGD with on-tensor batches (``trainer``), its history (``history``) and checkpoint files
(``checkpoint``), and polishing a point to the global minimum next to it (``polish``).

May import: everything below it (``errors`` … ``linear_stability``).
"""
