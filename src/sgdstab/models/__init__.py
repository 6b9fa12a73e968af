"""The networks: :class:`ModelSpec` and the builders ``mlp``, ``cnn``, ``linear_net``, ``random_features``
(``architectures``), and loading a user's checkpoint or exported program safely (``loading``).

May import: ``errors``, ``conventions``, ``utils``.
"""
