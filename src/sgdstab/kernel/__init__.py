"""The NTK Gram matrix K = J Jᵀ: the validated :class:`sgdstab.Kernel` type (``kernel``), its
construction (``ntk``, layer by layer for chains in ``layerwise``) and the exact figures read off its
eigendecomposition (``figures``).

May import: everything below it (``errors`` … ``problem``, ``operators``, ``estimators``).
"""
