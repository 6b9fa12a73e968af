"""Matrix-free estimators on any linear operator: Lanczos top eigenpairs, Hutch++ and Hutchinson traces and
Frobenius norms with standard errors (``matrix_free``). Nothing here knows about networks.

May import: ``errors``, ``utils``.
"""
