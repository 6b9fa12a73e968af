"""sgdstab.kernel.modules: K = J Jᵀ of any nn.Module, module by module, against J Jᵀ from autograd in float64.

Every model here is one a researcher would bring (a custom forward with F.relu, residual blocks, a CNN with
BatchNorm in eval mode, a transformer encoder block, weights shared or tied, frozen parameters, a bare
nn.Parameter in the parent's forward); each K must equal the dense J Jᵀ to rounding, and ``ntk``'s default route
must be the structured one wherever it applies. Where it cannot apply (a parameter used outside its module's
call), ``ntk`` must say so and return J Jᵀ anyway: never a wrong K.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import sgdstab
from sgdstab.kernel.modules import module_ntk, owners

N = 10


class CustomMLP(nn.Module):
    """What a user writes instead of nn.Sequential: layers as attributes, activations from F."""

    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(d, 12), nn.Linear(12, 12), nn.Linear(12, k)

    def forward(self, x):
        return self.c(F.relu(self.b(torch.tanh(self.a(x.flatten(1))))))


class ResidualMLP(nn.Module):
    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.inp = nn.Linear(d, 10)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(10, 10), nn.Tanh(), nn.Linear(10, 10)) for _ in range(2))
        self.out = nn.Linear(10, k)

    def forward(self, x):
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class ResidualCNN(nn.Module):
    """Conv → BatchNorm (eval) → tanh, a residual conv, pooling, a Linear head; one frozen conv bias."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.c1, self.bn = nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.c2, self.fc = nn.Conv2d(3, 3, 3, padding=1), nn.Linear(3 * 4 * 4, k)
        self.c2.bias.requires_grad_(False)

    def forward(self, x):
        h = torch.tanh(self.bn(self.c1(x.view(-1, 1, 8, 8))))
        h = h + torch.tanh(self.c2(h))
        return self.fc(F.avg_pool2d(h, 2).flatten(1))


