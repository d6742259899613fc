"""Strategies shipped with sparsekit, installed as ``sparsekit.plugins``.

Each folder is a plugin registered through the ``sparsekit`` entry-point group, the same path a
third-party package uses. ``common`` holds reusable stages (top-k mask, fixed budget, torch kernel).
"""
