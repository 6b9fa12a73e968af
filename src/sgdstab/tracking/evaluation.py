"""The data a tracker measures on: a fixed evaluation subset of the training data, the batch size and sampling
scheme of the user's loop, and a model of its own in evaluation mode.

- From tensors ``X, Y``: ``eval_size`` samples drawn once, seeded (all of them when there are fewer). The batch
  size is ``batch_size=`` (default: every sample, i.e. gradient descent), the scheme ``sampling=``.
- From a ``torch.utils.data.DataLoader`` (``Y`` None): the first ``eval_size`` samples it yields (a shuffling
  loader yields a random subset), each batch a pair ``(x, y)``. Its ``batch_size`` is B; a ``RandomSampler`` with
  ``replacement=True`` draws with replacement, any other loader is taken as drawing without.

The model is copied once, in evaluation mode (BatchNorm on its running statistics, dropout off: the Hessian of a
random or batch-coupled forward is not defined per sample), and its parameters and buffers are copied from the
user's model before each measurement; the user's model is never changed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sgdstab.conventions import check_sampling
from sgdstab.errors import TrackerError
from sgdstab.utils.validation import check_int


@dataclass(frozen=True)
class EvalData:
    """The evaluation subset and the user's batching (``train_size``: samples in the training data, when known)."""

    X: Tensor
    Y: Tensor
    batch_size: int
    sampling: str
    train_size: int | None
    description: str


def _is_loader(data: Any) -> bool:
    return isinstance(data, torch.utils.data.DataLoader)


def _from_tensors(X: Tensor, Y: Any, eval_size: int, batch_size: Any, sampling: str, seed: int) -> EvalData:
    if not isinstance(Y, Tensor):
        raise TrackerError("Y must be a tensor of targets when X is a tensor (or pass a DataLoader as X and Y=None)")
    if X.ndim == 0 or Y.ndim == 0 or X.shape[0] != Y.shape[0]:
        raise TrackerError(
            f"X and Y must hold the same number of samples, got shapes {tuple(X.shape)} and {tuple(Y.shape)}"
        )
    n = int(X.shape[0])
    if n == 0:
        raise TrackerError("the data are empty")
    b = n if batch_size is None else check_int(batch_size, "batch_size", minimum=1, maximum=n, error=TrackerError)
    if n > eval_size:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:eval_size].to(X.device)
        X, Y = X.index_select(0, idx), Y.index_select(0, idx.to(Y.device))
    what = "gradient descent" if b == n else f"B = {b}"
    return EvalData(X, Y, b, sampling, n, f"{len(X)} of {n} training samples; {what}")


def _pair(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, list | tuple) and len(batch) == 2 and all(isinstance(t, Tensor) for t in batch):
        return batch[0], batch[1]
    raise TrackerError(
        f"the DataLoader must yield (inputs, targets) pairs of tensors, got a {type(batch).__name__}; "
        "pass X and Y as tensors instead"
    )


def _first_samples(loader: Any, eval_size: int) -> tuple[list[Tensor], list[Tensor]]:
    """The first batches of ``loader`` up to ``eval_size`` samples, leaving the random state the loop's batches come
    from as it was: torch's global generators (a shuffling sampler seeds itself from them) and the sampler's own."""
    sampler_gen = getattr(getattr(loader, "sampler", None), "generator", None)
    saved = sampler_gen.get_state() if isinstance(sampler_gen, torch.Generator) else None
    xs, ys, count = [], [], 0
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []):
        for batch in loader:
            x, y = _pair(batch)
            xs.append(x.detach())
            ys.append(y.detach())
            count += len(x)
            if count >= eval_size:
                break
    if saved is not None:
        sampler_gen.set_state(saved)
    return xs, ys


def _from_loader(loader: Any, eval_size: int, batch_size: Any, sampling: str | None) -> EvalData:
    xs, ys = _first_samples(loader, eval_size)
    count = sum(len(x) for x in xs)
    if count == 0:
        raise TrackerError("the DataLoader yielded no samples")
    b = batch_size if batch_size is not None else loader.batch_size
    if b is None:
        raise TrackerError("the DataLoader has no batch_size (a custom batch sampler): pass batch_size=B")
    b = check_int(b, "batch_size", minimum=1, error=TrackerError)
    if sampling is None:
        replacement = isinstance(loader.sampler, torch.utils.data.RandomSampler) and loader.sampler.replacement
        sampling = "with_replacement" if replacement else "without_replacement"
    try:
        train_size: int | None = len(loader.dataset)
    except TypeError:  # an iterable dataset has no length
        train_size = None
    X, Y = torch.cat(xs)[:eval_size], torch.cat(ys)[:eval_size]
    return EvalData(
        X, Y, b, check_sampling(sampling), train_size, f"the first {len(X)} samples of the DataLoader; B = {b}"
    )


def eval_data(X: Any, Y: Any, eval_size: Any, batch_size: Any, sampling: str | None, seed: int) -> EvalData:
    """The tracker's :class:`EvalData` (module docstring). Raises :class:`TrackerError` naming the problem."""
    size = check_int(eval_size, "eval_size", minimum=1, error=TrackerError)
    if _is_loader(X):
        if Y is not None:
            raise TrackerError("with a DataLoader as X, pass Y=None (the loader yields the targets)")
        return _from_loader(X, size, batch_size, sampling)
    if not isinstance(X, Tensor):
        raise TrackerError(f"X must be a tensor of inputs or a DataLoader, got {type(X).__name__}")
    scheme = check_sampling(sampling if sampling is not None else "without_replacement")
    return _from_tensors(X, Y, size, batch_size, scheme, seed)


def evaluation_copy(model: nn.Module) -> nn.Module:
    """The tracker's own copy of ``model`` in evaluation mode, trainable flags kept."""
    if not isinstance(model, nn.Module):
        raise TrackerError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    twin = copy.deepcopy(model)
    twin.eval()
    return twin


@torch.no_grad()
def sync(twin: nn.Module, model: nn.Module) -> None:
    """Copy ``model``'s parameters and buffers into ``twin`` (same architecture, converted to twin's dtype)."""
    for mine, theirs in zip(twin.parameters(), model.parameters(), strict=True):
        mine.copy_(theirs)
    for mine, theirs in zip(twin.buffers(), model.buffers(), strict=True):
        mine.copy_(theirs)
