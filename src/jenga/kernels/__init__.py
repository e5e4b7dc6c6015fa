"""Attention kernels: Triton (``triton_block_sparse``), PyTorch reference (``reference``), FlexAttention
(``flex``). Kernel files import no diffusers."""


def tune(*args, **kwargs):
    """Autotune the block-sparse kernel for chosen shapes and save the picks in the user's cache (see
    :func:`jenga.kernels.tuning.tune`); generations never tune unless asked."""
    from .tuning import tune as _tune

    return _tune(*args, **kwargs)
