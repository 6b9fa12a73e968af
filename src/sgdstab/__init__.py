"""sgdstab: flatness, SGD-noise alignment and linear stability of SGD at minima of real networks.

Conventions (THEORY.md §1): square loss L(θ) = (1/(2n)) Σ_i ||f(x_i; θ) − y_i||², SGD noise covariance c·Σ with
c = 1/B (with replacement) or (n − B)/(B(n − 1)) (without replacement).
"""

from sgdstab._version import __version__
from sgdstab.alignment import Alignment, alignment
from sgdstab.analysis import Analysis, analyze
from sgdstab.certificates import (
    Certificate,
    CertificateGrid,
    Certificates,
    KernelCurvature,
    certificate_grid,
    certificates,
    kernel_curvature,
)
from sgdstab.conventions import half_mse_learning_rate, noise_scale
from sgdstab.curvature import Curvature, curvature, plan_method
from sgdstab.data import DEFAULT_DATASET, Dataset, load_dataset
from sgdstab.diagram import StabilityDiagram, stability_diagram
from sgdstab.errors import (
    DataError,
    MemoryBudgetError,
    ModelSpecError,
    NotBuiltError,
    ProblemError,
    SgdstabError,
)
from sgdstab.layerwise import LayerChainError, hessian_trace, layerwise_traces
from sgdstab.linearized import Simulation, TypicalThreshold, simulate_linearized, typical_critical_learning_rate
from sgdstab.models import (
    ModelSpec,
    build_model,
    cnn,
    count_parameters,
    linear_net,
    mlp,
    random_features,
)
from sgdstab.ntk import NtkError, ntk
from sgdstab.polish import PolishError, PolishResult, polish_to_minimum
from sgdstab.problem import Problem
from sgdstab.stability import (
    Kernel,
    Stability,
    StabilityError,
    as_kernel,
    critical_learning_rate,
    stability,
    stability_operator,
)
from sgdstab.training import History, train

__all__ = [
    "DEFAULT_DATASET",
    "Alignment",
    "Analysis",
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
    "NotBuiltError",
    "NtkError",
    "PolishError",
    "PolishResult",
    "Problem",
    "ProblemError",
    "SgdstabError",
    "Simulation",
    "Stability",
    "StabilityDiagram",
    "StabilityError",
    "TypicalThreshold",
    "__version__",
    "alignment",
    "analyze",
    "as_kernel",
    "build_model",
    "certificate_grid",
    "certificates",
    "cnn",
    "count_parameters",
    "critical_learning_rate",
    "curvature",
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
    "simulate_linearized",
    "stability",
    "stability_diagram",
    "stability_operator",
    "train",
    "typical_critical_learning_rate",
]
