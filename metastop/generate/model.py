"""A small decoder-only transformer (pre-norm, learned positions, an untied output head).

The head is its own linear map (not the token embedding transposed), so freezing the
embeddings and a prefix of blocks really removes their part of the backward pass.

Example:
    >>> import torch
    >>> model = TinyDecoder(vocab_size=50, d_model=32, n_layers=1, n_heads=2, max_len=16)
    >>> model(torch.zeros(2, 5, dtype=torch.long)).shape
    torch.Size([2, 5, 50])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ParameterError


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position sees itself and earlier positions."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=-1)
        shape = (batch, length, self.n_heads, width // self.n_heads)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    """Pre-norm transformer block: attention then a 4x MLP, each with a residual."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyDecoder(nn.Module):
    """Decoder-only transformer over a small vocabulary.

    Args:
        vocab_size: number of token ids.
        d_model: width; must be divisible by ``n_heads``.
        n_layers: number of blocks (>= 1).
        n_heads: attention heads.
        max_len: longest sequence the positional table covers.
    """

    def __init__(self, vocab_size: int, *, d_model: int, n_layers: int, n_heads: int,
                 max_len: int):
        super().__init__()
        if d_model % n_heads:
            raise ParameterError(f"d_model must be divisible by n_heads={n_heads}, "
                                 f"got d_model={d_model}")
        if n_layers < 1:
            raise ParameterError(f"n_layers must be >= 1, got n_layers={n_layers}")
        self.max_len = max_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(_init_weights)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits of the next token at every position, shape ``(batch, length, vocab)``."""
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embed(ids) + self.position(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
