"""The torch backend: PyTorch's fused optimizer kernels and ``_foreach`` ops (CPU, and any device
where Triton is unavailable)."""