class TinyTransformer(nn.Module):
    """16 tokens of 4 features: a token-wise Linear embedding, a learned position table (a bare nn.Parameter of
    the parent), one encoder block (attention, LayerNorm, MLP), mean pooling, a head."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.position = nn.Parameter(0.1 * torch.randn(16, 8))
        self.block = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, k)

    def forward(self, x):
        h = self.embed(x.view(-1, 16, 4)) + self.position
        return self.head(self.block(h).mean(1))


class SharedLayer(nn.Module):
    """One Linear applied twice (weight sharing across depth) and a scalar gain owned by the parent."""

    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(d, 10), nn.Linear(10, 10), nn.Linear(10, k)
        self.gain = nn.Parameter(torch.tensor(1.3))

    def forward(self, x):
        h = torch.tanh(self.b(torch.tanh(self.a(x.flatten(1)))))
        return self.c(torch.tanh(self.b(h)) * self.gain)


class TiedModules(nn.Module):
    """Two modules holding the same weight (the tie is one parameter, two holders)."""

    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(d, 10), nn.Linear(d, 10)
        self.b.weight = self.a.weight
        self.c = nn.Linear(20, k)

    def forward(self, x):
        x = x.flatten(1)
        return self.c(torch.cat([torch.tanh(self.a(x)), torch.sin(self.b(x))], 1))


class UsedOutsideItsCall(nn.Module):
    """``a.weight`` also enters through F.linear in the parent: the module-by-module route cannot see that use."""

    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.a, self.c = nn.Linear(d, 10), nn.Linear(d, k)

    def forward(self, x):
        x = x.flatten(1)
        return self.c(torch.tanh(F.linear(torch.tanh(self.a(x)), self.a.weight.T)) + x)


class SequenceFirstAttention(nn.Module):
    """nn.MultiheadAttention with batch_first=False: its inputs and outputs put the sample axis second."""

    def __init__(self, tokens: int, k: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.attn = nn.MultiheadAttention(4, 2)
        self.head = nn.Linear(4, k)

    def forward(self, x):
        h = x.view(x.shape[0], self.tokens, 4).transpose(0, 1)  # (T, m, 4)
        out, _ = self.attn(h, h, h, need_weights=False)
        return self.head(out.mean(0))


def _problem(model: nn.Module, d: int, k: int, seed: int = 0, n: int = N) -> sgdstab.Problem:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=torch.float64)
    Y = torch.randn(n, k, generator=gen, dtype=torch.float64)
    return sgdstab.Problem(model.double().eval(), X, Y)


def _dense(problem: sgdstab.Problem) -> torch.Tensor:
    J = problem.jacobian()
    return J @ J.T


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _cnn(k: int) -> nn.Module:
    model = ResidualCNN(k)
    with torch.no_grad():  # eval-mode statistics that are not the identity
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


MODELS = {
    "custom-mlp": (lambda k: CustomMLP(64, k), 64),
    "residual-mlp": (lambda k: ResidualMLP(64, k), 64),
    "residual-cnn-batchnorm": (_cnn, 64),
    "transformer-block": (TinyTransformer, 64),
    "shared-layer-and-gain": (lambda k: SharedLayer(64, k), 64),
    "tied-modules": (lambda k: TiedModules(64, k), 64),
}


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("name", list(MODELS))
def test_module_ntk_equals_dense_jacobian_gram(name, k):
    torch.manual_seed(0)
    build, d = MODELS[name]
    problem = _problem(build(k), d, k)
    built = module_ntk(problem, chunk_size=4)  # three chunks: the blocks between chunks are covered
    assert built.matrix.shape == (N * k, N * k)
    assert _relative(built.matrix, _dense(problem)) < 1e-13
    assert built.check_error < 1e-13
    assert not built.jacobian and not built.notes  # every parameter went through its module


def test_linear_layers_take_the_hadamard_route_and_the_rest_their_own_rows():
    torch.manual_seed(0)
    built = module_ntk(_problem(TinyTransformer(2), 64, 2))
    assert built.hadamard == ("head",)  # once per sample: no rows
    assert "embed" in built.rows  # token-wise: applied at 16 positions
    assert "(model)" in built.rows  # the position table, owned by the parent
    assert {"block.self_attn", "block.norm1", "block.linear1"} <= set(built.rows)
    built = module_ntk(_problem(SharedLayer(64, 2), 64, 2))
    assert set(built.hadamard) == {"a", "c"} and set(built.rows) == {"b", "(model)"}  # b is called twice


def test_ntk_defaults_to_the_module_route_for_models_that_are_not_chains():
    torch.manual_seed(0)
    problem = _problem(_cnn(2), 64, 2)
    K = sgdstab.ntk(problem)
    assert K.route == "modules" and K.notes == ()
    assert _relative(K.matrix, _dense(problem)) < 1e-13
    chain = _problem(nn.Sequential(nn.Linear(64, 5), nn.Tanh(), nn.Linear(5, 2)), 64, 2)
    assert sgdstab.ntk(chain).route == "layerwise"
    assert sgdstab.ntk(problem, method="jacobian").route == "jacobian"


def test_a_parameter_used_outside_its_module_falls_back_to_the_jacobian_with_a_note():
    torch.manual_seed(0)
    problem = _problem(UsedOutsideItsCall(64, 2), 64, 2)
    assert module_ntk(problem).check_error > 1e-3  # the structured sum misses the F.linear use: the check sees it
    K = sgdstab.ntk(problem)
    assert K.route == "jacobian" and "used outside its module" in K.notes[0]
    assert _relative(K.matrix, _dense(problem)) < 1e-13
    with pytest.raises(sgdstab.errors.NtkError, match="layerwise"):
        sgdstab.ntk(problem, method="layerwise")


@pytest.mark.parametrize("tokens", [3, N])  # N: the sequence axis has the batch's length, by coincidence
def test_a_module_with_the_sample_axis_second_is_never_a_wrong_kernel(tokens):
    torch.manual_seed(0)
    problem = _problem(SequenceFirstAttention(tokens, 2), 4 * tokens, 2)
    K = sgdstab.ntk(problem)
    assert _relative(K.matrix, _dense(problem)) < 1e-13
    if tokens != N:  # the output's first axis is not the samples': its rows come from J, said in the notes
        assert K.route == "modules" and any("sample axis" in note for note in K.notes)


def test_float32_module_ntk_matches_float64_to_float32_rounding():
    torch.manual_seed(0)
    problem = _problem(_cnn(2), 64, 2)
    single = sgdstab.Problem(problem.model, problem.X, problem.Y, dtype=torch.float32)
    K32 = sgdstab.ntk(single)
    assert K32.route == "modules" and K32.matrix.dtype == torch.float32
    assert _relative(K32.matrix.double(), _dense(problem)) < 1e-5


def test_owners_lists_each_holder_once_with_layout_names():
    torch.manual_seed(0)
    problem = _problem(TiedModules(64, 1), 64, 1)
    held = {o.name: o.params for o in owners(problem)}
    assert held["a"] == {"weight": "a.weight", "bias": "a.bias"}
    assert held["b"] == {"weight": "a.weight", "bias": "b.bias"}  # the tie: one layout name, two holders
    assert sorted(problem.layout.names) == sorted({n for p in held.values() for n in p.values()})


def test_frozen_parameters_add_nothing():
    torch.manual_seed(0)
    model = CustomMLP(64, 2)
    model.b.requires_grad_(False)
    problem = _problem(model, 64, 2)
    built = module_ntk(problem)
    assert "b" not in built.hadamard + built.rows
    assert _relative(built.matrix, _dense(problem)) < 1e-13


def test_an_exported_program_has_no_module_calls_and_gets_the_jacobian_route_with_a_note():
    torch.manual_seed(0)
    model = CustomMLP(64, 2).double().eval()
    X = torch.randn(N, 64, dtype=torch.float64)
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (X[:2],), dynamic_shapes=({0: batch},)).module()
    problem = sgdstab.Problem(program, X, torch.randn(N, 2, dtype=torch.float64))
    K = sgdstab.ntk(problem)
    assert K.route == "jacobian" and "called with its own parameters" in K.notes[0]
    assert _relative(K.matrix, _dense(problem)) < 1e-13
    with pytest.raises(sgdstab.errors.NoModuleStructureError):
        sgdstab.ntk(problem, method="modules")


def test_curvature_says_when_its_kernel_fell_back_to_the_jacobian():
    torch.manual_seed(0)
    problem = _problem(UsedOutsideItsCall(64, 2), 64, 2)
    curv = sgdstab.curvature(problem, method="kernel")
    assert any("used outside its module" in note for note in curv.notes), curv.notes
    K = _dense(problem)
    assert curv.gauss_newton_frobenius == pytest.approx(float(torch.linalg.matrix_norm(K)) / problem.n, rel=1e-12)
