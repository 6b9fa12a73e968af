"""Matrix-free products at a problem's θ: Jacobian, Hessian, Gauss–Newton and SGD-noise-covariance vector and
matrix products, and the same as scipy ``LinearOperator``s (``products``).

May import: ``errors``, ``conventions``, ``utils``, ``data``, ``models``, ``problem``.
"""
