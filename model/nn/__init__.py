"""The network's building blocks (DESIGN.md "Room to grow"): memory, retrieval, gating, sparsity.

The original layers still live at model/ top level (model/layers.py, attention.py, moe.py,
transformer.py); they move here in a move-only commit of their own.
"""
