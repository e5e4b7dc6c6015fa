"""Attention kernels: Triton (``triton_block_sparse``; its tile table ``tuning``, autotuning on request
``triton_tune``), an experimental Hopper kernel in Gluon (``gluon_block_sparse``, opt-in), PyTorch reference
(``reference``), FlexAttention (``flex``). Kernel files import no diffusers."""


def tune(*args, **kwargs):
    """Autotune the block-sparse kernel for chosen shapes and save the picks in the user's cache (see
    :func:`jenga.kernels.triton_tune.tune`); generations never tune unless asked."""
    from .triton_tune import tune as _tune

    return _tune(*args, **kwargs)
