"""Levers beyond stop/continue: adapt the batch size and freeze finished blocks while a run trains.

``BatchSizeController`` estimates the gradient noise scale (McCandlish et al., 2018) from
micro-batch gradient norms and sets the gradient accumulation steps within user bounds;
``Freezer`` freezes a model's blocks front to back once their gradient statistics plateau
(after AutoFreeze, Liu et al., 2021). Both write every change with its reason to the decision
log. PyTorch is optional for metastop: it is imported only when a lever touches a model.
"""
