"""The finite-sum problem: :class:`sgdstab.Problem` (model, data, θ, per-sample outputs, the
Jacobian by ``torch.func``, chunked) and a model's decomposition into a chain of layers (``chain``).

May import: ``errors``, ``conventions``, ``utils``, ``data``, ``models``.
"""
