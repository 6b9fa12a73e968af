"""Small, deterministic networks for Hessian, NTK and SGD-stability measurements.

Every model is a plain :class:`torch.nn.Module` without BatchNorm or dropout, maps a batch ``(N, ...)`` to
``(N, outputs)``, contains no data-dependent control flow (so :mod:`torch.func` transforms such as ``vmap``,
``jacrev`` and ``jvp`` apply), and is rebuilt exactly from its JSON-able :class:`ModelSpec`, which it keeps as
``model.spec``.

Initialisation scheme (all kinds): parameters are created without touching any random state and then filled,
in module order (weight before bias), from a private ``torch.Generator`` seeded with ``spec.seed``; the global
RNG is never used or advanced. Trainable weights and biases are drawn as in PyTorch's default ``nn.Linear`` /
``nn.Conv2d`` init (Kaiming-uniform with ``a=sqrt(5)``): ``U(-b, b)`` with ``b = 1/sqrt(fan_in)``, where
``fan_in`` is ``in_features`` (linear) or ``in_channels * kernel_size**2`` (conv), multiplied by
``spec.init_scale``. The frozen first layer of ``random_features`` is ``N(0, 1/d)`` and is not scaled.
Parameters are float32.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn.utils import skip_init

from sgdstab.errors import ModelSpecError
from sgdstab.utils.memory import check_allocation

__all__ = [
    "ACTIVATIONS",
    "MAX_INPUT_DIMS",
    "MAX_LAYERS",
    "MODEL_KINDS",
    "ModelSpec",
    "build_model",
    "cnn",
    "count_parameters",
    "expected_parameter_count",
    "linear_net",
    "mlp",
    "random_features",
]

MODEL_KINDS: tuple[str, ...] = ("mlp", "cnn", "linear_net", "random_features")
# Limits on a spec's lists, refused before anything is built: 5 million widths (a few MiB of JSON) made a model
# of 5 million layers and ran on for minutes. Sizes need no limit of their own: the memory check refuses a model
# that cannot fit before it is allocated.
MAX_LAYERS = 64  # hidden layers (widths) and conv blocks (channels): deeper nets are beyond these measurements
MAX_INPUT_DIMS = 8  # per-sample input dimensions
MAX_SIZE = 2**31 - 1  # one width, channel count, input size or output count (beyond: bignum arithmetic, no model)

_ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}
ACTIVATIONS: tuple[str, ...] = tuple(_ACTIVATION_MODULES)


def _shown(value: object, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters (an int of thousands of digits cannot even be repr'd)."""
    try:
        text = repr(value)
    except ValueError:  # Python's limit on int → str conversion
        return f"an integer of more than {sys.get_int_max_str_digits()} digits"
    return text if len(text) <= limit else text[:limit] + "…"


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_tuple(name: str, value: object, *, allow_empty: bool, max_len: int = MAX_LAYERS) -> tuple[int, ...]:
    """Normalise ``value`` (int or sequence of ints) to a tuple of at most ``max_len`` positive ints, else raise
    for ``name``."""
    if _is_int(value):
        value = (value,)
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ModelSpecError(f"{name} must be a sequence of positive ints, got {_shown(value)}")
    out = tuple(itertools.islice(value, max_len + 1))  # a generator of millions is not drained to say so
    if len(out) > max_len:
        raise ModelSpecError(f"{name} holds more than {max_len} values; at most {max_len} are supported")
    if not all(_is_int(v) and 1 <= v <= MAX_SIZE for v in out):
        raise ModelSpecError(f"{name} must contain only positive ints (>= 1) up to 2**31 - 1, got {_shown(list(out))}")
    if not out and not allow_empty:
        raise ModelSpecError(f"{name} must not be empty; give at least one positive int")
    return out


def _checked_init_scale(scale: Any) -> float:
    """``scale`` as a float, if it is a finite number > 0 (bools refused)."""
    is_number = isinstance(scale, int | float) and not isinstance(scale, bool)
    # an int of 309+ digits overflows math.isfinite (OverflowError): compare it as an int instead
    finite = is_number and (math.isfinite(scale) if isinstance(scale, float) else abs(scale) < 2**1023)
    if not (finite and scale > 0):
        raise ModelSpecError(f"init_scale must be a finite number > 0, got {_shown(scale)}")
    return float(scale)


