"""Triton kernels for the fused optimizer steps.

Importing this package imports triton; :mod:`ds_kernels` imports it only when a step first takes
the Triton backend. ``TRITON_INTERPRET=1`` must be set before that import for the kernels to run
on CPU tensors (Triton reads it when the kernels are defined).
"""
