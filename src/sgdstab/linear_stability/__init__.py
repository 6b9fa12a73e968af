"""Linear stability of SGD at a global minimum: the exact second-moment operator and its solvers (``solver``), the
certificates side by side (``certificates``), Monte-Carlo of linearized SGD (``linearized``), the (η, B) diagram
(``diagram``) and the one-call analysis of a user's model (``analysis``).

May import: everything below it (``errors`` … ``measure``).
"""
