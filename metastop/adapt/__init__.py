"""Levers beyond stop/continue: adapt the batch size and freeze finished blocks while a run trains.

``BatchSizeController`` estimates the gradient noise scale (McCandlish et al., 2018) from
micro-batch gradient norms and sets the gradient accumulation steps within user bounds;
``Freezer`` freezes a model's blocks front to back once their gradient statistics plateau
(after AutoFreeze, Liu et al., 2021). Both write every change with its reason to the decision
log. PyTorch is optional for metastop: it is imported only when a lever touches a model.
"""

from __future__ import annotations

from metastop._lazy import lazy_exports

# Each public name and the submodule defining it; imported on first use (PEP 562), so
# `import metastop.adapt` stays cheap and needs no torch.
_EXPORTS = {
    "BatchChange": "batchsize",
    "BatchSizeController": "batchsize",
    "LR_SCALING": "batchsize",
    "NoiseScale": "noise",
    "Freezer": "freeze",
    "FreezeOutSchedule": "freeze",
    "freezeout_times": "freeze",
    "BackwardFlops": "flops",
    "BlockLayout": "flops",
    "backward_flops": "flops",
    "find_blocks": "flops",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
