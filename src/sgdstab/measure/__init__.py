"""Measurements at a point: curvature (‖H‖_F, Tr H, λ_max by route), the SGD-noise alignment μ, exact Tr H layer by
layer and the float32 precision check.

- ``plan``: the cost model that picks a curvature route (:func:`plan_method`, :class:`MethodPlan`) and the argument
  checks the measurements share (:class:`MethodError`);
- ``routes``: the curvature routes (dense, kernel, matrix-free), each returning typed figures
  (:class:`~sgdstab.measure.routes.HessianFigures`, :class:`~sgdstab.measure.routes.GaussNewtonFigures`);
- ``curvature``: :func:`sgdstab.curvature`, which runs a route and assembles :class:`sgdstab.Curvature`;
- ``alignment``: :func:`sgdstab.alignment` (μ, μ_H, μ_inf, directional);
- ``traces``: exact Tr H and Tr G layer by layer; ``precision``: the float32-vs-float64 check.

May import: everything below it (``errors`` … ``kernel``).
"""
