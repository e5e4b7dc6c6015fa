"""The ``jenga`` command: ``demo`` (offline, the shipped toy model), ``generate`` (a real model), ``bench``,
``calibrate`` (measure carving on your model and pick a config).

Exit codes: 0 success; 1 the run failed (a runtime error while generating or benchmarking); 2 a usage or
input problem (bad option, model not found or not downloadable offline, no CUDA for a GPU benchmark).
Heavy imports (torch, diffusers) happen inside the commands, so ``jenga --help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["main"]

OK, FAILED, USAGE = 0, 1, 2

EXIT_CODES = """exit codes:
  0  success
  1  the run failed (runtime error while loading, generating or benchmarking)
  2  usage or input error: bad option, model not found (or not downloadable offline), no CUDA for a benchmark
"""


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.run(args)
    except UsageError as err:
        print(f"jenga {args.command}: {err}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print("jenga: interrupted", file=sys.stderr)
        return FAILED


# ----------------------------------------------------------------------------------------------------
# argument parsing


def _parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="jenga", formatter_class=formatter, epilog=EXIT_CODES,
        description="Training-free attention carving for video diffusion transformers in diffusers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging (jenga's stage decisions)")

    demo = sub.add_parser(
        "demo", parents=[common], formatter_class=formatter, epilog=EXIT_CODES,
        help="offline demo: the toy video model shipped with jenga, dense vs jenga",
        description=_wrap(
            "Load the toy video model that ships with jenga (a small Wan transformer trained on clips of "
            "coloured shapes moving over a textured background; nothing downloaded), run it dense and with "
            "jenga on the same seed, print time, speed-up, blocks kept, PSNR and what each video shows of "
            "the prompt, and write a side-by-side GIF (and MP4 when imageio is installed) plus a picture of "
            "one block mask."
        ),
    )
    demo.add_argument("--out-dir", type=Path, default=Path("jenga-demo"),
                      help="folder for dense_vs_jenga.gif/.mp4 and block_mask.png (default: ./jenga-demo)")
    demo.add_argument("--prompt", default="a red disc moving right",
                      help="'<colour> <shape> <direction>' (optionally 'and' a second object); colours red, "
                           "green, blue, yellow, magenta, cyan; shapes disc, square; directions up, down, left, "
                           "right (default: 'a red disc moving right')")
    demo.add_argument("--size", choices=("default", "small", "full"), default="default",
                      help="default: 8 frames 32x32, 32 blocks of 64 (about a minute on 2 CPU cores); small: 4 "
                           "frames 32x32, 32 blocks of 32 (seconds); full: 16 frames 64x64, 128 blocks of 128, "
                           "the model's training size (seconds on a GPU; on a CPU at least 40x the default's work, "
                           "so it needs --force there)")
    demo.add_argument("--force", action="store_true", help="run --size full on a CPU anyway")
    demo.add_argument("--steps", type=_positive_int, default=None,
                      help="denoising steps (default: 6, small: 4, full: 30)")
    demo.add_argument("--preset", choices=("base", "turbo"), default="base",
                      help="Wan preset (default: base). turbo runs at every size with its two drop rates and dense "
                           "first steps, but its 0.75 first stage is at reduced resolution (48x48) only with --size "
                           "full: at 32 pixels 0.75 rounds back to 32, as WanPipeline needs multiples of 16 (the demo "
                           "says so when it happens)")
    demo.add_argument("--cdf-threshold", type=float, default=None,
                      help="p, the block-score mass to keep (default: the preset's, 0.9)")
    demo.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ...")
    demo.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    demo.add_argument("--threads", type=_positive_int, default=1,
                      help="CPU threads for torch (default 1: the demo's matrices are small, and on a busy machine "
                           "more threads mostly wait for each other)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(run=_cmd_demo)

    gen = sub.add_parser(
        "generate", parents=[common], formatter_class=formatter, epilog=EXIT_CODES,
        help="generate a clip with a real Wan or HunyuanVideo model, patched by jenga",
        description=_wrap(
            "Load a pipeline with diffusers (hub id or local folder), patch it with jenga, generate and "
            "write an MP4. With --dense, first run the stock pipeline on the same seed and print the "
            "speed-up. Offline without the weights: a one-line message and exit code 2."
        ),
    )
    gen.add_argument("--model", required=True, help="hub id (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers) or local folder")
    gen.add_argument("--prompt", required=True, help="text prompt")
    gen.add_argument("--negative-prompt", default=None, help="negative prompt (default: the pipeline's)")
    gen.add_argument("--image", type=Path, default=None, help="first-frame image for image-to-video pipelines")
    gen.add_argument("--last-image", type=Path, default=None,
                     help="last-frame image, with --image, for first-and-last-frame models (Wan2.1-FLF2V)")
    gen.add_argument("--preset", default=None,
                     help="jenga preset of the model family: base, turbo (all), flash, 3stage (HunyuanVideo); "
                          "default: base")
    gen.add_argument("--out", type=Path, default=Path("clip.mp4"), help="output MP4 (default: clip.mp4)")
    gen.add_argument("--height", type=_positive_int, default=None, help="pixels (default: the pipeline's)")
    gen.add_argument("--width", type=_positive_int, default=None, help="pixels (default: the pipeline's)")
    gen.add_argument("--frames", type=_positive_int, default=None, help="frame count (default: the pipeline's)")
    gen.add_argument("--steps", type=_positive_int, default=50, help="denoising steps (default 50)")
    gen.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's)")
    gen.add_argument("--fps", type=_positive_int, default=16, help="frames per second of the MP4 (default 16)")
    gen.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    gen.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16",
                     help="weights dtype (default bfloat16)")
    gen.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, ...")
    gen.add_argument("--offload", action="store_true", help="model CPU offload (needs accelerate), for small GPUs")
    gen.add_argument("--dense", action="store_true",
                     help="also run the stock pipeline first (same seed) and print the speed-up")
    gen.set_defaults(run=_cmd_generate)

    bench = sub.add_parser(
        "bench", parents=[common], formatter_class=formatter, epilog=EXIT_CODES,
        help="run a GPU benchmark from the source checkout's benchmarks/ folder",
        description=_wrap(
            "Run benchmarks/attention.py or benchmarks/pipeline.py (they ship with the source checkout, "
            "not the wheel; run from the repository root). Arguments after the name go to the script: "
            "`jenga bench pipeline -- --help` lists them. Needs a CUDA GPU, except `pipeline --tiny`."
        ),
    )
    bench.add_argument("name", choices=("attention", "pipeline"), help="which benchmark")
    bench.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    bench.set_defaults(run=_cmd_bench)

    doctor = sub.add_parser(
        "doctor", parents=[common], formatter_class=formatter, epilog=EXIT_CODES,
        help="print what a bug report needs: versions, GPU, kernel path, cached models",
        description=_wrap(
            "Print the versions of jenga, Python, torch, Triton, diffusers, transformers and huggingface_hub; "
            "the GPU and its compute capability; which attention path jenga will use here (our Triton kernel "
            "with tensor-descriptor or pointer loads, or PyTorch SDPA on a CPU), the tile configurations its "
            "autotuner will try, and, with --model, whether the local Hugging Face cache holds that pipeline. "
            "Never touches the network."
        ),
    )
    doctor.add_argument("--model", action="append", default=[],
                        help="hub id or folder to look for in the offline cache (repeatable)")
    doctor.set_defaults(run=_cmd_doctor)
    _add_calibrate_parser(sub, common, formatter)
    return parser


def _wrap(text: str) -> str:
    """Descriptions are wrapped here: the raw formatter (kept for the exit-code table) does not wrap."""
    return textwrap.fill(text, 100)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jenga-video")
    except PackageNotFoundError:
        return "unknown"


# ----------------------------------------------------------------------------------------------------
# demo


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import SIZES, replace_size, run_demo, summary

    size = SIZES[args.size]
    if args.steps is not None:
        size = replace_size(size, steps=args.steps)
    if args.cdf_threshold is not None and not 0.0 <= args.cdf_threshold <= 1.0:
        raise UsageError(f"--cdf-threshold must be in [0, 1], got {args.cdf_threshold}")
    from .toy.data import Prompt

    try:
        Prompt.parse(args.prompt)
    except ValueError as err:
        raise UsageError(f"--prompt: {err} (e.g. 'a green square moving left')") from None
    device = _device(args.device)
    if args.size == "full" and device == "cpu" and not args.force:
        default, full = SIZES["default"], SIZES["full"]
        work = (full.frames * full.height * full.width) / (default.frames * default.height * default.width)
        work *= size.steps / default.steps
        raise UsageError(f"--size full on a CPU is at least {work:.0f}x the default size's work (the default takes "
                         "about a minute on 2 cores; attention grows with the square of the tokens, so expect well "
                         "over an hour): use a GPU, the default size, or add --force")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        result = run_demo(args.out_dir, size, prompt=args.prompt, preset=args.preset,
                          cdf_threshold=args.cdf_threshold,
                          device=device, seed=args.seed, progress=not args.no_progress, say=print)
    except (RuntimeError, OSError) as err:
        print(f"jenga demo failed: {type(err).__name__}: {err}", file=sys.stderr)
        return FAILED
    finally:
        torch.set_num_threads(threads)  # main() may run inside another program (tests)
    print("\n".join(summary(result)))
    return OK


def _device(name: str) -> str:
    """Check a ``--device`` value early, so a typo is a usage error and not a traceback mid-run."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device here; use --device cpu")
    return name


