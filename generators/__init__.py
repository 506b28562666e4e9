"""Learned crystal generators and the data they are trained on.

Torch-only at their core; nothing here imports from ``agent`` or ``tools``.
"""
