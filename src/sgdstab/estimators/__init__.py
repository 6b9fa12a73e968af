"""Matrix-free estimators on any linear operator: Lanczos top eigenpairs (``eigen``), Hutch++ and Hutchinson traces
and Frobenius norms with standard errors (``trace``), on the shared operator plumbing of ``common``;
``matrix_free`` gathers them under their first address. Nothing here knows about networks.

May import: ``errors``, ``utils``.
"""
