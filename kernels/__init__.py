"""Triton kernels for vregion, installed as `vregion_kernels`; they import nothing of vregion."""
