"""Triton kernels of sparsekit, installed as ``sparsekit.kernels``.

One folder per kernel: ``kernel.py`` (``@triton.jit`` code), ``op.py`` (launcher, capabilities,
``not_supported_reasons``) and ``naive.py`` (plain-torch reference of the same contract).
Kernels know nothing about plugins.
"""
