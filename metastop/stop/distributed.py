"""One decision on every rank: under ``torch.distributed`` rank 0 decides and broadcasts.

torch is imported only when it is already in use; without an initialised process group every
function here is a no-op.
"""

from __future__ import annotations

import json
import sys

from .decision import Decision


def sync_decision(decision: Decision) -> Decision:
    """Rank 0's decision on every rank when ``torch.distributed`` is initialized.

    The decision travels as JSON in a uint8 tensor (no pickle). Without an initialized
    process group the decision is returned unchanged. Every rank must call this at the
    same point, as with any collective.
    """
    if not _dist_ready():
        return decision
    import torch
    import torch.distributed as dist

    device = (torch.device("cuda", torch.cuda.current_device())
              if dist.get_backend() == "nccl" else torch.device("cpu"))
    payload = json.dumps(decision.to_dict()).encode("utf-8") if dist.get_rank() == 0 else b""
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    buffer = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if dist.get_rank() == 0:
        buffer.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
    dist.broadcast(buffer, src=0)
    return Decision.from_dict(json.loads(bytes(buffer.cpu().numpy().tobytes()).decode("utf-8")))


def _dist_ready() -> bool:
    """Whether torch.distributed is in use; never imports torch itself."""
    dist = sys.modules.get("torch.distributed")
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank()
