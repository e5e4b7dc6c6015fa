"""Tiny Wan and HunyuanVideo pipelines built from configs in code (no hub), for fast CPU tests.

Sizes are chosen so that a 9-frame 128x128 clip gives a 3 x 8 x 8 = 192-token grid: 12 blocks of 16
tokens, enough for the selector to really drop blocks. Heads are 2 x 32 (a power of two for Triton).
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKLHunyuanVideo,
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoImageToVideoPipeline,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
)

HEIGHT = WIDTH = 128
NUM_FRAMES = 9
GRID = (3, 8, 8)  # latent frames (9 - 1) / 4 + 1, pixels / 8 / patch 2
WAN_TEXT_DIM = 32
HUNYUAN_TEXT_DIM = 16
HUNYUAN_POOLED_DIM = 8


def wan_transformer(seed: int = 0, **config) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    kwargs = dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=16, out_channels=16,
        text_dim=WAN_TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )
    kwargs.update(config)
    return WanTransformer3DModel(**kwargs).eval()


def wan_vae(z_dim: int = 16, **config) -> AutoencoderKLWan:
    torch.manual_seed(1)
    kwargs = dict(base_dim=3, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                  temperal_downsample=[False, True, True])
    if z_dim != 16:
        kwargs.update(latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim)
    kwargs.update(config)
    return AutoencoderKLWan(**kwargs).eval()


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def wan_pipeline(kind: str = "t2v", text_encoder: bool = False) -> WanPipeline | WanImageToVideoPipeline:
    """See ``_wan_pipeline``; ``text_encoder=True`` adds a tiny UMT5 and word-level tokenizer."""
    pipe = _wan_pipeline(kind)
    if text_encoder:
        tokenizer, encoder = wan_text_encoder()
        pipe.register_modules(tokenizer=tokenizer, text_encoder=encoder)
    return _quiet(pipe)


def wan_text_encoder():
    """A one-layer UMT5 encoder (32 channels = the tiny transformer's text_dim) and a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    words = ["a", "cat", "dog", "runs", "on", "the", "beach", "in", "snow", "red", "blue"]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                        eos_token="</s>")
    torch.manual_seed(3)
    config = UMT5Config(vocab_size=len(vocab), d_model=WAN_TEXT_DIM, d_kv=16, d_ff=32, num_layers=1, num_heads=2,
                        relative_attention_num_buckets=8)
    return tokenizer, UMT5EncoderModel(config).eval()


def hunyuan_pipeline(kind: str = "t2v") -> HunyuanVideoPipeline | HunyuanVideoImageToVideoPipeline:
    return _quiet(_hunyuan_pipeline(kind))


def _wan_pipeline(kind: str) -> WanPipeline | WanImageToVideoPipeline:
    """``kind``: ``t2v`` (Wan 2.1), ``i2v`` (Wan 2.1 I2V, image context), ``a14b`` (Wan 2.2, two
    transformers), ``ti2v`` (Wan 2.2 TI2V-5B style, per-token timesteps)."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
    if kind == "t2v":
        return WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler,
                           transformer=wan_transformer())
    if kind == "a14b":
        return WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler,
                           transformer=wan_transformer(0), transformer_2=wan_transformer(7), boundary_ratio=0.6)
    if kind == "ti2v":
        return WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler,
                           transformer=wan_transformer(0, in_channels=48, out_channels=48), expand_timesteps=True)
    if kind == "i2v":
        transformer = wan_transformer(0, in_channels=36, image_dim=16, added_kv_proj_dim=64)
        encoder, processor = clip_image_encoder()
        return WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=wan_vae(), scheduler=scheduler,
                                       image_processor=processor, image_encoder=encoder, transformer=transformer)
    raise ValueError(f"unknown kind {kind!r}")


def wan_inputs(pipe, batch: int = 1, steps: int = 4, seed: int = 0, **extra) -> dict:
    """Call arguments with random prompt embeddings (CFG on: a negative prompt embedding too)."""
    gen = torch.Generator().manual_seed(seed + 100)
    text_len = 512 if isinstance(pipe, WanImageToVideoPipeline) else 12  # Wan I2V splits at 512
    kwargs = dict(
        prompt_embeds=torch.randn(batch, text_len, WAN_TEXT_DIM, generator=gen),
        negative_prompt_embeds=torch.randn(batch, text_len, WAN_TEXT_DIM, generator=gen),
        height=HEIGHT, width=WIDTH, num_frames=NUM_FRAMES, num_inference_steps=steps, guidance_scale=4.0,
        output_type="latent", seed=seed,
    )
    if isinstance(pipe, WanImageToVideoPipeline):
        kwargs["image"] = image()
    kwargs.update(extra)
    return kwargs


def hunyuan_transformer(seed: int = 0, **config) -> HunyuanVideoTransformer3DModel:
    torch.manual_seed(seed)
    kwargs = dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=32, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=HUNYUAN_TEXT_DIM, pooled_projection_dim=HUNYUAN_POOLED_DIM, rope_axes_dim=(8, 12, 12),
    )
    kwargs.update(config)
    return HunyuanVideoTransformer3DModel(**kwargs).eval()


def hunyuan_vae() -> AutoencoderKLHunyuanVideo:
    torch.manual_seed(1)
    return AutoencoderKLHunyuanVideo(
        latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
        mid_block_add_attention=False,
    ).eval()


def _hunyuan_pipeline(kind: str) -> HunyuanVideoPipeline | HunyuanVideoImageToVideoPipeline:
    """``kind``: ``t2v``, ``i2v`` (latent_concat image conditioning) or ``i2v-replace`` (token_replace)."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    if kind == "t2v":
        return HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=hunyuan_transformer(),
                                    vae=None, scheduler=scheduler, text_encoder_2=None, tokenizer_2=None)
    if kind in ("i2v", "i2v-replace"):
        if kind == "i2v":
            transformer = hunyuan_transformer(0, in_channels=9, image_condition_type="latent_concat")
        else:
            transformer = hunyuan_transformer(0, image_condition_type="token_replace")
        return HunyuanVideoImageToVideoPipeline(
            text_encoder=None, tokenizer=None, transformer=transformer, vae=hunyuan_vae(), scheduler=scheduler,
            text_encoder_2=None, tokenizer_2=None, image_processor=None,
        )
    raise ValueError(f"unknown kind {kind!r}")


