"""Accelerator implementations, one module per device family."""
