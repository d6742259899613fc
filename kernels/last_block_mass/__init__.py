"""The ``dynamic`` budget's input: per query head, the last block's exact attention mass per kv-block
(``[B, Hq, nKb]``)."""

from .naive import last_block_mass_naive
from .op import CAPABILITIES, Capabilities, KernelConfig, last_block_mass, not_supported_reasons

__all__ = [
    "CAPABILITIES",
    "Capabilities",
    "KernelConfig",
    "last_block_mass",
    "last_block_mass_naive",
    "not_supported_reasons",
]