# ----------------------------------------------------------------------------------------------------
# generate


def _cmd_generate(args: argparse.Namespace) -> int:
    _check_generate_arguments(args)  # every input error before torch, diffusers or the model is loaded
    from . import _cli_parallel

    parallel = _cli_parallel.launched_by_torchrun()
    if parallel and args.offload:
        raise UsageError("--offload does not combine with torchrun (one GPU per process)")
    device = _device(args.device)
    from .hub import availability_problem

    problem = availability_problem(args.model)
    if problem is not None:
        raise UsageError(problem)
    import torch

    pipe = _load_pipeline(args.model, getattr(torch, args.dtype))

    import jenga

    main_rank = True
    try:
        if parallel:
            main_rank = _cli_parallel.setup(pipe)
        elif args.offload:
            pipe.enable_model_cpu_offload()
        else:
            pipe.to(device)
        call = _call_arguments(pipe, args)
        try:  # before any generation: an unsupported pipeline or unknown preset fails at once
            jenga.patch(pipe, args.preset)
        except (TypeError, ValueError) as err:
            raise UsageError(str(err)) from None
        dense_seconds = None
        if args.dense:
            jenga.unpatch(pipe)
            dense_seconds, _ = _generate(pipe, call, args.seed, "stock")
            jenga.patch(pipe, args.preset)
        jenga_seconds, frames = _generate(pipe, call, args.seed, "jenga")
    except torch.cuda.OutOfMemoryError as err:
        print(f"jenga generate: out of GPU memory ({err}); try --offload, fewer --frames or a smaller size",
              file=sys.stderr)
        return FAILED
    except (RuntimeError, ValueError) as err:
        print(f"jenga generate failed: {type(err).__name__}: {err}", file=sys.stderr)
        return FAILED

    if parallel:
        _cli_parallel.finish()
        if not main_rank:
            return OK

    from diffusers.utils import export_to_video

    args.out.parent.mkdir(parents=True, exist_ok=True)
    export_to_video(frames, str(args.out), fps=args.fps)
    print(f"jenga: {jenga_seconds:.1f} s")
    if dense_seconds is not None:
        print(f"stock: {dense_seconds:.1f} s -> speed-up {dense_seconds / jenga_seconds:.2f}x")
    print(f"wrote {args.out}")
    return OK