@dataclass(frozen=True)
class ModelSpec:
    """Plain, JSON-able description of a model; ``build_model(spec)`` rebuilds it exactly.

    Fields: ``kind`` (one of :data:`MODEL_KINDS`); ``input_shape`` (per-sample shape, ``(C, H, W)`` for
    ``cnn``); ``outputs`` (k); ``widths`` (hidden widths: mlp/linear_net layers, cnn head, or the single
    random-feature width); ``activation`` (one of :data:`ACTIVATIONS`; must be ``"identity"`` for
    ``linear_net``); ``bias`` (biases in trainable layers); ``seed`` (init seed); ``channels`` and
    ``kernel_size`` (cnn only; kernel size odd); ``init_scale`` (multiplies every trainable initial tensor).
    Validated on construction (:class:`~sgdstab.errors.ModelSpecError` names the field); tuple fields also accept
    lists, and an int input shape stands for ``(d,)``.

    Example:
        >>> from sgdstab import ModelSpec
        >>> spec = ModelSpec("mlp", [4], 2, widths=[8, 8])
        >>> spec.input_shape, spec.widths
        ((4,), (8, 8))
        >>> ModelSpec.from_dict(spec.to_dict()) == spec
        True
        >>> ModelSpec("mlp", (4,), 2)
        Traceback (most recent call last):
        ...
        sgdstab.errors.ModelSpecError: widths must not be empty for kind='mlp'; use kind='linear_net' for a linear model
    """

    kind: str
    input_shape: tuple[int, ...]
    outputs: int
    widths: tuple[int, ...] = ()
    activation: str = "tanh"
    bias: bool = True
    seed: int = 0
    channels: tuple[int, ...] = ()
    kernel_size: int = 3
    init_scale: float = 1.0

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        if not isinstance(self.kind, str) or self.kind not in MODEL_KINDS:
            raise ModelSpecError(f"kind must be one of {', '.join(MODEL_KINDS)}; got {_shown(self.kind)}")
        put("input_shape", _int_tuple("input_shape", self.input_shape, allow_empty=False, max_len=MAX_INPUT_DIMS))
        put("widths", _int_tuple("widths", self.widths, allow_empty=True))
        put("channels", _int_tuple("channels", self.channels, allow_empty=True))
        self._check_scalar_fields()
        put("init_scale", _checked_init_scale(self.init_scale))
        self._check_kind_rules()

    def _check_scalar_fields(self) -> None:
        """Type and range of outputs, activation, bias, seed and kernel_size."""
        if not _is_int(self.outputs) or not 1 <= self.outputs <= MAX_SIZE:
            raise ModelSpecError(f"outputs must be an int >= 1 (up to 2**31 - 1), got {_shown(self.outputs)}")
        if not isinstance(self.activation, str) or self.activation not in ACTIVATIONS:
            valid = ", ".join(ACTIVATIONS)
            raise ModelSpecError(f"activation must be one of {valid}; got {_shown(self.activation)}")
        if not isinstance(self.bias, bool):
            raise ModelSpecError(f"bias must be true or false, got {_shown(self.bias)}")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**63:
            raise ModelSpecError(f"seed must be an int in [0, 2**63), got {_shown(self.seed)}")
        if not _is_int(self.kernel_size) or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ModelSpecError(f"kernel_size must be an odd int >= 1, got {_shown(self.kernel_size)}")

    def _check_kind_rules(self) -> None:
        """The fields each kind needs or forbids (cnn: 3-d input and channels; mlp: widths; ...)."""
        if self.kind == "cnn":
            if len(self.input_shape) != 3:
                raise ModelSpecError(
                    f"input_shape must be (C, H, W) for kind='cnn', got {self.input_shape!r}; "
                    "use kind='mlp' for flat inputs"
                )
            if not self.channels:
                raise ModelSpecError("channels must not be empty for kind='cnn'; give e.g. channels=(8, 16)")
        elif self.channels:
            raise ModelSpecError(f"channels is only used by kind='cnn'; set channels=() for kind={self.kind!r}")
        if self.kind == "mlp" and not self.widths:
            raise ModelSpecError("widths must not be empty for kind='mlp'; use kind='linear_net' for a linear model")
        if self.kind == "random_features" and len(self.widths) != 1:
            raise ModelSpecError(f"widths must hold exactly one width for kind='random_features', got {self.widths!r}")
        if self.kind == "linear_net" and self.activation != "identity":
            raise ModelSpecError(f"activation must be 'identity' for kind='linear_net', got {_shown(self.activation)}")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict (tuples become lists) that :meth:`from_dict` turns back into this spec."""
        d = asdict(self)
        for name in ("input_shape", "widths", "channels"):
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        """Build a spec from a dict such as ``json.loads(json.dumps(spec.to_dict()))``, validating it."""
        if not isinstance(d, Mapping):
            raise ModelSpecError(f"a model spec must be a mapping of field names, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in d if k not in names)
        if unknown:
            raise ModelSpecError(f"unknown model spec keys {unknown}; valid keys are {sorted(names)}")
        missing = [n for n in ("kind", "input_shape", "outputs") if n not in d]
        if missing:
            raise ModelSpecError(f"model spec is missing required keys {missing}")
        return cls(**d)


# ----------------------------------------------------------------------------------------------- modules


def _activation(name: str) -> nn.Module:
    return _ACTIVATION_MODULES[name]()


def _pooled_size(spec: ModelSpec) -> tuple[int, int]:
    """Spatial size after the cnn blocks: each block halves (floor) H and W, skipped once either is < 2."""
    _, h, w = spec.input_shape
    for _ in spec.channels:
        if h >= 2 and w >= 2:
            h, w = h // 2, w // 2
    return h, w


def _linear_stack(dims: list[int], activation: str, bias: bool) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(skip_init(nn.Linear, a, b, bias=bias))
        if i < len(dims) - 2:
            layers.append(_activation(activation))
    return layers


class MLP(nn.Module):
    """``f(x) = W_L s(... s(W_1 flatten(x) + b_1) ...) + b_L``; activation ``s`` (identity: linear net)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        dims = [math.prod(spec.input_shape), *spec.widths, spec.outputs]
        self.net = nn.Sequential(*_linear_stack(dims, spec.activation, spec.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class CNN(nn.Module):
    """Blocks ``conv(k, padding='same') -> activation -> avgpool(2)`` (pool skipped once H or W < 2), then
    flatten and an MLP head with hidden ``widths``. Input ``(N, C, H, W)`` or flat ``(N, C*H*W)``."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        c_in, h, w = spec.input_shape
        self.input_shape = spec.input_shape
        blocks: list[nn.Module] = []
        for c_out in spec.channels:
            blocks.append(skip_init(nn.Conv2d, c_in, c_out, spec.kernel_size, padding="same", bias=spec.bias))
            blocks.append(_activation(spec.activation))
            if h >= 2 and w >= 2:
                blocks.append(nn.AvgPool2d(2))
                h, w = h // 2, w // 2
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        dims = [c_in * h * w, *spec.widths, spec.outputs]
        self.head = nn.Sequential(*_linear_stack(dims, spec.activation, spec.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.input_shape)
        return self.head(self.features(x).flatten(1))


class RandomFeatures(nn.Module):
    """``f(x) = readout(s(flatten(x) @ W.T))`` with a frozen random ``W`` (buffer ``feature_weight``,
    shape ``(width, d)``, entries ``N(0, 1/d)``, no bias); only the readout ``width -> outputs`` trains."""

    feature_weight: torch.Tensor

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        d, width = math.prod(spec.input_shape), spec.widths[0]
        self.register_buffer("feature_weight", torch.empty(width, d))
        self.act = _activation(spec.activation)
        self.readout = skip_init(nn.Linear, width, spec.outputs, bias=spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.act(x.flatten(1) @ self.feature_weight.T))


def _init_(model: nn.Module, spec: ModelSpec) -> None:
    """Fill every parameter (and the random-feature buffer) from a private generator seeded ``spec.seed``."""
    gen = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        if isinstance(model, RandomFeatures):
            fw = model.feature_weight
            fw.copy_(torch.randn(fw.shape, generator=gen) / math.sqrt(fw.shape[1]))
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                bound = spec.init_scale / math.sqrt(module.weight[0].numel())
                module.weight.uniform_(-bound, bound, generator=gen)
                if module.bias is not None:
                    module.bias.uniform_(-bound, bound, generator=gen)


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the float32 model described by ``spec`` (deterministic from its seed); sets ``model.spec``.

    Args:
        spec: the validated description of the model.

    Returns:
        The model (:class:`torch.nn.Module`), initialised from a private generator seeded ``spec.seed`` (the global
        RNG is neither used nor advanced); ``build_model(spec)`` twice gives equal weights.

    Raises:
        ModelSpecError: ``spec`` is not a :class:`ModelSpec` (a dict goes through :meth:`ModelSpec.from_dict`).
        MemoryBudgetError: its parameters cannot fit in the memory available.

    Example:
        >>> import torch, sgdstab
        >>> spec = sgdstab.ModelSpec("mlp", (4,), 1, widths=(3,))
        >>> model = sgdstab.build_model(spec)
        >>> model.spec == spec, sgdstab.count_parameters(model)
        (True, 19)
        >>> x = torch.ones(2, 4)
        >>> torch.equal(model(x), sgdstab.build_model(spec)(x))
        True
    """
    if not isinstance(spec, ModelSpec):
        got = type(spec).__name__
        raise ModelSpecError(f"build_model needs a ModelSpec, got {got}; use ModelSpec.from_dict")
    # refuse a model that cannot fit before allocating it (float32 parameters, plus the frozen random features)
    frozen = spec.widths[0] * math.prod(spec.input_shape) if spec.kind == "random_features" else 0
    check_allocation(
        4 * (expected_parameter_count(spec) + frozen),
        f"the {spec.kind} model ({expected_parameter_count(spec) + frozen} float32 numbers)",
        "use smaller widths or inputs",
    )
    model: nn.Module
    if spec.kind in ("mlp", "linear_net"):
        model = MLP(spec)
    elif spec.kind == "cnn":
        model = CNN(spec)
    else:
        model = RandomFeatures(spec)
    _init_(model, spec)
    model.spec = spec
    return model


# ------------------------------------------------------------------------------------ convenience builders


def mlp(
    input_shape: int | tuple[int, ...],
    outputs: int,
    widths: tuple[int, ...] = (256, 256),
    activation: str = "tanh",
    bias: bool = True,
    seed: int = 0,
    init_scale: float = 1.0,
) -> nn.Module:
    """Fully connected net ``d -> widths... -> outputs``, activation between layers, none after the last.

    Args:
        input_shape: per-sample input shape (flattened by the model), or ``d`` for ``(d,)``.
        outputs: outputs k per sample.
        widths: hidden widths, one per hidden layer (at least one).
        activation: one of :data:`ACTIVATIONS`.
        bias: biases in every layer.
        seed: initialisation seed.
        init_scale: multiplies every initial weight and bias.

    Returns:
        The float32 model, mapping ``(N, *input_shape)`` to ``(N, outputs)``, with its :class:`ModelSpec` as
        ``model.spec``.

    Raises:
        ModelSpecError: an argument is out of range or of the wrong type (the message names it).
        MemoryBudgetError: the parameters cannot fit in the memory available.

    Example:
        >>> import torch, sgdstab
        >>> model = sgdstab.mlp(4, 2, widths=(8,))
        >>> model(torch.zeros(3, 4)).shape
        torch.Size([3, 2])
        >>> sgdstab.count_parameters(model)  # (4·8 + 8) + (8·2 + 2)
        58
    """
    return build_model(
        ModelSpec(
            "mlp",
            input_shape,
            outputs,
            widths=widths,
            activation=activation,
            bias=bias,
            seed=seed,
            init_scale=init_scale,
        )
    )


def cnn(
    input_shape: tuple[int, int, int],
    outputs: int,
    channels: tuple[int, ...] = (8, 16),
    kernel_size: int = 3,
    widths: tuple[int, ...] = (64,),
    activation: str = "relu",
    bias: bool = True,
    seed: int = 0,
    init_scale: float = 1.0,
) -> nn.Module:
    """Small conv net: ``[conv same -> activation -> avgpool 2] * len(channels)``, flatten, MLP head.

    Args:
        input_shape: ``(C, H, W)``; flat inputs ``(N, C·H·W)`` are reshaped to it.
        outputs: outputs k per sample.
        channels: output channels of each conv block (at least one); a block halves H and W while both are ≥ 2.
        kernel_size: odd conv kernel size ('same' padding).
        widths: hidden widths of the MLP head (may be empty).
        activation: one of :data:`ACTIVATIONS`.
        bias: biases in every conv and linear layer.
        seed: initialisation seed.
        init_scale: multiplies every initial weight and bias.

    Returns:
        The float32 model, mapping ``(N, C, H, W)`` to ``(N, outputs)``, with its :class:`ModelSpec` as
        ``model.spec``.

    Raises:
        ModelSpecError: an argument is out of range or of the wrong type (the message names it).
        MemoryBudgetError: the parameters cannot fit in the memory available.

    Example:
        >>> import torch, sgdstab
        >>> model = sgdstab.cnn((1, 8, 8), 3, channels=(2,), widths=(4,))
        >>> model(torch.zeros(5, 1, 8, 8)).shape
        torch.Size([5, 3])
        >>> sgdstab.count_parameters(model)  # conv 1·2·9 + 2, head (2·4·4)·4 + 4, then 4·3 + 3
        167
    """
    spec = ModelSpec(
        "cnn",
        input_shape,
        outputs,
        widths=widths,
        activation=activation,
        bias=bias,
        seed=seed,
        channels=channels,
        kernel_size=kernel_size,
        init_scale=init_scale,
    )
    return build_model(spec)


def linear_net(
    input_shape: int | tuple[int, ...],
    outputs: int,
    widths: tuple[int, ...] = (64, 64),
    bias: bool = False,
    seed: int = 0,
    init_scale: float = 1.0,
) -> nn.Module:
    """Deep linear network ``W_L ... W_1 flatten(x)`` (no activation); ``widths=()``: plain linear model.

    Args:
        input_shape: per-sample input shape (flattened by the model), or ``d`` for ``(d,)``.
        outputs: outputs k per sample.
        widths: hidden widths (``()`` for one linear layer).
        bias: biases in every layer (default none: a product of matrices).
        seed: initialisation seed.
        init_scale: multiplies every initial weight and bias.

    Returns:
        The float32 model, mapping ``(N, *input_shape)`` to ``(N, outputs)``, with its :class:`ModelSpec` as
        ``model.spec``.

    Raises:
        ModelSpecError: an argument is out of range or of the wrong type (the message names it).
        MemoryBudgetError: the parameters cannot fit in the memory available.

    Example:
        >>> import torch, sgdstab
        >>> model = sgdstab.linear_net(3, 2, widths=(4,))
        >>> sgdstab.count_parameters(model)  # 3·4 + 4·2, no biases
        20
        >>> x = torch.randn(5, 3)
        >>> torch.allclose(model(2 * x), 2 * model(x))  # linear in x
        True
    """
    return build_model(
        ModelSpec(
            "linear_net",
            input_shape,
            outputs,
            widths=widths,
            activation="identity",
            bias=bias,
            seed=seed,
            init_scale=init_scale,
        )
    )


def random_features(
    input_shape: int | tuple[int, ...],
    outputs: int,
    width: int = 512,
    activation: str = "relu",
    bias: bool = True,
    seed: int = 0,
    init_scale: float = 1.0,
) -> nn.Module:
    """Random-features model: frozen ``N(0, 1/d)`` first layer (a buffer), activation, trainable readout.

    Args:
        input_shape: per-sample input shape (flattened by the model), or ``d`` for ``(d,)``.
        outputs: outputs k per sample.
        width: random features (rows of the frozen first layer).
        activation: one of :data:`ACTIVATIONS`.
        bias: a bias in the readout.
        seed: seed of the frozen features and of the readout's initial weights.
        init_scale: multiplies the readout's initial weights (not the frozen features).

    Returns:
        The float32 model, mapping ``(N, *input_shape)`` to ``(N, outputs)``, with its :class:`ModelSpec` as
        ``model.spec``; only the readout is trainable.

    Raises:
        ModelSpecError: an argument is out of range or of the wrong type (the message names it).
        MemoryBudgetError: the parameters cannot fit in the memory available.

    Example:
        >>> import sgdstab
        >>> model = sgdstab.random_features(5, 1, width=16)
        >>> model.feature_weight.shape, sgdstab.count_parameters(model)  # readout 16 + bias 1
        (torch.Size([16, 5]), 17)
    """
    spec = ModelSpec(
        "random_features",
        input_shape,
        outputs,
        widths=(width,),
        activation=activation,
        bias=bias,
        seed=seed,
        init_scale=init_scale,
    )
    return build_model(spec)


# ------------------------------------------------------------------------------------------------ counting


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars (``requires_grad`` parameters) in ``model``.

    Args:
        model: any :class:`torch.nn.Module`.

    Returns:
        The count p of numbers in θ; frozen parameters and buffers are not counted.

    Raises:
        AttributeError: ``model`` has no ``parameters()`` (it is not a module).

    Example:
        >>> import sgdstab
        >>> model = sgdstab.mlp(3, 1, widths=(4,))
        >>> sgdstab.count_parameters(model)  # (3·4 + 4) + (4·1 + 1)
        21
        >>> _ = model.net[0].requires_grad_(False)
        >>> sgdstab.count_parameters(model)
        5
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def expected_parameter_count(spec: ModelSpec) -> int:
    """Trainable parameter count of ``build_model(spec)``, from the spec alone (no model is built)."""
    b = int(spec.bias)

    def dense(dims: list[int]) -> int:
        return sum(a * c + b * c for a, c in itertools.pairwise(dims))

    if spec.kind == "random_features":
        return spec.widths[0] * spec.outputs + b * spec.outputs
    if spec.kind == "cnn":
        k2, c_in, total = spec.kernel_size**2, spec.input_shape[0], 0
        for c_out in spec.channels:
            total += c_in * c_out * k2 + b * c_out
            c_in = c_out
        h, w = _pooled_size(spec)
        return total + dense([c_in * h * w, *spec.widths, spec.outputs])
    return dense([math.prod(spec.input_shape), *spec.widths, spec.outputs])
