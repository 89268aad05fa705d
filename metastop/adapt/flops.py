"""Backward-pass FLOPs of a model whose front blocks may be frozen, and which blocks it has.

``find_blocks`` names a model's freezable blocks front to back (embeddings, then the block
list; never the head) and what else costs backward FLOPs; the functions below count them.
The rule (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", Sec. 2.1): training
costs about ``6N`` FLOPs per token for ``N`` parameters that run as matrix multiplies: ``2N``
forward (one multiply and one add per weight) and ``4N`` backward, of which ``2N`` compute the
gradients of the activations (``dx = dy W^T``) and ``2N`` those of the weights (``dW = x^T dy``).
What is counted and what is not:

- ``N`` counts every parameter owned by a module other than an ``nn.Embedding`` (biases and
  norms too, as Kaplan et al. do; they are a few percent). An embedding lookup costs ~0 FLOPs
  forward and its gradient is a scatter-add, so embedding matrices are left out, except when
  one is also the output projection (a tied unembedding is a real matmul on every token).
- Attention-score FLOPs (``QK^T`` and the weighted sum, ``~2 n_layer n_ctx d`` per token
  forward) are ignored, as are norms' and activations' element-wise costs.
- A frozen PREFIX of blocks skips both its weight and its activation gradients: autograd
  stops at the first block that needs a gradient. That holds only while nothing in front of
  the prefix needs a gradient: a trainable embedding feeding the first block (for instance a
  token embedding tied to the output projection, which can never be frozen) forces activation
  gradients through every block, and then a frozen block saves its weight gradients (``2N``)
  only. ``input_grad`` says which case applies.
- The first trainable block is charged its activation gradients in full: inside the block they
  are needed for its own weight gradients (only its very first input gradient is skipped).

Example:
    >>> backward_flops(1000, [100, 100], frozen=1, head_params=10)
    BackwardFlops(spent=440000.0, saved=400000.0)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..errors import ParameterError

FORWARD_PER_PARAM = 2.0
"""Forward FLOPs per parameter per token (one multiply, one add)."""
_GIVE_BLOCKS = "pass blocks=[(name, module), ...] front to back"
WEIGHT_GRAD_PER_PARAM = 2.0
"""Backward FLOPs per parameter per token for the weight gradients."""
ACTIVATION_GRAD_PER_PARAM = 2.0
"""Backward FLOPs per parameter per token for the activation gradients."""


class BackwardFlops(NamedTuple):
    """Backward FLOPs of some tokens: ``spent`` with the frozen blocks, ``saved`` by them."""

    spent: float
    saved: float

    @property
    def saved_share(self) -> float:
        """``saved / (spent + saved)``: the share of a full backward pass the freezing saved."""
        total = self.spent + self.saved
        return self.saved / total if total > 0 else 0.0


def backward_flops_per_token(block_params: Sequence[int], *, frozen: int = 0,
                             head_params: int = 0, input_grad: bool = False) -> float:
    """Backward FLOPs per token with the first ``frozen`` of ``block_params`` frozen.

    Args:
        block_params: the matmul parameters (``N``) of each block, front to back.
        frozen: how many blocks, from the front, are frozen (0 .. ``len(block_params)``).
        head_params: matmul parameters behind the blocks that always train (the output head).
        input_grad: whether something in front of the first block needs a gradient (then
            every block computes its activation gradients, frozen or not).

    Example:
        >>> backward_flops_per_token([100, 100], frozen=1)  # block 1 only: 4 x 100
        400.0
    """
    counts = _counts(block_params)
    if (isinstance(frozen, bool) or not isinstance(frozen, numbers.Integral)
            or not 0 <= frozen <= len(counts)):
        raise ParameterError(f"frozen must be an integer in [0, {len(counts)}], "
                             f"got frozen={frozen!r}")
    head = _counts([head_params], name="head_params")[0]
    trainable = sum(counts[frozen:])
    through = sum(counts) if input_grad else trainable  # blocks that pass activation gradients
    head_input = head if (input_grad or frozen < len(counts)) else 0
    return (WEIGHT_GRAD_PER_PARAM * (trainable + head)
            + ACTIVATION_GRAD_PER_PARAM * (through + head_input))


def backward_flops(tokens: float, block_params: Sequence[int], *, frozen: int = 0,
                   head_params: int = 0, input_grad: bool = False) -> BackwardFlops:
    """Backward FLOPs of ``tokens`` tokens, spent with ``frozen`` front blocks frozen and
    saved against training every block (arguments as in ``backward_flops_per_token``).

    Example:
        >>> backward_flops(10, [100, 100], frozen=1, input_grad=True)  # weight grads only
        BackwardFlops(spent=6000.0, saved=2000.0)
    """
    if isinstance(tokens, bool) or not isinstance(tokens, (int, float)) or not (
            math.isfinite(tokens) and tokens >= 0):
        raise ParameterError(f"tokens must be a finite number >= 0, got tokens={tokens!r}")
    options = {"head_params": head_params, "input_grad": input_grad}
    spent = tokens * backward_flops_per_token(block_params, frozen=frozen, **options)
    full = tokens * backward_flops_per_token(block_params, frozen=0, **options)
    return BackwardFlops(float(spent), float(full - spent))


def matmul_parameters(modules: Iterable[Any], *, exclude: Iterable[Any] = ()) -> set[int]:
    """Ids of the parameters owned by a module that is not an ``nn.Embedding`` (a parameter
    shared with such a module, like a tied output projection, counts), minus ``exclude``."""
    from torch import nn

    skip = {id(p) for p in exclude}
    found: set[int] = set()
    for module in modules:
        for each in module.modules():
            if not isinstance(each, nn.Embedding):
                found.update(id(p) for p in each.parameters(recurse=False) if id(p) not in skip)
    return found


def parameter_count(module: Any) -> int:
    """``N`` of ``module``: its parameters outside ``nn.Embedding`` modules, each counted once.

    Example:
        >>> from torch import nn
        >>> parameter_count(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4)))  # 16 + 4
        20
    """
    ids = matmul_parameters([module])
    return sum(p.numel() for p in _unique(module.parameters()) if id(p) in ids)


def block_parameters(blocks: Sequence[tuple[str, Any]]) -> dict[str, int]:
    """``N`` of each named block, front to back (see ``parameter_count``)."""
    return {name: parameter_count(module) for name, module in blocks}


@dataclass(frozen=True)
class BlockLayout:
    """What a freezer may freeze, and what else in the model costs backward FLOPs.

    Attributes:
        blocks: ``(name, module)`` pairs, front to back.
        head_params: matmul parameters outside the blocks (the head; a tied output embedding).
        inputs: parameters in front of the blocks that are never frozen here (a token embedding
            tied to the output): while one needs a gradient, every block passes activation
            gradients through.
        outside: every parameter of the model outside the blocks (the head and the inputs).
    """

    blocks: tuple[tuple[str, Any], ...]
    head_params: int = 0
    inputs: tuple[Any, ...] = ()
    outside: tuple[Any, ...] = ()


def find_blocks(model: Any = None, blocks: Sequence[tuple[str, Any]] | None = None) -> BlockLayout:
    """The freezable blocks of ``model`` (or the ``blocks`` given) and its head's size.

    Found blocks: the ``nn.Embedding`` modules beside the largest ``nn.ModuleList`` (by
    parameters; ``.blocks``, ``.layers``, ``.h``, ``transformer.h``, ``model.layers``, ...),
    then its entries; for an ``nn.Sequential``, its children with parameters but the last. An
    embedding that is also the output projection is not a block: one whose weight another
    module holds (a tied ``lm_head``), or, when no module outside the blocks has a matrix
    weight (the forward must reuse an embedding's matrix as output), the first embedding.

    Raises:
        ParameterError: nothing to name (pass ``blocks=``), or ``blocks`` is malformed.

    Example:
        >>> [name for name, _ in find_blocks(TinyDecoder(52, d_model=8, n_layers=2, n_heads=2,
        ...                                              max_len=8)).blocks]  # doctest: +SKIP
        ['embed', 'position', 'blocks.0', 'blocks.1']
    """
    if model is None and blocks is None:
        raise ParameterError(f"Freezer needs a model or blocks; got model=None, blocks=None: "
                             f"{_GIVE_BLOCKS}")
    found = _check_blocks(blocks) if blocks is not None else _discover(model)
    if model is None:
        return BlockLayout(found)
    inside = [p for _, module in found for p in module.parameters()]
    inside_ids = {id(p) for p in inside}
    embeddings = [m for m in _embeddings(model) if id(m.weight) not in inside_ids]
    head_ids = matmul_parameters([model], exclude=inside)
    head = [p for p in _unique(model.parameters()) if id(p) in head_ids]
    tied = [e.weight for e in embeddings if id(e.weight) in head_ids]
    if not tied and embeddings and not any(p.dim() >= 2 for p in head):
        head.append(embeddings[0].weight)  # the output reuses the (first) token embedding
    inputs = [p for e in embeddings for p in e.parameters()]
    outside = [p for p in _unique(model.parameters()) if id(p) not in inside_ids]
    return BlockLayout(found, sum(p.numel() for p in head), tuple(inputs), tuple(outside))


def _discover(model: Any) -> tuple[tuple[str, Any], ...]:
    from torch import nn

    if not isinstance(model, nn.Module):
        raise ParameterError(f"model must be a torch nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.Sequential):
        children = [(name, m) for name, m in model.named_children() if _has_parameters(m)]
        found = children[:-1]  # the last is the head
    else:
        lists = [(name, m) for name, m in model.named_modules()
                 if isinstance(m, nn.ModuleList) and _has_parameters(m)]
        found = _stack(model, max(lists, key=lambda item: _size(item[1]))) if lists else []
    found = _drop_tied(model, found)
    if not found:
        raise ParameterError(f"found no blocks to freeze in {type(model).__name__}: no "
                             f"nn.ModuleList of blocks (.blocks, .layers, .h, ...) and not an "
                             f"nn.Sequential of two or more layers; {_GIVE_BLOCKS}")
    return tuple(found)


def _stack(model: Any, chosen: tuple[str, Any]) -> list[tuple[str, Any]]:
    """The embeddings beside the block list (and at the top level), then its entries."""
    from torch import nn

    name, blocks = chosen
    parent_name = name.rpartition(".")[0]
    parents = [("", model)] + ([(parent_name, model.get_submodule(parent_name))]
                               if parent_name else [])
    front = [(f"{prefix}.{child}" if prefix else child, m) for prefix, parent in parents
             for child, m in parent.named_children() if isinstance(m, nn.Embedding)]
    return front + [(f"{name}.{i}", m) for i, m in enumerate(blocks) if _has_parameters(m)]


def _drop_tied(model: Any, found: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``found`` without the embeddings that also serve as the output projection."""
    from torch import nn

    holders = matmul_parameters([model])  # parameters a non-embedding module holds
    inside = {id(p) for _, m in found for p in m.parameters()}
    sees_head = any(p.dim() >= 2 and id(p) in holders and id(p) not in inside
                    for p in model.parameters())
    first = next((m for _, m in found if isinstance(m, nn.Embedding)), None)
    return [(name, m) for name, m in found if not isinstance(m, nn.Embedding) or not (
        id(m.weight) in holders or (m is first and not sees_head))]


def _check_blocks(blocks: Any) -> tuple[tuple[str, Any], ...]:
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence) or not blocks:
        raise ParameterError(f"blocks must be a non-empty list of (name, module) pairs, got "
                             f"blocks={blocks!r}")
    names, seen = set(), set()
    for item in blocks:
        if (not isinstance(item, tuple) or len(item) != 2 or not isinstance(item[0], str)
                or not hasattr(item[1], "parameters")):
            raise ParameterError(f"blocks must hold (name, module) pairs, got {item!r}")
        name, module = item
        params = {id(p) for p in module.parameters()}
        if name in names or not params or params & seen:
            rule = ("names must be unique" if name in names else "each block needs parameters"
                    if not params else "no parameter may sit in two blocks")
            raise ParameterError(f"blocks: {rule}, got block {name!r}")
        names.add(name)
        seen |= params
    return tuple(blocks)


def _embeddings(model: Any) -> list[Any]:
    from torch import nn

    return [m for m in model.modules() if isinstance(m, nn.Embedding)]


def _has_parameters(module: Any) -> bool:
    return next(module.parameters(), None) is not None


def _size(module: Any) -> tuple[int, int]:
    return sum(p.numel() for p in module.parameters()), len(module)


def _unique(parameters: Iterable[Any]) -> list[Any]:
    seen: dict[int, Any] = {}
    for p in parameters:
        seen.setdefault(id(p), p)
    return list(seen.values())


def _counts(values: Sequence[int], *, name: str = "block_params") -> list[int]:
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ParameterError(f"{name} must hold integers >= 0, got {name}={list(values)!r}")
        out.append(int(value))
    return out


__all__ = ["ACTIVATION_GRAD_PER_PARAM", "FORWARD_PER_PARAM", "WEIGHT_GRAD_PER_PARAM",
           "BackwardFlops", "BlockLayout", "backward_flops", "backward_flops_per_token",
           "block_parameters", "find_blocks", "matmul_parameters", "parameter_count"]
