"""Triton kernels of sparsekit, installed as ``sparsekit.kernels``.

One folder per kernel: ``kernel.py`` (``@triton.jit`` code), ``op.py`` (launcher, capabilities,
``not_supported_reasons``) and ``naive.py`` (plain-torch reference of the same contract).
Kernels know nothing about plugins.
"""

if __name__ == "kernels":
    # This folder is only importable as a top-level ``kernels`` when a checkout's root is on sys.path
    # (``python -m ...`` or ``python -c ...`` run from the root). That name belongs to Hugging Face's
    # ``kernels`` distribution, which transformers >= 5.25 requires and imports on start-up: hand the
    # name over to it when it is installed, so a checkout never hides it.
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    _root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _elsewhere = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != _root]
    _spec = _machinery.PathFinder.find_spec("kernels", _elsewhere)
    if _spec is not None and _spec.origin and _os.path.isfile(_spec.origin):  # a namespace folder is no install
        _module = _util.module_from_spec(_spec)
        _sys.modules["kernels"] = _module  # the import statement returns what sys.modules holds after this runs
        _spec.loader.exec_module(_module)
