"""The adapter facts jenga reads from diffusers (block metadata, its private accessor) and derives
(``jenga.supported()``): a diffusers change that breaks them fails here, by name."""

from __future__ import annotations

import pytest
import torch
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.models.transformers.transformer_hunyuan_video import (
    HunyuanVideoSingleTransformerBlock,
    HunyuanVideoTokenReplaceSingleTransformerBlock,
    HunyuanVideoTokenReplaceTransformerBlock,
    HunyuanVideoTransformerBlock,
)
from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15TransformerBlock
from diffusers.models.transformers.transformer_wan import WanTransformerBlock

import jenga
from jenga.adapters import adapter_for
from jenga.skipping import block_metadata


def test_supported_lists_every_adapter_pipeline_and_transformer():
    found = jenga.supported()
    assert found.transformers == ("CogVideoXTransformer3DModel", "HunyuanVideo15Transformer3DModel",
                                  "HunyuanVideoTransformer3DModel", "LTXVideoTransformer3DModel",
                                  "SkyReelsV2Transformer3DModel", "WanTransformer3DModel", "WanVACETransformer3DModel")
    assert found.pipelines == ("WanPipeline", "WanImageToVideoPipeline", "WanVideoToVideoPipeline",
                               "HunyuanVideoPipeline", "HunyuanVideoImageToVideoPipeline", "CogVideoXPipeline",
                               "CogVideoXImageToVideoPipeline", "LTXPipeline", "LTXImageToVideoPipeline",
                               "LTXConditionPipeline", "SkyReelsV2Pipeline", "SkyReelsV2ImageToVideoPipeline",
                               "SkyReelsV2DiffusionForcingPipeline", "SkyReelsV2DiffusionForcingImageToVideoPipeline",
                               "SkyReelsV2DiffusionForcingVideoToVideoPipeline", "WanVACEPipeline",
                               "HunyuanVideo15Pipeline", "HunyuanVideo15ImageToVideoPipeline")


def test_unsupported_transformer_error_names_pipelines_and_transformers():
    with pytest.raises(TypeError) as err:
        adapter_for(torch.nn.Linear(1, 1))
    for name in (*jenga.supported().pipelines, *jenga.supported().transformers):
        assert name in str(err.value)


@pytest.mark.parametrize("block_class, encoder_index", [
    (WanTransformerBlock, None),
    (HunyuanVideoTransformerBlock, 1),
    (HunyuanVideoSingleTransformerBlock, 1),
    (HunyuanVideoTokenReplaceTransformerBlock, 1),
    (HunyuanVideoTokenReplaceSingleTransformerBlock, 1),
    (HunyuanVideo15TransformerBlock, 1),  # registered by jenga.adapters.hunyuan_video15 (diffusers 0.42 has none)
])
def test_diffusers_block_metadata_of_the_skipped_blocks(block_class, encoder_index):
    meta = TransformerBlockRegistry.get(block_class)
    assert meta.return_hidden_states_index == 0
    assert meta.return_encoder_hidden_states_index == encoder_index
    assert meta.hidden_states_argument_name == "hidden_states"
    assert meta.encoder_hidden_states_argument_name == "encoder_hidden_states"


def test_private_parameter_accessor_reads_positional_and_keyword():
    """jenga.skipping reads block inputs through this private diffusers method: pin its behaviour."""
    meta = TransformerBlockRegistry.get(HunyuanVideoTransformerBlock)
    hidden, text = object(), object()
    assert meta._get_parameter_from_args_kwargs("hidden_states", (hidden, text)) is hidden
    assert meta._get_parameter_from_args_kwargs("encoder_hidden_states", (hidden, text)) is text
    by_name = {"encoder_hidden_states": text}
    assert meta._get_parameter_from_args_kwargs("encoder_hidden_states", (hidden,), by_name) is text


def test_block_without_metadata_is_a_type_error():
    with pytest.raises(TypeError, match="TransformerBlockMetadata for Linear.*skip_steps=\\(\\)"):
        block_metadata(torch.nn.Linear(1, 1))


def test_pixel_multiple_is_an_adapter_fact():
    from diffusers import HunyuanVideo15Transformer3DModel, HunyuanVideoTransformer3DModel, WanTransformer3DModel

    for cls in (WanTransformer3DModel, HunyuanVideoTransformer3DModel, HunyuanVideo15Transformer3DModel):
        adapter = adapter_for(cls.__new__(cls))
        assert adapter.pixel_multiple == 16
        assert set(adapter.image_to_video_pipelines) <= set(adapter.pipelines)