def _check_generate_arguments(args: argparse.Namespace) -> None:
    """What can be checked without the model: files, sizes, the output name, the preset's name."""
    for flag, path in (("--image", args.image), ("--last-image", args.last_image)):
        if path is not None and not path.is_file():
            raise UsageError(f"{flag} {path}: no such file")
    if args.last_image is not None and args.image is None:
        raise UsageError("--last-image needs --image (the first frame)")
    for flag, value in (("--height", args.height), ("--width", args.width)):
        if value is not None and value % 16:
            raise UsageError(f"{flag} {value}: must be a multiple of 16 (the VAE's 8x times the 2x2 patches), "
                             f"e.g. {max(16, value // 16 * 16)} or {value // 16 * 16 + 16}")
    if args.out.suffix.lower() != ".mp4":
        raise UsageError(f"--out must end in .mp4, got {args.out}")
    if args.preset is not None:
        from .config import PRESETS

        names = sorted({name for family in PRESETS.values() for name in family})
        if args.preset not in names:
            raise UsageError(f"unknown preset {args.preset!r}; accepted: {', '.join(names)} "
                             "(flash and 3stage for HunyuanVideo only)")


def _load_pipeline(model: str, dtype: Any) -> Any:
    """``DiffusionPipeline.from_pretrained`` with every "can't get the weights" failure turned into one line."""
    looks_local = model.startswith((".", "/", "~")) or os.sep in model.strip("/").split("/", 1)[-1] or \
        Path(model).expanduser().exists()
    path = Path(model).expanduser()
    if looks_local and not path.exists():
        raise UsageError(f"--model {model}: no such folder (and not a hub id like Wan-AI/Wan2.1-T2V-1.3B-Diffusers)")
    if looks_local and not (path / "model_index.json").is_file():
        raise UsageError(f"--model {model}: not a diffusers pipeline folder (no model_index.json)")

    from diffusers import DiffusionPipeline
    from huggingface_hub.errors import HFValidationError

    from .hub import offline as hub_offline

    offline = hub_offline()
    print(f"loading {model} ...", flush=True)
    try:
        return DiffusionPipeline.from_pretrained(str(path) if looks_local else model, dtype=dtype)
    except HFValidationError:
        raise UsageError(f"--model {model}: not a valid hub id or an existing folder") from None
    except OSError as err:  # missing files, no network, gated/unknown repo, disk full
        hint = f"HF_HUB_OFFLINE is set: download it first with `hf download {model}`" if offline else \
            f"check the id, your network and `hf auth login`, or fetch it with `hf download {model}`"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"cannot load {model}: {_shorten(first)}; {hint}") from None
    except ValueError as err:  # e.g. a folder whose model_index.json names unknown classes
        raise UsageError(f"cannot load {model}: {err}") from None
    except ImportError as err:  # a component needing a package that is not installed (ftfy, sentencepiece)
        raise UsageError(f"cannot load {model}: {err}") from None


