"""Long-range memory settings: Transformer-XL recurrence, compressive memory, memory layers.

gin (via `model_config.overrides`, dotted keys reach this config):

    model_config.overrides = {'memory.mem_len': 256}                        # Transformer-XL
    model_config.overrides = {'memory.mem_len': 128, 'memory.cmem_len': 128,
                              'memory.compression_rate': 4,
                              'memory.compressor': 'conv'}                  # Compressive
    model_config.overrides = {'memory.mem_len': 256, 'memory.layers': (-1,),
                              'memory.short_mem_len': 32}                   # Rae & Razavi

Each layer with memory keeps a FIFO of its last `mem_len` input hidden states (and,
with `cmem_len` > 0, a second FIFO of `cmem_len` compressed ones: the `T` states that
leave the first FIFO each segment become T / compression_rate). `layers` lists the
layers with this long-range memory (negative indices count from the top; None = all);
the others get `short_mem_len` (0 = no memory there).
The maximum effective context of the stack is sum over layers of (mem + c * cmem).
"""
from __future__ import annotations

import dataclasses
import difflib

COMPRESSORS = ("max_pool", "mean_pool", "conv", "most_used", "identity")


@dataclasses.dataclass(frozen=True)
class LayerMemory:
    """What one decoder layer keeps: FIFO lengths, compression, and RoPE base for its keys."""
    mem_len: int
    cmem_len: int = 0
    compression_rate: int = 1
    compressor: str = "conv"
    rope_base: float = 10000.0


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
    mem_len: int = 256
    cmem_len: int = 0
    compression_rate: int = 1
    compressor: str = "conv"
    layers: tuple[int, ...] | None = None
    short_mem_len: int = 0
    reconstruction_loss_coef: float = 1.0  # weight of the conv compressor's loss

    def __post_init__(self) -> None:
        def fail(field, fix):
            raise ValueError(f"MemoryConfig.{field}={getattr(self, field)!r} is invalid: {fix}")
        for name in ("mem_len", "cmem_len", "short_mem_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                fail(name, "must be an int >= 0")
        if not isinstance(self.compression_rate, int) or self.compression_rate < 1:
            fail("compression_rate", "must be an int >= 1")
        if self.compressor not in COMPRESSORS:
            near = difflib.get_close_matches(str(self.compressor), COMPRESSORS, n=1)
            fail("compressor", f"choose one of {COMPRESSORS}"
                 + (f" (did you mean {near[0]!r}?)" if near else ""))
        if self.compressor == "identity" and self.compression_rate != 1:
            fail("compressor", "'identity' only works with compression_rate=1")
        if self.reconstruction_loss_coef < 0:
            fail("reconstruction_loss_coef", "must be >= 0")
        if self.mem_len == 0 and self.cmem_len == 0:
            fail("mem_len", "set mem_len and/or cmem_len > 0 (or memory=None for no memory)")

    def validate_layers(self, num_layers: int) -> None:
        for i in self.layers or ():
            if not -num_layers <= i < num_layers:
                raise ValueError(f"MemoryConfig.layers={self.layers!r}: layer {i} is out of "
                                 f"range for num_layers={num_layers}")

    def for_layer(self, i: int, num_layers: int, rope_base: float) -> LayerMemory | None:
        """Layer i's memory (None: no memory in that layer)."""
        chosen = self.layers is None or i in {j % num_layers for j in self.layers}
        if chosen:
            return LayerMemory(self.mem_len, self.cmem_len, self.compression_rate,
                               self.compressor, rope_base)
        if self.short_mem_len:
            return LayerMemory(self.short_mem_len, 0, 1, self.compressor, rope_base)
        return None

    def effective_context(self, num_layers: int) -> int:
        """Sum over layers of mem + c * cmem: how far back information can reach."""
        total = 0
        for i in range(num_layers):
            spec = self.for_layer(i, num_layers, 0.0)
            if spec is not None:
                total += spec.mem_len + spec.compression_rate * spec.cmem_len
        return total
