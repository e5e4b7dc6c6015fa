"""Attention kernels: Triton (``triton_block_sparse``), PyTorch reference (``reference``), FlexAttention
(``flex``). Kernel files import no diffusers."""
