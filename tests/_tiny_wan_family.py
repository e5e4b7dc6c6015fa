"""Tiny SkyReels-V2, Wan VACE and Wan video-to-video pipelines built in code (no hub), for fast CPU tests.

Same sizes as ``_tiny``: 128 x 128 pixels, 9 frames -> a 3 x 8 x 8 grid (12 blocks of 16 tokens).
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch
from _tiny import HEIGHT, NUM_FRAMES, WAN_TEXT_DIM, WIDTH, _quiet, clip_image_encoder, image, wan_vae
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    SkyReelsV2DiffusionForcingImageToVideoPipeline,
    SkyReelsV2DiffusionForcingPipeline,
    SkyReelsV2DiffusionForcingVideoToVideoPipeline,
    SkyReelsV2ImageToVideoPipeline,
    SkyReelsV2Pipeline,
    SkyReelsV2Transformer3DModel,
    UniPCMultistepScheduler,
    WanTransformer3DModel,
    WanVACEPipeline,
    WanVACETransformer3DModel,
    WanVideoToVideoPipeline,
)

LONG_FRAMES = 25
SKYREELS_KINDS = ("t2v", "i2v", "df", "df-i2v", "df-v2v")
_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=16, out_channels=16,
    text_dim=WAN_TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
)


def skyreels_transformer(seed: int = 0, **config) -> SkyReelsV2Transformer3DModel:
    torch.manual_seed(seed)
    return SkyReelsV2Transformer3DModel(**{**_TRANSFORMER, **config}).eval()


def vace_transformer(seed: int = 0, **config) -> WanVACETransformer3DModel:
    """Three main blocks, control hints after blocks 0 and 2 (two VACE blocks); control in: 16 + 16 + 64."""
    torch.manual_seed(seed)
    kwargs = {**_TRANSFORMER, "num_layers": 3, "vace_layers": [0, 2], "vace_in_channels": 96, **config}
    return WanVACETransformer3DModel(**kwargs).eval()


def skyreels_pipeline(kind: str = "t2v"):
    """``kind``: ``t2v``, ``i2v`` (CLIP image context, 36 input channels), ``df`` / ``df-i2v`` / ``df-v2v``
    (diffusion forcing: per-frame timesteps; the image or the video's last frames as clean prefix latents)."""
    # SkyReels-V2's own scheduler (the diffusion-forcing loop steps it with integer timesteps)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0)
    common = dict(tokenizer=None, text_encoder=None, scheduler=scheduler)
    if kind == "t2v":
        return _quiet(SkyReelsV2Pipeline(transformer=skyreels_transformer(), vae=None, **common))
    if kind == "i2v":
        transformer = skyreels_transformer(0, in_channels=36, image_dim=16, added_kv_proj_dim=64)
        encoder, processor = clip_image_encoder()
        return _quiet(SkyReelsV2ImageToVideoPipeline(transformer=transformer, vae=wan_vae(), image_encoder=encoder,
                                                     image_processor=processor, **common))
    if kind == "df":
        return _quiet(SkyReelsV2DiffusionForcingPipeline(transformer=skyreels_transformer(), vae=None, **common))
    if kind == "df-i2v":
        return _quiet(SkyReelsV2DiffusionForcingImageToVideoPipeline(transformer=skyreels_transformer(),
                                                                     vae=wan_vae(), **common))
    if kind == "df-v2v":
        return _quiet(SkyReelsV2DiffusionForcingVideoToVideoPipeline(transformer=skyreels_transformer(),
                                                                     vae=wan_vae(), **common))
    raise ValueError(f"unknown kind {kind!r}; accepted: {SKYREELS_KINDS}")


def vace_pipeline():
    return _quiet(WanVACEPipeline(tokenizer=None, text_encoder=None, vae=wan_vae(),
                                  scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), transformer=vace_transformer()))


def v2v_pipeline():
    torch.manual_seed(0)
    return _quiet(WanVideoToVideoPipeline(tokenizer=None, text_encoder=None, vae=wan_vae(),
                                          scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
                                          transformer=WanTransformer3DModel(**_TRANSFORMER).eval()))


def frames(count: int = NUM_FRAMES, seed: int = 4, size: tuple[int, int] = (HEIGHT, WIDTH)) -> list[PIL.Image.Image]:
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)) for _ in range(count)]


def mask_frames(count: int = NUM_FRAMES) -> list[PIL.Image.Image]:
    """White (generate) on the right half, black (keep the control video) on the left."""
    plane = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    plane[:, WIDTH // 2:] = 255
    return [PIL.Image.fromarray(plane) for _ in range(count)]


def _to_tensor(images: list[PIL.Image.Image]) -> torch.Tensor:
    """``[F, C, H, W]`` in ``[0, 1]``."""
    return torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2).float() / 255


def inputs(pipe, batch: int = 1, steps: int = 2, seed: int = 0, long: bool = False, **extra) -> dict:
    """Call arguments with random prompt embeddings (CFG on) and the pipeline's own conditioning; ``long``:
    a diffusion-forcing long video in overlapping windows."""
    text_len = 512 if isinstance(pipe, SkyReelsV2ImageToVideoPipeline) else 12  # its image split is at 512
    embeds, negative = [], []
    for b in range(batch):  # one generator per sample: sample 0 is the same in every batch size
        gen = torch.Generator().manual_seed(seed + 100 + b)
        embeds.append(torch.randn(1, text_len, WAN_TEXT_DIM, generator=gen))
        embeds[-1][:, text_len - 3 * b:] = 0  # per-sample padding as encode_prompt leaves it: zeros
        negative.append(torch.randn(1, text_len, WAN_TEXT_DIM, generator=gen))
    prompt_embeds = torch.cat(embeds)
    kwargs = dict(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=torch.cat(negative),
        height=HEIGHT, width=WIDTH, num_frames=NUM_FRAMES, num_inference_steps=steps, guidance_scale=4.0,
        output_type="latent", seed=seed,
    )
    if isinstance(pipe, (SkyReelsV2ImageToVideoPipeline, SkyReelsV2DiffusionForcingImageToVideoPipeline)):
        kwargs["image"] = image()
    if isinstance(pipe, SkyReelsV2DiffusionForcingPipeline):
        kwargs["prompt"] = None  # positional in its signature
    if long:
        # a long video: 7 latent frames in windows of 4 overlapping by 2 -> windows of 4, 4 and 3 frames
        kwargs.update(num_frames=LONG_FRAMES, base_num_frames=13, overlap_history=5)
    if isinstance(pipe, SkyReelsV2DiffusionForcingVideoToVideoPipeline):
        # the last 5 input frames (2 latent frames) are the clean prefix of the 9 new ones
        kwargs.update(video=frames(9), overlap_history=5, base_num_frames=NUM_FRAMES)
    if isinstance(pipe, WanVACEPipeline):
        if batch == 1:
            kwargs.update(video=frames(), mask=mask_frames())
        else:  # one control video per sample: tensors [B, F, C, H, W] in [0, 1]
            video = torch.stack([_to_tensor(frames(seed=4 + b)) for b in range(batch)])
            kwargs.update(video=video, mask=_to_tensor(mask_frames()).expand(batch, -1, -1, -1, -1))
    if isinstance(pipe, WanVideoToVideoPipeline):
        kwargs.pop("num_frames")
        kwargs.update(video=frames(), strength=0.7)
    kwargs.update(extra)
    return kwargs
