"""GPU check of the background warm-up (``jenga._warm_up``), skipped without CUDA.

A fresh process with an empty Triton cache: the warm-up compiles the selector and the attention kernel, and
the carved calls that follow compile nothing, for Wan's self-attention and for HunyuanVideo's joint attention
(video then text tokens, padded prompts as key lengths). A stand-in that missed a compile-time property would
leave the carved call a compile. Then the same through a real patched pipeline: a tiny, randomly initialised
diffusers ``WanPipeline`` (Wan 1.3B's width and head layout, two layers, 5,760 video tokens) patched with the
"base" preset, whose dense first steps start the warm-up and whose later steps carve; every Triton compile of the
run is recorded with its thread and step. Run on a GPU machine: ``python -m pytest tests/gpu/test_warm_up_gpu.py -q``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

SCRIPT = """
import json, sys, torch, triton
from jenga import block_sparse_attention, select_blocks
from jenga._warm_up import KernelWarmUp

seen = []  # every compile this process runs: (kernel, cache hit)
triton.knobs.compilation.listener = lambda **kw: seen.append((kw["src"].name, kw["cache_hit"]))
video, text, heads = (18_018, 0, 12) if sys.argv[1] == "wan" else (28_800, 256, 24)
seq, device = video + text, torch.device("cuda")
warm_up = KernelWarmUp()
warm_up.start((1, seq, heads, 128), torch.bfloat16, device, drop_rate=0.75, cdf_threshold=0.9, block_size=128,
              num_video=video, adjacency=None, always_keep=None, backend="auto", key_lengths=text > 0)
warm_up.wait()
after_warm_up = list(seen)
q, k, v = (torch.randn(1, seq, heads, 128, device=device, dtype=torch.bfloat16) for _ in range(3))
lists = select_blocks(q, k, drop_rate=0.75, cdf_threshold=0.9, block_size=128,
                      num_video_tokens=video if text else None)
lengths = torch.tensor([video + 200], device=device) if text else None  # 200 of 256 text tokens are real
block_sparse_attention(q, k, v, lists.kv_index, lists.kv_count, key_lengths=lengths, check_indices=False)
torch.cuda.synchronize()
print(json.dumps(dict(finished=warm_up.finished, after_warm_up=after_warm_up, carved=seen[len(after_warm_up):])))
"""


@pytest.mark.parametrize("family", ["wan", "hunyuan"])
def test_carved_calls_after_the_warm_up_compile_nothing(tmp_path, family):
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("JENGA_WARM_UP", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT, family], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["finished"] == 2
    names = {name for name, _ in report["after_warm_up"]}
    assert any("select" in n for n in names) and any("block_sparse" in n for n in names), names
    assert report["carved"] == [], report["carved"]  # the carved calls find the warm-up's binaries


# A patched pipeline end to end. Wan 1.3B's width and heads (12 x 128, so the "wan" preset family, and the warm-up's
# stand-in has 2 heads where the model has 12), two layers, small text and feed-forward widths; 33 frames at
# 320 x 512 give a 9 x 20 x 32 grid: 5,760 video tokens, 45 blocks of 128. The "base" preset (drop rates 0.75 / 0.85
# over two halves, p 0.9) with dense_steps 0.25: of 8 steps, 0-1 are dense (the first one starts the warm-up; the
# second must not start another), 2-3 carve at 0.75 and 4-7 at 0.85 (same binaries: the top-k floor is not
# specialised on). Classifier-free guidance on: two forwards per step ("cond", "uncond").
STEPS, FIRST_CARVED = 8, 2
PIPELINE_SCRIPT = """
import json, logging, sys, threading, torch, triton
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
import jenga
from jenga._record import record_of

logging.basicConfig(level=logging.WARNING)
logging.getLogger("jenga").setLevel(logging.DEBUG)  # a failed warm-up thread says why, at debug level, on stderr
device, dtype, steps = torch.device("cuda"), torch.bfloat16, int(sys.argv[1])
step = [0]  # the step under way: callback_on_step_end moves it on after each step
seen = []  # every compile of this process, with the thread that ran it and the step under way when it ended
triton.knobs.compilation.listener = lambda **kw: seen.append(dict(
    name=kw["src"].name, cache_hit=kw["cache_hit"], thread=threading.current_thread().name, step=step[0]))

torch.manual_seed(0)
transformer = WanTransformer3DModel(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=64, freq_dim=256, ffn_dim=256, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6, rope_max_seq_len=1024).eval().to(device)
keep = set(transformer._keep_in_fp32_modules)  # cast as from_pretrained(torch_dtype=torch.bfloat16) does
for name, tensor in [*transformer.named_parameters(), *transformer.named_buffers()]:
    if tensor.is_floating_point():
        tensor.data = tensor.data.to(torch.float32 if keep & set(name.split(".")) else dtype)
pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                   scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
pipe.set_progress_bar_config(disable=True)
jenga.patch(pipe, "base", dense_steps=0.25, collect_stats=True)
g = torch.Generator().manual_seed(1)
prompt, negative = (torch.randn(1, 32, 64, generator=g).to(device, dtype) for _ in range(2))

def next_step(pipe, i, t, tensors):
    step[0] = i + 1
    return tensors

with torch.no_grad():
    latents = pipe(prompt_embeds=prompt, negative_prompt_embeds=negative, height=320, width=512, num_frames=33,
                   num_inference_steps=steps, guidance_scale=5.0, output_type="latent", return_dict=False,
                   generator=torch.Generator().manual_seed(0), callback_on_step_end=next_step)[0]
if device.type == "cuda":
    torch.cuda.synchronize()
warm_up = record_of(pipe.transformer).runtime.kernel_warm_up
density = {}  # carved step -> mean share of (query block, key block) pairs computed, over layers and branches
for stats in jenga.selection_stats(pipe):
    density.setdefault(stats.step, []).append(stats.density)
print(json.dumps(dict(
    tokens=latents.shape[2] * (latents.shape[3] // 2) * (latents.shape[4] // 2), steps_run=step[0],
    finite=bool(torch.isfinite(latents).all()), density={s: sum(d) / len(d) for s, d in density.items()},
    warm_up=dict(runs=warm_up.runs, finished=warm_up.finished, waited_s=warm_up.waited_s), compiles=seen)))
"""

# Every compile the run may hold, by kernel name (anything else fails the test, to be classified here):
# - the warm-up's kernels, jenga's selector (kernels/triton_select.py) and block-sparse attention
#   (kernels/triton_block_sparse.py): compiled on the warm-up's threads only. The dense steps never launch them
#   (their attention is the stock SDPA), so a compile of them on the main thread is a carved step's.
#   On Hopper the attention kernel is the Gluon one (kernels/gluon_block_sparse.py); elsewhere the Triton one.
_ON_HOPPER = torch.cuda.get_device_capability()[0] == 9
WARMED = {"_select_rows", "_gluon_block_sparse_fwd" if _ON_HOPPER else "_block_sparse_fwd"}
# - jenga's fused RMSNorm + RoPE (kernels/triton_qk_prep.py, eager CUDA only): the dense steps run it too; the
#   first forward's RoPE starts its compile on a warm-up thread of its own (Wan), which the first attention joins,
#   so it no longer compiles on the main thread either.
WARMED |= {"_rms_norm_rope"}
# Nothing else compiles in this eager run: no torch.compile (no inductor kernels), and diffusers' and PyTorch's
# eager ops (SDPA included) ship their kernels built.


def test_patched_pipeline_compiles_nothing_at_its_carved_steps(tmp_path):
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("JENGA_WARM_UP", None)
    done = subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(STEPS)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    context = f"{json.dumps(report, indent=1)}\n--- subprocess stderr (tail) ---\n{done.stderr[-3000:]}"

    assert report["tokens"] == 5760 and report["steps_run"] == STEPS and report["finite"], context
    # jenga carved: the selector's statistics come from the carved steps, exactly those past dense_steps, and
    # each dropped blocks (random weights keep most of them at p 0.9: nearly uniform block scores)
    density = {int(s): d for s, d in report["density"].items()}
    assert sorted(density) == list(range(FIRST_CARVED, STEPS)), context
    assert all(0.0 < d < 1.0 for d in density.values()), context
    # the warm-up ran once (started at the first forward's RoPE; the dense steps found its shapes done) and its
    # three threads (selector, attention, fused RMSNorm + RoPE) ran through
    assert report["warm_up"]["runs"] == 1 and report["warm_up"]["finished"] == 3, context

    compiles = report["compiles"]
    unknown = sorted({c["name"] for c in compiles} - WARMED)
    assert not unknown, f"unclassified compiles {unknown}: add them to WARMED\n{context}"
    warmed = [c for c in compiles if c["name"] in WARMED]
    assert {c["name"] for c in warmed} == WARMED, context  # the warm-up compiled the three kernels ...
    assert all(c["thread"].startswith("jenga-kernel-warm-up-") and not c["cache_hit"] for c in warmed), context
    # the thread tells whose compile it is, not the step: a warm-up thread may end its compile during the first
    # carved step, whose forward waits for it before it carves (the dense steps of a tiny model take milliseconds)
    on_main = [c for c in compiles if c["thread"] == "MainThread"]
    carved = [c for c in on_main if c["step"] >= FIRST_CARVED]
    assert carved == [], f"compiles at carved steps: {carved}\n{context}"  # ... so the carved steps compile nothing
    assert on_main == [], context  # nor does the main thread at the dense steps
