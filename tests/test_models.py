"""Tests for sgdstab.models.architectures: specs, parameter counts, determinism, init, and torch.func compatibility."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, jacrev, jvp, vmap

from sgdstab.errors import ModelSpecError
from sgdstab.models.architectures import (
    ACTIVATIONS,
    MODEL_KINDS,
    ModelSpec,
    build_model,
    cnn,
    count_parameters,
    expected_parameter_count,
    linear_net,
    mlp,
    random_features,
)

# One small spec per kind, used by most tests.
SMALL_SPECS = {
    "mlp": ModelSpec("mlp", (1, 6, 6), 3, widths=(7, 5), activation="tanh", seed=1),
    "cnn": ModelSpec("cnn", (2, 6, 6), 3, widths=(5,), channels=(3, 4), activation="gelu", seed=1),
    "linear_net": ModelSpec("linear_net", (1, 6, 6), 3, widths=(4,), activation="identity", bias=False),
    "random_features": ModelSpec("random_features", (1, 6, 6), 3, widths=(9,), activation="softplus", seed=1),
}
KINDS = list(SMALL_SPECS)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _inputs(spec: ModelSpec, n: int, seed: int = 123, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((n, *spec.input_shape), generator=gen, dtype=dtype)


def test_model_kinds_constant() -> None:
    assert MODEL_KINDS == ("mlp", "cnn", "linear_net", "random_features")
    assert set(KINDS) == set(MODEL_KINDS)


# ---------------------------------------------------------------------------------------- parameter counts


def test_parameter_count_hand_computed() -> None:
    model = mlp((64,), 1, widths=(256, 256))
    hand = 64 * 256 + 256 + 256 * 256 + 256 + 256 + 1
    assert count_parameters(model) == hand == expected_parameter_count(model.spec) == 82689

    # cnn (1,8,8): conv 1->2 (3x3) + bias = 20; pool 8->4; flatten 2*4*4=32; head 32*4+4 + 4*3+3 = 147
    small = cnn((1, 8, 8), 3, channels=(2,), kernel_size=3, widths=(4,))
    assert count_parameters(small) == expected_parameter_count(small.spec) == 20 + 132 + 15

    deep_linear = linear_net((10,), 2, widths=(5,), bias=False)
    assert count_parameters(deep_linear) == expected_parameter_count(deep_linear.spec) == 10 * 5 + 5 * 2

    rf = random_features((10,), 3, width=7)
    assert count_parameters(rf) == expected_parameter_count(rf.spec) == 7 * 3 + 3


GRID = [
    ModelSpec("mlp", (64,), 1, widths=(256, 256)),
    ModelSpec("mlp", (1, 28, 28), 10, widths=(32,), bias=False),
    ModelSpec("mlp", (3, 4, 4), 2, widths=(5, 6, 7), activation="relu"),
    ModelSpec("linear_net", (12,), 3, widths=(), activation="identity"),
    ModelSpec("linear_net", (12,), 3, widths=(8, 8), activation="identity", bias=True),
    ModelSpec("random_features", (3, 8, 8), 4, widths=(100,), activation="relu"),
    ModelSpec("random_features", (20,), 1, widths=(30,), bias=False),
    ModelSpec("cnn", (1, 8, 8), 10, widths=(64,), channels=(8, 16), activation="relu"),
    ModelSpec("cnn", (1, 28, 28), 10, widths=(), channels=(4, 4, 4), kernel_size=5),
    ModelSpec("cnn", (3, 32, 32), 10, widths=(16, 8), channels=(4, 8), bias=False),
    ModelSpec("cnn", (1, 8, 8), 2, widths=(3,), channels=(2, 2, 2, 2, 2, 2), kernel_size=1),
    ModelSpec("cnn", (2, 5, 3), 2, widths=(3,), channels=(2, 3, 2)),
]


@pytest.mark.parametrize("spec", GRID, ids=lambda s: f"{s.kind}-{s.input_shape}-{s.widths}-{s.channels}")
def test_expected_parameter_count_matches_model(spec: ModelSpec) -> None:
    model = build_model(spec)
    assert count_parameters(model) == expected_parameter_count(spec)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


@settings(max_examples=25, deadline=None)
@given(
    c=st.integers(1, 3),
    h=st.integers(1, 10),
    w=st.integers(1, 10),
    channels=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    widths=st.lists(st.integers(1, 5), max_size=2),
    kernel_size=st.sampled_from([1, 3, 5]),
    bias=st.booleans(),
)
def test_cnn_parameter_count_property(
    c: int, h: int, w: int, channels: list[int], widths: list[int], kernel_size: int, bias: bool
) -> None:
    spec = ModelSpec("cnn", (c, h, w), 2, widths=widths, channels=channels, kernel_size=kernel_size, bias=bias)
    model = build_model(spec)
    assert count_parameters(model) == expected_parameter_count(spec)
    assert model(torch.zeros(2, c, h, w)).shape == (2, 2)


# ------------------------------------------------------------------------------- determinism and RNG state


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_model_different_seed_different(kind: str) -> None:
    spec = SMALL_SPECS[kind]
    a, b = build_model(spec), build_model(spec)
    assert _same_state(a, b)
    x = _inputs(spec, 4)
    assert torch.equal(a(x), b(x))

    other = build_model(ModelSpec.from_dict({**spec.to_dict(), "seed": spec.seed + 1}))
    sa, so = a.state_dict(), other.state_dict()
    assert all(not torch.equal(sa[k], so[k]) for k in sa)
    assert not torch.allclose(a(x), other(x))


@pytest.mark.parametrize("kind", KINDS)
def test_global_rng_untouched(kind: str) -> None:
    torch.manual_seed(2024)
    before = torch.random.get_rng_state()
    build_model(SMALL_SPECS[kind])
    assert torch.equal(torch.random.get_rng_state(), before)


def test_global_rng_untouched_by_convenience_constructors() -> None:
    before = torch.random.get_rng_state()
    mlp((4,), 2, widths=(3,))
    cnn((1, 8, 8), 2)
    linear_net((4,), 2)
    random_features((4,), 2, width=8)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_init_does_not_depend_on_global_seed() -> None:
    spec = SMALL_SPECS["mlp"]
    torch.manual_seed(0)
    a = build_model(spec)
    torch.manual_seed(99)
    b = build_model(spec)
    assert _same_state(a, b)


def test_init_scheme_uniform_fan_in_bounds_and_scale() -> None:
    base = mlp((50,), 3, widths=(40,), seed=7)
    scaled = mlp((50,), 3, widths=(40,), seed=7, init_scale=2.5)
    for (name, p), (_, q) in zip(base.named_parameters(), scaled.named_parameters(), strict=True):
        assert p.dtype == torch.float32
        fan_in = 50 if name.startswith("net.0.") else 40
        bound = 1 / math.sqrt(fan_in)
        assert p.abs().max() <= bound
        if p.numel() >= 100:  # really spread over the interval, not a tiny init
            assert p.abs().max() > 0.9 * bound
        torch.testing.assert_close(q, 2.5 * p)

    conv = cnn((3, 8, 8), 2, channels=(4,), kernel_size=3, seed=3)
    weight = conv.features[0].weight
    assert weight.abs().max() <= 1 / math.sqrt(3 * 9)


# ----------------------------------------------------------------------------------------- shapes, dtypes


@pytest.mark.parametrize("kind", KINDS)
def test_output_shape_for_image_and_flat_inputs(kind: str) -> None:
    spec = SMALL_SPECS[kind]
    model = build_model(spec)
    x = _inputs(spec, 5)
    out_image = model(x)
    out_flat = model(x.flatten(1))
    assert out_image.shape == (5, spec.outputs)
    assert out_image.dtype == torch.float32
    torch.testing.assert_close(out_image, out_flat)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_cnn_standard_image_shapes(shape: tuple[int, int, int]) -> None:
    model = cnn(shape, 10)
    assert model(torch.zeros(2, *shape)).shape == (2, 10)
    many_blocks = cnn(shape, 10, channels=(2,) * 7, widths=(4,))  # pooling must stop at 1x1
    assert many_blocks(torch.zeros(2, *shape)).shape == (2, 10)
    assert count_parameters(many_blocks) == expected_parameter_count(many_blocks.spec)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_builds_and_runs(activation: str) -> None:
    model = mlp((4,), 2, widths=(3,), activation=activation)
    assert model(torch.ones(3, 4)).shape == (3, 2)
    assert model.spec.activation == activation


def test_mlp_has_no_activation_after_last_layer() -> None:
    model = mlp((4,), 2, widths=(3,), activation="sigmoid")
    assert isinstance(model.net[-1], nn.Linear)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    hidden = torch.sigmoid(model.net[0](x))
    torch.testing.assert_close(model(x), model.net[2](hidden))


def test_no_batchnorm_or_dropout() -> None:
    banned = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Dropout2d, nn.MaxPool2d)
    for spec in [*SMALL_SPECS.values(), *GRID]:
        assert not any(isinstance(m, banned) for m in build_model(spec).modules())


# ----------------------------------------------------------------------------------------- random features


def test_random_features_only_readout_trains_and_buffer_moves() -> None:
    width, outputs, d = 50, 3, 64
    model = random_features((1, 8, 8), outputs, width=width, seed=5)
    assert sum(p.numel() for p in model.parameters()) == width * outputs + outputs
    assert [n for n, _ in model.named_parameters()] == ["readout.weight", "readout.bias"]
    buffers = dict(model.named_buffers())
    assert list(buffers) == ["feature_weight"]
    frozen = buffers["feature_weight"]
    assert frozen.shape == (width, d)
    assert not frozen.requires_grad
    assert 0.8 / math.sqrt(d) < frozen.std().item() < 1.2 / math.sqrt(d)  # N(0, 1/d)
    assert "feature_weight" in model.state_dict()

    model64 = model.to(torch.float64)
    assert model64.feature_weight.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in model64.parameters())
    assert model64(torch.ones(2, 1, 8, 8, dtype=torch.float64)).dtype == torch.float64

    out = model64(torch.randn(4, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))).sum()
    out.backward()
    assert model64.readout.weight.grad is not None


# -------------------------------------------------------------------------------------------- spec / JSON


@pytest.mark.parametrize("kind", KINDS)
def test_spec_json_round_trip_rebuilds_identical_model(kind: str) -> None:
    model = build_model(SMALL_SPECS[kind])
    text = json.dumps(model.spec.to_dict())
    spec2 = ModelSpec.from_dict(json.loads(text))
    assert spec2 == model.spec
    rebuilt = build_model(spec2)
    assert _same_state(model, rebuilt)
    x = _inputs(model.spec, 3)
    assert torch.equal(model(x), rebuilt(x))


def test_convenience_constructors_store_rebuildable_spec() -> None:
    models = [
        mlp((4,), 2, widths=(3,), seed=3),
        cnn((1, 8, 8), 2, seed=3),
        linear_net((4,), 2, seed=3),
        random_features((4,), 2, width=8, seed=3),
    ]
    for model in models:
        assert isinstance(model.spec, ModelSpec)
        assert _same_state(model, build_model(model.spec))
    assert models[0].spec.kind == "mlp" and models[2].spec.activation == "identity"
    assert models[3].spec.widths == (8,)


def test_to_dict_is_plain_json() -> None:
    d = SMALL_SPECS["cnn"].to_dict()
    assert d["input_shape"] == [2, 6, 6] and d["channels"] == [3, 4]
    assert json.loads(json.dumps(d)) == d
    assert ModelSpec.from_dict(d).input_shape == (2, 6, 6)


# ------------------------------------------------------------------------------------------- linear maps


@pytest.mark.parametrize("widths", [(), (6,), (5, 7)])
def test_linear_net_is_linear(widths: tuple[int, ...]) -> None:
    model = linear_net((2, 3, 3), 4, widths=widths, bias=False, seed=2).to(torch.float64)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 18, generator=gen, dtype=torch.float64)
    y = torch.randn(5, 18, generator=gen, dtype=torch.float64)
    a, b = 1.7, -0.3
    torch.testing.assert_close(model(a * x + b * y), a * model(x) + b * model(y), rtol=1e-12, atol=1e-12)
    nonlinear = nn.Tanh | nn.ReLU | nn.GELU | nn.Softplus | nn.Sigmoid
    assert not any(isinstance(m, nonlinear) for m in model.modules())


# ---------------------------------------------------------------------------------- torch.func compatibility


def _loop_jacobian(model: nn.Module, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    params = dict(model.named_parameters())
    result = []
    for i in range(x.shape[0]):
        out = model(x[i : i + 1])[0]
        rows = [torch.autograd.grad(out[j], list(params.values()), retain_graph=True) for j in range(out.shape[0])]
        result.append({name: torch.stack([r[n] for r in rows]) for n, name in enumerate(params)})
    return result


@pytest.mark.parametrize("kind", KINDS)
def test_vmap_jacrev_matches_autograd_loop(kind: str) -> None:
    spec = SMALL_SPECS[kind]
    model = build_model(spec).to(torch.float64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = _inputs(spec, 3, dtype=torch.float64)

    def f(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (xi[None],))[0]

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)
    expected = _loop_jacobian(model, x)
    assert set(jac) == set(params)
    for name, p in params.items():
        assert jac[name].shape == (3, spec.outputs, *p.shape)
        for i in range(3):
            torch.testing.assert_close(jac[name][i], expected[i][name], rtol=1e-10, atol=1e-12)


# torch 2.13 forward-mode AD loads jit-scripted decompositions on first use (torch-internal warning).
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("kind", KINDS)
def test_jvp_matches_jacobian_contraction(kind: str) -> None:
    spec = SMALL_SPECS[kind]
    model = build_model(spec).to(torch.float64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(4)
    tangent = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in params.items()}
    x = _inputs(spec, 4, dtype=torch.float64)

    def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, p, (x,))

    out, dout = jvp(f, (params,), (tangent,))
    torch.testing.assert_close(out, model(x))
    jac = jacrev(f)(params)
    contracted = sum((jac[k].reshape(*out.shape, -1) @ tangent[k].reshape(-1) for k in params), torch.zeros_like(out))
    torch.testing.assert_close(dout, contracted, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------- bad specs


MLP_OK = {"kind": "mlp", "input_shape": [4], "outputs": 1, "widths": [3]}
CNN_OK = {"kind": "cnn", "input_shape": [1, 8, 8], "outputs": 1, "channels": [4]}
BAD_SPECS = [
    ({"kind": "resnet", "input_shape": [4], "outputs": 1}, "kind"),
    ({"kind": "mlp", "input_shape": [4], "outputs": 0, "widths": [3]}, "outputs"),
    ({"kind": "mlp", "input_shape": [4], "outputs": -2, "widths": [3]}, "outputs"),
    ({"kind": "mlp", "input_shape": [4], "outputs": 1.5, "widths": [3]}, "outputs"),
    ({"kind": "mlp", "input_shape": [4], "outputs": 1, "widths": []}, "widths"),
    ({"kind": "mlp", "input_shape": [4], "outputs": 1, "widths": [3, 0]}, "widths"),
    ({"kind": "mlp", "input_shape": [4], "outputs": 1, "widths": [-3]}, "widths"),
    ({"kind": "mlp", "input_shape": [4], "outputs": 1, "widths": [2.5]}, "widths"),
    ({"kind": "mlp", "input_shape": [4], "outputs": 1, "widths": "64"}, "widths"),
    ({"kind": "mlp", "input_shape": [], "outputs": 1, "widths": [3]}, "input_shape"),
    ({"kind": "mlp", "input_shape": [0, 4], "outputs": 1, "widths": [3]}, "input_shape"),
    ({"kind": "mlp", "input_shape": [4], "outputs": 1, "widths": [3], "activation": "swish"}, "activation"),
    ({"kind": "mlp", "input_shape": [4], "outputs": 1, "widths": [3], "bias": 1}, "bias"),
    ({"kind": "mlp", "input_shape": [4], "outputs": 1, "widths": [3], "seed": -1}, "seed"),
    ({"kind": "mlp", "input_shape": [4], "outputs": 1, "widths": [3], "seed": "0"}, "seed"),
    ({"kind": "mlp", "input_shape": [4], "outputs": 1, "widths": [3], "init_scale": 0}, "init_scale"),
    ({**MLP_OK, "init_scale": float("nan")}, "init_scale"),
    ({"kind": "mlp", "input_shape": [4], "outputs": 1, "widths": [3], "channels": [4]}, "channels"),
    ({"kind": "cnn", "input_shape": [64], "outputs": 1, "channels": [4]}, "input_shape"),
    ({"kind": "cnn", "input_shape": [8, 8], "outputs": 1, "channels": [4]}, "input_shape"),
    ({"kind": "cnn", "input_shape": [1, 8, 8], "outputs": 1, "channels": []}, "channels"),
    ({"kind": "cnn", "input_shape": [1, 8, 8], "outputs": 1, "channels": [4, 0]}, "channels"),
    ({**CNN_OK, "kernel_size": 0}, "kernel_size"),
    ({**CNN_OK, "kernel_size": 4}, "kernel_size"),
    ({**CNN_OK, "kernel_size": True}, "kernel_size"),
    ({"kind": "random_features", "input_shape": [4], "outputs": 1, "widths": []}, "widths"),
    ({"kind": "random_features", "input_shape": [4], "outputs": 1, "widths": [8, 8]}, "widths"),
    ({"kind": "linear_net", "input_shape": [4], "outputs": 1, "activation": "tanh"}, "activation"),
    ({"kind": "mlp", "input_shape": [4], "widths": [3]}, "outputs"),
]


@pytest.mark.parametrize(("spec", "field"), BAD_SPECS, ids=[f"{i}-{f}" for i, (_, f) in enumerate(BAD_SPECS)])
def test_bad_spec_raises_model_spec_error_naming_field(spec: dict, field: str) -> None:
    with pytest.raises(ModelSpecError, match=field) as info:
        ModelSpec.from_dict(spec)
    assert "\n" not in str(info.value)


def test_unknown_keys_are_named() -> None:
    with pytest.raises(ModelSpecError, match=r"depth.*dropout|dropout.*depth"):
        ModelSpec.from_dict({**MLP_OK, "depth": 2, "dropout": 0})


def test_unknown_activation_lists_valid_ones() -> None:
    with pytest.raises(ModelSpecError) as info:
        mlp((4,), 1, widths=(3,), activation="swish")
    assert all(name in str(info.value) for name in ACTIVATIONS)


def test_bad_arguments_to_constructors_raise() -> None:
    with pytest.raises(ModelSpecError, match="input_shape"):
        cnn((64,), 10)
    with pytest.raises(ModelSpecError, match="widths"):
        mlp((4,), 1, widths=(0,))
    with pytest.raises(ModelSpecError, match="widths"):
        random_features((4,), 1, width=0)
    with pytest.raises(ModelSpecError, match="outputs"):
        linear_net((4,), 0)
    with pytest.raises(ModelSpecError, match="ModelSpec"):
        build_model({"kind": "mlp"})  # type: ignore[arg-type]
    with pytest.raises(ModelSpecError, match="mapping"):
        ModelSpec.from_dict([("kind", "mlp")])  # type: ignore[arg-type]
    assert issubclass(ModelSpecError, ValueError)


def test_spec_is_frozen_and_hashable() -> None:
    spec = SMALL_SPECS["mlp"]
    with pytest.raises(AttributeError):
        spec.seed = 3  # type: ignore[misc]
    assert hash(spec) == hash(ModelSpec.from_dict(spec.to_dict()))
    assert ModelSpec("mlp", [4], 1, widths=[3]).widths == (3,)  # lists are normalised to tuples
    assert ModelSpec("mlp", 4, 1, widths=3).input_shape == (4,)
