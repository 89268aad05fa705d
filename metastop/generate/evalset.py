"""Held-out evaluation of a tiny decoder: greedy exact match and answer-token loss.

Examples are tokenised once into padded tensors (:func:`encode_examples`); the same answer
mask serves the training loss and the evaluation loss, so both average the cross-entropy
over the answer tokens and the final ``<eos>`` only. One teacher-forced pass gives both
held-out numbers (:func:`evaluate`).

Example:
    >>> from metastop.generate.tasks import make_split
    >>> _, held_out = make_split("copy", 2, train_size=4, eval_size=8, seed=0)
    >>> encode_examples(held_out).ids.shape[0]
    8
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .model import TinyDecoder
from .tasks import BOS, EOS, PAD, Example, encode

EVAL_CHUNK = 1024  # examples per forward pass of an evaluation


@dataclass(frozen=True)
class Encoded:
    """A set of examples as padded id tensors."""

    ids: torch.Tensor  # (n, max_len) <bos> prompt answer <eos>, right padded
    lengths: torch.Tensor  # (n,) sequence lengths
    prompt_lengths: torch.Tensor  # (n,) <bos> + prompt
    answers: torch.Tensor  # (n, max_answer + 1) answer <eos>, right padded


def encode_examples(examples: list[Example]) -> Encoded:
    """Tokenise examples into padded tensors."""
    prompts = [[BOS, *encode(e.prompt)] for e in examples]
    answers = [[*encode(e.answer), EOS] for e in examples]
    seqs = [p + a for p, a in zip(prompts, answers)]
    return Encoded(_pad(seqs), torch.tensor([len(s) for s in seqs]),
                   torch.tensor([len(p) for p in prompts]), _pad(answers))


def _pad(rows: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row)
    return out


def _teacher_forced(model: TinyDecoder, data: Encoded,
                    rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits, targets, mask)`` of examples ``rows``: the model reads ``<bos> prompt
    answer`` and predicts each next token; ``mask`` marks the answer tokens and ``<eos>``."""
    length = int(data.lengths[rows].max())
    ids = data.ids[rows, :length]
    position = torch.arange(length - 1)
    mask = ((position >= data.prompt_lengths[rows, None] - 1)
            & (position < data.lengths[rows, None] - 1))
    return model(ids[:, :-1]), ids[:, 1:], mask


def answer_loss(model: TinyDecoder, data: Encoded, rows: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens (and ``<eos>``) of examples ``rows``."""
    logits, targets, mask = _teacher_forced(model, data, rows)
    return F.cross_entropy(logits[mask], targets[mask])


@dataclass(frozen=True)
class Scores:
    """Held-out scores at one evaluation: exact match in [0, 1], loss in nats per token."""

    exact_match: float
    eval_loss: float


@torch.inference_mode()
def evaluate(model: TinyDecoder, data: Encoded) -> Scores:
    """Exact match and answer-token loss of the held-out set, from one teacher-forced pass.

    Greedy decoding reproduces the answer exactly iff, at every answer position, the
    argmax given the true prefix is the true token (while all earlier tokens match, the
    decoded prefix *is* the true prefix). So exact match needs no token-by-token decoding:
    :func:`greedy_exact_match` is the slow reference that gives the same number.
    """
    model.train(False)  # evaluation mode
    hits, loss_sum = 0, 0.0
    for rows in torch.arange(len(data.lengths)).split(EVAL_CHUNK):
        logits, targets, mask = _teacher_forced(model, data, rows)
        loss_sum += float(F.cross_entropy(logits[mask], targets[mask], reduction="sum"))
        hits += int(((logits.argmax(-1) == targets) | ~mask).all(1).sum())
    model.train()
    n_answer = int((data.lengths - data.prompt_lengths).sum())
    return Scores(hits / len(data.lengths), loss_sum / n_answer)


@torch.no_grad()
def greedy_exact_match(model: TinyDecoder, data: Encoded) -> float:
    """Greedy-decode every held-out prompt; share whose answer and ``<eos>`` match exactly
    (token by token: the slow reference for :func:`evaluate`)."""
    model.train(False)  # evaluation mode
    n, answer_len = data.answers.shape
    width = int(data.prompt_lengths.max()) + answer_len
    buffer = torch.full((n, width), PAD, dtype=torch.long)
    rows = torch.arange(n)
    for i, length in enumerate(data.prompt_lengths.tolist()):
        buffer[i, :length] = data.ids[i, :length]
    for j in range(answer_len):
        position = data.prompt_lengths + j
        logits = model(buffer[:, :int(position.max())])
        buffer[rows, position] = logits[rows, position - 1].argmax(-1)
    generated = buffer[rows.unsqueeze(1), data.prompt_lengths.unsqueeze(1) + torch.arange(answer_len)]
    wanted = data.answers != PAD
    model.train()
    return float(((generated == data.answers) | ~wanted).all(1).float().mean())
