"""The ``jenga`` command: help texts, the offline demo, offline errors of ``generate``, ``bench`` without a GPU,
the pipeline benchmark's tiny CPU path, and the examples (compiled only: they need the real weights)."""

from __future__ import annotations

import json
import os
import py_compile
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jenga import cli

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = {
    "demo": ["--out-dir", "--prompt", "--size", "--steps", "--preset", "--cdf-threshold", "--device", "--seed",
             "--threads", "--no-progress"],
    "generate": ["--model", "--prompt", "--negative-prompt", "--image", "--last-image", "--preset", "--out",
                 "--height", "--width", "--frames", "--steps", "--guidance", "--fps", "--seed", "--dtype", "--device",
                 "--offload", "--dense"],
    "bench": ["attention", "pipeline"],
}
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a CUDA device")


def _env(**extra: str) -> dict[str, str]:
    """A subprocess environment that imports this checkout's jenga; one CPU thread, which runs these tiny
    models faster than several threads contending for a small machine."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    env.update(extra)
    return env


@pytest.mark.parametrize("command", [None, *SUBCOMMANDS])
def test_help_documents_every_option_and_the_exit_codes(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"] if command is None else [command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "exit codes:" in text and "2  usage or input error" in text
    for option in SUBCOMMANDS.get(command, list(SUBCOMMANDS)):
        assert option in text, f"{option} missing from the help of {command}"


def test_bad_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--steps", "0"])
    assert exit_info.value.code == cli.USAGE
    assert "positive integer" in capsys.readouterr().err


def test_demo_runs_offline_and_writes_its_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # it must not need the network at all
    out = tmp_path / "demo"
    code = cli.main(["demo", "--size", "small", "--out-dir", str(out), "--no-progress", "--device", "cpu"])
    text = capsys.readouterr().out
    assert code == cli.OK, text
    for needle in ("dense (stock diffusers):", "speed-up:", "blocks kept:", "PSNR", "task reading", "toy Wan model"):
        assert needle in text
    assert "does not match" not in text  # the mask picture shows the lists the layer really used
    kept = float(text.split("blocks kept: ")[1].split("%")[0])
    assert 0.0 < kept < 100.0, "the selector kept every block (or none)"
    gif, mask = out / "dense_vs_jenga.gif", out / "block_mask.png"
    assert gif.stat().st_size > 0 and mask.stat().st_size > 0

    import numpy as np
    from PIL import Image

    with Image.open(gif) as image:
        assert image.n_frames == 4  # one per video frame
        assert image.size == (2 * 32 + 4, 32)  # dense | gap | jenga
    with Image.open(mask) as image:
        pixels = set(np.unique(np.asarray(image.convert("L"))).tolist())
    assert {255, 24} <= pixels, "the mask picture shows no dropped (or no kept) blocks"


@pytest.fixture(scope="module")
def tiny_wan_folder(tmp_path_factory) -> Path:
    """A tiny Wan text-to-video pipeline (UMT5 text encoder, VAE) saved as a diffusers folder."""
    from _tiny import wan_pipeline, wan_vae

    pipe = wan_pipeline("t2v", text_encoder=True)
    pipe.register_modules(vae=wan_vae())
    folder = tmp_path_factory.mktemp("tiny-wan")
    pipe.save_pretrained(folder)
    return folder


def test_generate_local_pipeline_writes_an_mp4_and_the_speedup(tiny_wan_folder, tmp_path, capsys):
    pytest.importorskip("imageio_ffmpeg", reason="MP4 writing needs the video extra")
    out = tmp_path / "clip.mp4"
    code = cli.main(["generate", "--model", str(tiny_wan_folder), "--prompt", "a cat runs on the beach", "--steps",
                     "2", "--height", "128", "--width", "128", "--frames", "9", "--dtype", "float32", "--device",
                     "cpu", "--dense", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == cli.OK, text
    assert "speed-up" in text and f"wrote {out}" in text

    import imageio.v3 as iio

    assert iio.imread(out).shape == (9, 128, 128, 3)


def test_generate_unknown_preset_is_a_usage_error_before_any_generation(tiny_wan_folder, tmp_path, capsys):
    code = cli.main(["generate", "--model", str(tiny_wan_folder), "--prompt", "a cat", "--preset", "flash",
                     "--dtype", "float32", "--device", "cpu", "--dense", "--out", str(tmp_path / "c.mp4")])
    captured = capsys.readouterr()
    assert code == cli.USAGE
    assert "unknown preset 'flash'" in captured.err and "generating" not in captured.out


def test_generate_image_for_a_text_to_video_pipeline_is_a_usage_error(tiny_wan_folder, tmp_path, capsys):
    from _tiny import image

    picture = tmp_path / "first.png"
    image().save(picture)
    code = cli.main(["generate", "--model", str(tiny_wan_folder), "--prompt", "a cat", "--image", str(picture),
                     "--dtype", "float32", "--device", "cpu", "--out", str(tmp_path / "c.mp4")])
    assert code == cli.USAGE
    assert "not an image-to-video pipeline" in capsys.readouterr().err


def test_generate_missing_local_folder_is_a_one_line_usage_error(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    code = cli.main(["generate", "--model", str(missing), "--prompt", "a cat", "--out", str(tmp_path / "c.mp4")])
    err = capsys.readouterr().err
    assert code == cli.USAGE
    assert "no such folder" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_generate_folder_without_a_pipeline_is_a_usage_error(tmp_path, capsys):
    code = cli.main(["generate", "--model", str(tmp_path), "--prompt", "a cat", "--out", str(tmp_path / "c.mp4")])
    assert code == cli.USAGE
    assert "model_index.json" in capsys.readouterr().err


def test_generate_offline_hub_id_is_a_clear_message_not_a_traceback(tmp_path):
    # a fresh interpreter: huggingface_hub reads HF_HUB_OFFLINE when it is first imported
    env = _env(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run(
        [sys.executable, "-m", "jenga.cli", "generate", "--model", "jenga-test/does-not-exist", "--prompt", "a cat",
         "--out", str(tmp_path / "c.mp4")], capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == cli.USAGE, proc.stderr
    assert "cannot load jenga-test/does-not-exist" in proc.stderr and "HF_HUB_OFFLINE" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "c.mp4").exists()


@no_cuda
@pytest.mark.parametrize("name", ["attention", "pipeline"])
def test_bench_without_cuda_refuses_cleanly(name, capsys):
    assert cli.main(["bench", name]) == cli.USAGE
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "Traceback" not in err


def test_bench_pipeline_tiny_runs_every_column_on_cpu(tmp_path):
    out = tmp_path / "pipeline.json"
    proc = subprocess.run(
        [sys.executable, "-m", "jenga.cli", "bench", "pipeline", "--tiny", "--no-vae", "--samples", "1", "--steps",
         "8", "--out", str(out)], capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["meta"]["tiny"] is True and set(data["models"]) == {"wan1.3b", "hunyuan"}
    for model, entry in data["models"].items():
        columns = entry["columns"]
        assert set(columns) == {"stock-sdpa-default", "stock-cudnn", "jenga-carving", "jenga-carving-prores",
                                "jenga-full"}, model
        for name, r in columns.items():
            assert "error" not in r, (model, name, r)
            assert r["finite"] and r["total_s"] > 0 and r["transformer_calls"] == 8 * (2 if model == "wan1.3b" else 1)
            assert r["computed_calls"] < r["transformer_calls"], "composed mode replays repeated kinds"
        assert columns["stock-cudnn"]["speedup"] == 1.0
        for name in ("jenga-carving", "jenga-carving-prores", "jenga-full"):
            assert columns[name]["effects"]["carving"] is True, (model, name)
        assert columns["jenga-carving"]["effects"]["prores"] is None  # full resolution only: not claimed
        assert columns["jenga-carving-prores"]["effects"]["prores"] is True
        assert columns["jenga-full"]["effects"]["skipping"] is True
    assert "| wan1.3b | jenga-full |" in proc.stdout


@no_cuda
def test_pipeline_benchmark_refuses_without_cuda_unless_tiny(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import pipeline

    assert pipeline.main(["--models", "wan1.3b"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("script", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_examples_compile(script, tmp_path):
    py_compile.compile(str(script), cfile=str(tmp_path / "x.pyc"), doraise=True)
    text = script.read_text()
    assert "jenga.patch(pipe" in text or "jenga.patched(pipe" in text


def test_examples_cover_every_pipeline():
    names = {p.name for p in (ROOT / "examples").glob("*.py")}
    assert {"wan_t2v.py", "wan_i2v.py", "wan22_t2v.py", "hunyuan_t2v.py", "hunyuan_i2v.py"} <= names


def test_demo_rejects_a_prompt_it_cannot_read(capsys):
    code = cli.main(["demo", "--prompt", "a red triangle moving up", "--device", "cpu"])
    assert code == cli.USAGE
    err = capsys.readouterr().err
    assert "--prompt" in err and "'triangle'" in err and "disc" in err


def test_generate_last_image_needs_a_first_image(tmp_path, capsys):
    from _tiny import image

    picture = tmp_path / "last.png"
    image().save(picture)
    code = cli.main(["generate", "--model", "no/such-model", "--prompt", "a cat", "--last-image", str(picture),
                     "--out", str(tmp_path / "c.mp4")])
    assert code == cli.USAGE
    assert "--last-image needs --image" in capsys.readouterr().err

