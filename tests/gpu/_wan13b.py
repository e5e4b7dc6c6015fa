"""Wan2.1-T2V-1.3B's published transformer config, and the reduced one the GPU scripts use on a CPU.

``JENGA_SMALL_CHECK=1`` switches the GPU test scripts to the small config, to check the scripts themselves.
"""

import os

import torch

SMALL = os.environ.get("JENGA_SMALL_CHECK") == "1"

FULL_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)
FULL_TEXT = (1, 512, 4096)  # UMT5 prompt embeddings: 512 tokens of 4096

SMALL_CONFIG = {**FULL_CONFIG, "num_attention_heads": 2, "attention_head_dim": 64, "text_dim": 64,
                "ffn_dim": 64, "num_layers": 2}
SMALL_TEXT = (1, 16, 64)


def cast_like_from_pretrained(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``dtype`` everywhere except the modules diffusers keeps in float32 when loading a checkpoint."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        wanted = torch.float32 if keep & set(name.split(".")) else dtype
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(wanted)
    return model