def hunyuan_inputs(pipe, batch: int = 2, steps: int = 4, seed: int = 0, cfg: bool = True, **extra) -> dict:
    """Per-sample text padding: sample b keeps ``text_len - 3 * b`` valid tokens."""
    gen = torch.Generator().manual_seed(seed + 100)
    text_len = 10

    def text():
        mask = torch.zeros(batch, text_len, dtype=torch.int64)
        for b in range(batch):
            mask[b, : text_len - 3 * b] = 1
        return (torch.randn(batch, text_len, HUNYUAN_TEXT_DIM, generator=gen),
                torch.randn(batch, HUNYUAN_POOLED_DIM, generator=gen), mask)

    embeds, pooled, mask = text()
    kwargs = dict(
        prompt_embeds=embeds, pooled_prompt_embeds=pooled, prompt_attention_mask=mask,
        height=HEIGHT, width=WIDTH, num_frames=NUM_FRAMES, num_inference_steps=steps,
        output_type="latent", seed=seed,
    )
    if cfg:
        neg, neg_pooled, neg_mask = text()
        kwargs.update(negative_prompt_embeds=neg, negative_pooled_prompt_embeds=neg_pooled,
                      negative_prompt_attention_mask=neg_mask, true_cfg_scale=3.0)
    if isinstance(pipe, HunyuanVideoImageToVideoPipeline):
        kwargs["image"] = [image(seed) for seed in range(batch)]  # one image per sample
    kwargs.update(extra)
    return kwargs


def clip_image_encoder():
    """A 2-layer CLIP vision tower (16 channels) and its processor, for Wan 2.1 I2V's image context."""
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(2)
    config = CLIPVisionConfig(hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return CLIPVisionModel(config).eval(), processor


def image(seed: int = 3) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8))


def run(pipe, inputs: dict) -> torch.Tensor:
    """Run the pipeline with a fresh generator from ``inputs["seed"]`` and return the latents."""
    inputs = dict(inputs)
    inputs["generator"] = torch.Generator().manual_seed(inputs.pop("seed"))
    with torch.no_grad():
        return pipe(**inputs, return_dict=False)[0]


def run_regionally_compiled(pipe, inputs: dict, recompile_limit: int = 8) -> torch.Tensor:
    """``run`` with every block compiled on its own (diffusers' ``compile_repeated_blocks``, eager backend), failing
    when the blocks need more than ``recompile_limit`` graphs."""
    torch._dynamo.reset()
    pipe.transformer.compile_repeated_blocks(backend="eager", dynamic=False)
    try:
        with torch._dynamo.config.patch(recompile_limit=recompile_limit, fail_on_recompile_limit_hit=True):
            return run(pipe, inputs)
    finally:
        torch._dynamo.reset()


def branch_states(transformer):
    """The per-CFG-branch state of a patched transformer: its clock hook's ``BranchStates``."""
    from jenga._hooks import CLOCK_HOOK

    for module, name, _, _ in transformer._jenga_patch.hooks:
        if name == CLOCK_HOOK:
            return module._diffusers_hook.get_hook(name).state_manager
    raise LookupError("no clock hook in this patch")


# patch settings: every block kept through the block-sparse path (must equal stock), and real carving
# (no step skipping: the HunyuanVideo presets skip steps, which changes the output on its own)
ALL_BLOCKS = dict(block_size=16, drop_rates=0.0, dense_threshold=None, dense_steps=0.0, min_video_blocks=1,
                  backend="torch", collect_stats=True, skip_steps=())
CARVING = dict(block_size=16, drop_rates=0.7, cdf_threshold=0.3, dense_steps=0.0, backend="torch",
               collect_stats=True, skip_steps=())


def lora_state_dict(transformer, paths: list[str], rank: int = 2, seed: int = 5) -> dict[str, torch.Tensor]:
    """A random rank-``rank`` LoRA (diffusers/PEFT key format) on the Linear layers at ``paths``."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for path in paths:
        linear = transformer.get_submodule(path)
        state[f"transformer.{path}.lora_A.weight"] = torch.randn(rank, linear.in_features, generator=gen) * 0.3
        state[f"transformer.{path}.lora_B.weight"] = torch.randn(linear.out_features, rank, generator=gen) * 0.3
    return state
