"""Triton split-KV decode attention kernels for offloaded requests (installed as adrenaline_kernels)."""
