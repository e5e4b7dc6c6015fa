"""Attention kernels: the portable Triton one (``triton_block_sparse``; its tile table ``tuning``, autotuning on
request ``triton_tune``), Hopper's default in Gluon (``gluon_block_sparse``: FlashAttention-3's ping-pong
schedule), PyTorch reference (``reference``), FlexAttention (``flex``). Kernel files import no diffusers."""


def tune(*args, **kwargs):
    """Autotune the block-sparse kernel for chosen shapes and save the picks in the user's cache (see
    :func:`jenga.kernels.triton_tune.tune`); generations never tune unless asked."""
    from .triton_tune import tune as _tune

    return _tune(*args, **kwargs)
