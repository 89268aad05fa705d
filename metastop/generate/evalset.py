"""Held-out evaluation of a tiny decoder: exact match by greedy decoding and answer-token loss.

Examples are tokenised once into padded tensors (:func:`encode_examples`); the same answer
mask serves the training loss and the evaluation loss, so both average the cross-entropy
over the answer tokens and the final ``<eos>`` only.

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


def answer_loss(model: TinyDecoder, data: Encoded, rows: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens (and ``<eos>``) of examples ``rows``.

    Teacher-forced: the model reads ``<bos> prompt answer`` and predicts each next token;
    prompt positions and padding are masked out.
    """
    length = int(data.lengths[rows].max())
    ids = data.ids[rows, :length]
    inputs, targets = ids[:, :-1], ids[:, 1:]
    position = torch.arange(length - 1)
    mask = ((position >= data.prompt_lengths[rows, None] - 1)
            & (position < data.lengths[rows, None] - 1))
    logits = model(inputs)
    return F.cross_entropy(logits[mask], targets[mask])


@torch.no_grad()
def eval_loss(model: TinyDecoder, data: Encoded) -> float:
    """Answer-token cross-entropy on the whole held-out set (one teacher-forced pass)."""
    model.train(False)  # evaluation mode
    rows = torch.arange(len(data.lengths))
    n_answer = (data.lengths - data.prompt_lengths).float()
    total = sum(float(answer_loss(model, data, chunk)) * float(n_answer[chunk].sum())
                for chunk in rows.split(EVAL_CHUNK))
    model.train()
    return total / float(n_answer.sum())


@torch.no_grad()
def exact_match(model: TinyDecoder, data: Encoded) -> float:
    """Greedy-decode every held-out prompt; share whose answer and ``<eos>`` match exactly."""
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
