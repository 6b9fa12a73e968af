"""sgdstab: flatness, SGD-noise alignment and linear stability of SGD at minima of real networks.

Conventions (THEORY.md §1): square loss L(θ) = (1/(2n)) Σ_i ||f(x_i; θ) − y_i||², SGD noise covariance c·Σ with
c = 1/B (with replacement) or (n − B)/(B(n − 1)) (without replacement).
"""

from sgdstab._version import __version__
from sgdstab.conventions import half_mse_learning_rate, noise_scale
from sgdstab.data import DEFAULT_DATASET, Dataset, load_dataset
from sgdstab.errors import (
    DataError,
    LayerChainError,
    MemoryBudgetError,
    ModelSpecError,
    NtkError,
    PolishError,
    ProblemError,
    SgdstabError,
    StabilityError,
    TrackerError,
)
from sgdstab.kernel.kernel import Kernel
from sgdstab.kernel.ntk import as_kernel, ggn_kernel, ntk
from sgdstab.linear_stability.analysis import Analysis, analyze
from sgdstab.linear_stability.certificates import (
    Certificate,
    CertificateGrid,
    Certificates,
    KernelCurvature,
    certificate_grid,
    certificates,
    kernel_curvature,
)
from sgdstab.linear_stability.diagram import StabilityDiagram, stability_diagram
from sgdstab.linear_stability.linearized import (
    Simulation,
    TypicalThreshold,
    simulate_linearized,
    typical_critical_learning_rate,
)
from sgdstab.linear_stability.solver import Stability, critical_learning_rate, stability, stability_operator
from sgdstab.measure.alignment import Alignment, alignment
from sgdstab.measure.curvature import Curvature, curvature, plan_method
from sgdstab.measure.sharpness import BatchSharpness, batch_sharpness
from sgdstab.measure.top_eigen import Sharpness, sharpness, step_sharpness
from sgdstab.measure.traces import hessian_trace, layerwise_traces
from sgdstab.models.architectures import (
    ModelSpec,
    build_model,
    cnn,
    count_parameters,
    linear_net,
    mlp,
    random_features,
)
from sgdstab.problem.problem import Problem
from sgdstab.tracking.tracker import Tracker
from sgdstab.training.polish import PolishResult, polish_to_minimum
from sgdstab.training.trainer import History, train

__all__ = [
    "DEFAULT_DATASET",
    "Alignment",
    "Analysis",
    "BatchSharpness",
    "Certificate",
    "CertificateGrid",
    "Certificates",
    "Curvature",
    "DataError",
    "Dataset",
    "History",
    "Kernel",
    "KernelCurvature",
    "LayerChainError",
    "MemoryBudgetError",
    "ModelSpec",
    "ModelSpecError",
    "NtkError",
    "PolishError",
    "PolishResult",
    "Problem",
    "ProblemError",
    "SgdstabError",
    "Sharpness",
    "Simulation",
    "Stability",
    "StabilityDiagram",
    "StabilityError",
    "Tracker",
    "TrackerError",
    "TypicalThreshold",
    "__version__",
    "alignment",
    "analyze",
    "as_kernel",
    "batch_sharpness",
    "build_model",
    "certificate_grid",
    "certificates",
    "cnn",
    "count_parameters",
    "critical_learning_rate",
    "curvature",
    "ggn_kernel",
    "half_mse_learning_rate",
    "hessian_trace",
    "kernel_curvature",
    "layerwise_traces",
    "linear_net",
    "load_dataset",
    "mlp",
    "noise_scale",
    "ntk",
    "plan_method",
    "polish_to_minimum",
    "random_features",
    "sharpness",
    "simulate_linearized",
    "stability",
    "stability_diagram",
    "stability_operator",
    "step_sharpness",
    "train",
    "typical_critical_learning_rate",
]