def _shorten(text: str, limit: int = 160) -> str:
    """The first sentence of a library's message, cut to ``limit`` characters: the one line stays one line."""
    sentence = text.split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= limit else sentence[: limit - 3] + "..."


def _call_arguments(pipe: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for the pipeline call; only those the user set, so the pipeline's defaults stand."""
    import inspect

    accepted = set(inspect.signature(type(pipe).__call__).parameters)
    call: dict[str, Any] = {"prompt": args.prompt, "num_inference_steps": args.steps}
    optional = {"negative_prompt": args.negative_prompt, "height": args.height, "width": args.width,
                "num_frames": args.frames, "guidance_scale": args.guidance}
    call.update({k: v for k, v in optional.items() if v is not None})
    if args.image is not None:
        if "image" not in accepted:
            raise UsageError(f"--image given but {type(pipe).__name__} is not an image-to-video pipeline")
        from diffusers.utils import load_image

        call["image"] = load_image(str(args.image))
    elif "image" in accepted:
        raise UsageError(f"{type(pipe).__name__} is an image-to-video pipeline: pass --image")
    if args.last_image is not None:
        if "last_image" not in accepted:
            raise UsageError(f"--last-image given but {type(pipe).__name__} takes no last frame")
        from diffusers.utils import load_image

        call["last_image"] = load_image(str(args.last_image))
    unknown = sorted(set(call) - accepted)
    if unknown:
        raise UsageError(f"{type(pipe).__name__} does not accept {unknown}")
    return call


def _generate(pipe: Any, call: dict[str, Any], seed: int, label: str) -> tuple[float, Any]:
    """One timed pipeline call (the pipeline shows its own progress bar)."""
    import torch

    print(f"{label}: generating ...", flush=True)
    generator = torch.Generator().manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        frames = pipe(**call, generator=generator).frames[0]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, frames


# ----------------------------------------------------------------------------------------------------
# doctor


def _cmd_doctor(args: argparse.Namespace) -> int:
    for line in doctor_report(args.model):
        print(line)
    return OK


def doctor_report(models: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The lines ``jenga doctor`` prints (no network: the model check reads only the local cache)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    lines = [f"jenga {_version()} ({Path(__file__).resolve().parent})",
             f"python {platform.python_version()} ({sys.executable}), {platform.platform()}"]
    lines += [f"{name} {installed(name)}" for name in ("torch", "triton", "diffusers", "transformers",
                                                       "huggingface_hub", "imageio-ffmpeg")]
    import torch

    from .attention import triton_available

    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(index)
            lines.append(f"GPU {index}: {torch.cuda.get_device_name(index)}, compute capability {major}.{minor}, "
                         f"CUDA {torch.version.cuda}")
        major = torch.cuda.get_device_capability(0)[0]
        loads = "tensor-descriptor (TMA) loads, sm_90+" if major >= 9 else "pointer loads (before sm_90)"
        if triton_available():
            lines.append(f"attention path (backend auto): {_hopper_kernel_line(major)}jenga's Triton kernel, {loads}")
        else:
            lines.append("attention path (backend auto): Triton is not importable here, so the torch backend "
                         "(PyTorch SDPA with a token mask); pip install triton")
        fused = os.environ.get("JENGA_FUSED_QK_PREP", "auto")
        lines.append(f"fused Wan query/key RMSNorm + RoPE in eager mode: {'off' if fused == '0' else 'on'} "
                     f"(JENGA_FUSED_QK_PREP={fused})")
    else:
        lines.append(f"GPU: none (torch {torch.__version__} sees no CUDA device)")
        from .backends import interpreting

        interpreted = interpreting()
        lines.append("attention path (backend auto): the torch backend, PyTorch SDPA with a token mask (carving "
                     "saves nothing on a CPU); backend='triton' runs " +
                     ("in Triton's CPU interpreter (TRITON_INTERPRET=1: slow, tests only)" if interpreted else
                      "only with TRITON_INTERPRET=1 (Triton's CPU interpreter, slow, tests only)"))
    lines.append(_tuning_line())
    from .hub import cached, offline

    lines.append(f"Hugging Face cache: {os.environ.get('HF_HOME', '~/.cache/huggingface (default)')}, "
                 f"HF_HUB_OFFLINE {'set' if offline() else 'not set'}")
    for model in models:
        path = Path(model).expanduser()
        if path.exists():
            state = "a local pipeline folder" if (path / "model_index.json").is_file() else \
                "a folder without model_index.json (not a diffusers pipeline)"
        else:
            state = "in the offline cache" if cached(model) else f"NOT in the offline cache (`hf download {model}`)"
        lines.append(f"model {model}: {state}")
    return lines


def _hopper_kernel_line(major: int) -> str:
    """On Hopper, whether the Gluon kernel runs (and why not) before the portable one's description."""
    if major != 9:
        return ""
    if os.environ.get("JENGA_GLUON", "") == "0":
        return "the Gluon kernel is off (JENGA_GLUON=0), so "
    from .kernels.gluon_block_sparse import GLUON_IMPORT_ERROR

    if GLUON_IMPORT_ERROR is not None:
        return f"the Gluon kernel is unavailable ({GLUON_IMPORT_ERROR}), so "
    return "jenga's Gluon kernel (FlashAttention-3 ping-pong) for bf16/fp16, head dim 64/128; elsewhere "


def _tuning_line() -> str:
    """Where the kernel's tiles come from here: the shipped table for this GPU, the user's autotuned picks, or
    the safe default; and whether this run would autotune (JENGA_AUTOTUNE=1)."""
    try:
        import torch

        from .kernels import tuning
    except ImportError as err:  # no torch here
        return f"kernel tuning: not available ({type(err).__name__}: {err})"
    mode = "autotuned in this run (JENGA_AUTOTUNE=1)" if tuning.autotune_requested() else "no tuning in the run"
    if not torch.cuda.is_available():
        return f"kernel tuning: tables are per GPU (none read without CUDA); {mode}"
    arch = tuning.arch_name(torch.cuda.get_device_capability())
    shipped, cached = len(tuning.package_table(arch)), len(tuning.cache_table(arch))
    return (f"kernel tuning: {arch}: {shipped} shipped table entries, {cached} autotuned picks in "
            f"{tuning.cache_path(arch)}, else the safe default tiles; {mode}")


# ----------------------------------------------------------------------------------------------------
# bench


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    script_args = [a for a in args.script_args if a != "--"]
    cpu_ok = args.name == "pipeline" and ("--tiny" in script_args or "-h" in script_args or "--help" in script_args)
    if not torch.cuda.is_available() and not cpu_ok:
        raise UsageError(f"the {args.name} benchmark needs a CUDA GPU (none here); "
                         "`jenga bench pipeline --tiny` checks the pipeline benchmark's code path on a CPU")
    script = _benchmark_script(args.name)
    return subprocess.call([sys.executable, str(script), *script_args])


def _benchmark_script(name: str) -> Path:
    """``benchmarks/<name>.py`` of the source checkout: the working folder's, else next to ``src/jenga``."""
    candidates = [Path.cwd() / "benchmarks" / f"{name}.py",
                  Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UsageError(f"benchmarks/{name}.py not found; the benchmarks ship with the source checkout "
                     "(git clone), not the wheel: run from the repository root")


# ----------------------------------------------------------------------------------------------------
# calibrate (one parser function and one command function, kept apart from the others)


def _add_calibrate_parser(sub: Any, common: argparse.ArgumentParser, formatter: Any) -> None:
    cal = sub.add_parser(
        "calibrate", parents=[common], formatter_class=formatter, epilog=EXIT_CODES,
        help="measure carving on your model (short dense pass) and pick the fastest config within a budget",
        description=_wrap(
            "Run a short dense pass of the pipeline (--model) or of the shipped toy model (--toy), measure for "
            "each candidate drop rate and p the kept-block density, attention-mass recall and output error per "
            "layer and stage, pick the fastest config meeting the budget, print a table, and write "
            "calibrated.json (a JengaConfig: JengaConfig.from_dict(json.load(...))), calibration.json (every "
            "measurement) and calibration.png (density and recall per layer) to --out-dir. --min-psnr DB judges the "
            "output instead: a dense pass, then a search over each layer's p, one short patched pass per step, each "
            "kept only while the final latents stay within DB of PSNR of the dense ones (calibration.json lists the "
            "passes; -v logs them as they run)."
        ),
    )
    source = cal.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="hub id or local diffusers folder of a Wan-family pipeline")
    source.add_argument("--toy", action="store_true", help="the toy model shipped with jenga (offline)")
    cal.add_argument("--prompt", default=None,
                     help="text prompt (--model: required; --toy: '<colour> <shape> <direction>', default "
                          "'a red disc moving right')")
    cal.add_argument("--size", choices=("default", "small", "full"), default="default",
                     help="--toy clip size, as in `jenga demo` (default 8 frames 32x32, blocks of 64; full: the "
                          "model's training size, 16 frames 64x64, blocks of 128)")
    cal.add_argument("--height", type=_positive_int, default=None, help="--model: pixels (default: the pipeline's)")
    cal.add_argument("--width", type=_positive_int, default=None, help="--model: pixels (default: the pipeline's)")
    cal.add_argument("--frames", type=_positive_int, default=None, help="--model: frames (default: the pipeline's)")
    cal.add_argument("--preset", default="base", help="config to tune: a preset of the model family (default base)")
    cal.add_argument("--min-recall", type=_recall_budget, default=None,
                     help="budget: mean attention-mass recall per layer and stage (default 0.95 unless --max-error); "
                          "'base': each stage's mean recall under the preset itself (fewest blocks at its quality)")
    cal.add_argument("--max-error", type=_error_budget, default=None,
                     help="budget: mean relative output error of attention per layer and stage; 'base': each stage's "
                          "mean error under the preset itself")
    cal.add_argument("--min-psnr", type=_float_or_base("a number of dB"), default=None, metavar="DB",
                     help="budget on the output instead: PSNR (dB) of the final latents against a dense pass (same "
                          "noise); searches a p per layer with one short patched pass per step of the search "
                          "(several generations' time); excludes --min-recall, --max-error, --stage-mean, "
                          "--layer-thresholds, --curves; --cdf-thresholds: the ladder of p (default 0.7 0.5 0.3 0); "
                          "'base': the preset's own PSNR (needs --raise-p)")
    cal.add_argument("--raise-p", type=float, nargs="+", default=None, metavar="P",
                     help="--min-psnr: p values above the preset's a layer may be raised to when no lowering fits "
                          "(an exchange: blocks spent where they buy most PSNR, saved where they cost least), "
                          "e.g. 0.95 0.98")
    cal.add_argument("--psnr-peak", type=float, default=None,
                     help="--min-psnr: the PSNR's peak (default 2.0, latents in [-1, 1] such as the toy's pixels)")
    cal.add_argument("--max-passes", type=_positive_int, default=None,
                     help="--min-psnr: the most patched passes of the search, the preset's included (default 24)")
    cal.add_argument("--stage-mean", action="store_true",
                     help="hold the budget for each stage's mean over the layers (as a preset is judged) instead of "
                          "every layer (layers that cannot meet it run dense)")
    cal.add_argument("--layer-thresholds", action="store_true",
                     help="give every layer its own p per stage, allocated so that each stage's mean over the layers "
                          "meets the budget with the fewest kept blocks (implies --stage-mean; --min-recall base "
                          "--max-error base: the preset's own mean recall and error both)")
    cal.add_argument("--cdf-thresholds", type=float, nargs="+", default=None,
                     help="candidate p values (default 0 0.3 0.5 0.7 0.9; with --layer-thresholds 0 0.3 0.5 0.6 0.7 "
                          "0.8 0.85 0.9 0.93 0.95 0.97 0.99)")
    cal.add_argument("--steps", type=_positive_int, default=6, help="steps of the calibration pass (default 6)")
    cal.add_argument("--run-steps", type=_positive_int, default=50,
                     help="steps of the run you plan, for the predicted times (default 50)")
    cal.add_argument("--heads", type=_positive_int, default=2, help="heads sampled per layer (default 2)")
    cal.add_argument("--query-blocks", type=_positive_int, default=8,
                     help="query blocks per head for recall and error (default 8)")
    cal.add_argument("--curves", nargs="+", default=None, help="curves to try (default: the preset's)")
    cal.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's; toy 4)")
    cal.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                     help="weights dtype (default: bfloat16 on CUDA, float32 on the CPU)")
    cal.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, ...")
    cal.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    cal.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for torch (default: torch's)")
    cal.add_argument("--toy-weights", type=Path, default=None,
                     help="--toy: weights file (default: the shipped src/jenga/toy/weights/toy-wan.safetensors)")
    cal.add_argument("--out-dir", type=Path, default=Path("jenga-calibration"),
                     help="folder for calibrated.json, calibration.json and calibration.png")
    cal.set_defaults(run=_cmd_calibrate)


def _float_or_base(accepted: str) -> Callable[[str], float | str]:
    """An argparse type: ``base`` (the preset's own figure) or a float; ``accepted`` names the range."""
    def parse(text: str) -> float | str:
        if text == "base":
            return text
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {accepted} or 'base', got {text!r}") from None
    return parse


_recall_budget = _float_or_base("a float in (0, 1]")
_error_budget = _float_or_base("a float > 0")


def _cmd_calibrate(args: argparse.Namespace) -> int:
    import contextlib
    import json

    import torch

    output = {}  # the --min-psnr search's arguments
    if args.min_psnr is not None:
        clash = [flag for flag, given in (("--min-recall", args.min_recall is not None),
                                          ("--max-error", args.max_error is not None),
                                          ("--stage-mean", args.stage_mean),
                                          ("--layer-thresholds", args.layer_thresholds),
                                          ("--curves", args.curves is not None)) if given]
        if clash:
            raise UsageError(f"--min-psnr budgets the output; drop {', '.join(clash)} (attention-metric budget)")
        output = dict(min_psnr=args.min_psnr, min_recall=None, psnr_peak=2.0 if args.psnr_peak is None else
                      args.psnr_peak, max_passes=24 if args.max_passes is None else args.max_passes,
                      raise_thresholds=tuple(args.raise_p or ()))
    elif args.psnr_peak is not None or args.max_passes is not None or args.raise_p is not None:
        raise UsageError("--psnr-peak, --max-passes and --raise-p belong to --min-psnr")
    elif args.min_recall is None and args.max_error is None:
        args.min_recall = 0.95
    device = _device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.startswith("cuda") else
                                                           torch.float32)
    import jenga
    from jenga.calibration import calibrate

    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet: Any = contextlib.nullcontext()
    try:
        if args.toy:
            from .demo import SIZES
            from .toy.data import Prompt
            from .toy.model import build_pipeline, load_pretrained, quiet_frame_rounding

            try:
                prompt = Prompt.parse(args.prompt or "a red disc moving right")
            except ValueError as err:
                raise UsageError(f"--prompt: {err}") from None
            size = SIZES[args.size]
            weights = {} if args.toy_weights is None else {"path": args.toy_weights}
            transformer, encoder = load_pretrained(device=device, dtype=dtype, **weights)
            pipe = build_pipeline(transformer)
            with torch.no_grad():
                embeds, negative = encoder([prompt]), encoder([None])
            call = dict(prompt_embeds=embeds, negative_prompt_embeds=negative, height=size.height,
                        width=size.width, num_frames=size.frames - 1,
                        guidance_scale=4.0 if args.guidance is None else args.guidance)
            block, model_family = size.block_size, "wan"
            quiet = quiet_frame_rounding()
        else:
            if not args.prompt:
                raise UsageError("--model needs --prompt")
            pipe = _load_pipeline(args.model, dtype)
            pipe.to(device)
            call = {"prompt": args.prompt}
            optional = {"height": args.height, "width": args.width, "num_frames": args.frames,
                        "guidance_scale": args.guidance}
            call.update({k: v for k, v in optional.items() if v is not None})
            from .adapters import adapter_for

            block, model_family = 128, adapter_for(pipe.transformer).preset_model(pipe.transformer)
        try:
            base = jenga.JengaConfig.preset(args.preset, model=model_family, block_size=block)
        except ValueError as err:
            raise UsageError(str(err)) from None
        pipe.set_progress_bar_config(disable=True)
        try:
            with quiet:
                budget = output or dict(min_recall=args.min_recall, max_error=args.max_error, curves=args.curves,
                                        per_layer=not args.stage_mean, layer_thresholds=args.layer_thresholds)
                report = calibrate(pipe, base=base, steps=args.steps, num_inference_steps=args.run_steps,
                                   heads=args.heads, query_blocks=args.query_blocks,
                                   cdf_thresholds=args.cdf_thresholds, seed=args.seed, **budget, **call)
        except ValueError as err:
            raise UsageError(str(err)) from None
    except (RuntimeError, OSError) as err:
        print(f"jenga calibrate failed: {type(err).__name__}: {err}", file=sys.stderr)
        return FAILED
    finally:
        torch.set_num_threads(threads)
    print(report.table())
    args.out_dir.mkdir(parents=True, exist_ok=True)
    config_path, report_path = args.out_dir / "calibrated.json", args.out_dir / "calibration.json"
    config_path.write_text(json.dumps(report.config.to_dict(), indent=1))
    report_path.write_text(json.dumps(report.to_dict(), indent=1))
    plot = report.save_plot(args.out_dir / "calibration.png")
    print(f"wrote {config_path}, {report_path}, {plot}")
    return OK


if __name__ == "__main__":
    sys.exit(main())
