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
             "--threads", "--no-progress", "--force"],
    "generate": ["--model", "--prompt", "--negative-prompt", "--image", "--last-image", "--preset", "--out",
                 "--height", "--width", "--frames", "--steps", "--guidance", "--fps", "--seed", "--dtype", "--device",
                 "--offload", "--dense"],
    "bench": ["attention", "pipeline"],
    "doctor": ["--model"],
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
    assert "first stage rounds back" not in text  # base has no reduced-resolution stage to round
    kept = float(text.split("blocks kept: ")[1].split("%")[0])
    assert 0.0 < kept < 100.0, "the selector kept every block (or none)"
    gif, mask = out / "dense_vs_jenga.gif", out / "block_mask.png"
    assert gif.stat().st_size > 0 and mask.stat().st_size > 0

    import numpy as np
    from PIL import Image

    with Image.open(gif) as image:
        assert image.n_frames == 4  # one per video frame
        assert image.size == (2 * 4 * 32 + 8, 22 + 4 * 32)  # label band over dense | gap | jenga, scaled 4x
        band = np.asarray(image.convert("L"))[:22]
        assert (band < 128).sum() > 50, "no label text above the videos"
        assert (np.asarray(image.convert("L"))[22:, :128] != 255).any(), "the dense video is blank"
    with Image.open(mask) as image:
        picture = np.asarray(image.convert("L"))
    assert (picture[:76] < 128).sum() > 200, "the mask picture has no title and legend"
    pixels = set(np.unique(picture[76:]).tolist())  # the panels, below the title, legend and head labels
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
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err  # one line: what happened and what to do
    assert "jenga-test/does-not-exist is not in the Hugging Face cache and HF_HUB_OFFLINE is set" in err
    assert "`hf download jenga-test/does-not-exist`" in err and "huggingface-cli" not in err
    assert "loading" not in proc.stdout  # decided before diffusers was asked
    assert not (tmp_path / "c.mp4").exists()


@no_cuda
@pytest.mark.parametrize("name", ["attention", "pipeline"])
def test_bench_without_cuda_refuses_cleanly(name, capsys):
    assert cli.main(["bench", name]) == cli.USAGE
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "Traceback" not in err


@pytest.mark.long(22)
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
    assert {"wan_t2v.py", "wan_i2v.py", "wan22_t2v.py", "hunyuan_t2v.py", "hunyuan_i2v.py", "cogvideox_t2v.py",
            "ltx_t2v.py", "skyreels_v2_t2v.py", "wan_vace.py"} <= names


def test_demo_rejects_a_prompt_it_cannot_read(capsys):
    code = cli.main(["demo", "--prompt", "a red triangle moving up", "--device", "cpu"])
    assert code == cli.USAGE
    err = capsys.readouterr().err
    assert "--prompt" in err and "'triangle'" in err and "disc" in err and len(err.strip().splitlines()) == 1


def test_generate_last_image_needs_a_first_image(tmp_path, capsys):
    from _tiny import image

    picture = tmp_path / "last.png"
    image().save(picture)
    code = cli.main(["generate", "--model", "no/such-model", "--prompt", "a cat", "--last-image", str(picture),
                     "--out", str(tmp_path / "c.mp4")])
    assert code == cli.USAGE
    assert "--last-image needs --image" in capsys.readouterr().err



def test_help_and_argument_errors_do_not_import_torch():
    """`jenga --help` and argparse errors answer at once: neither jenga's package nor cli.py imports torch."""
    code = ("import sys\nfrom jenga import cli\n"
            "for argv in (['--help'], ['demo', '--help'], ['demo', '--steps', '0']):\n"
            "    try:\n        cli.main(argv)\n    except SystemExit:\n        pass\n"
            "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'numpy') if m in sys.modules)\n"
            "print('HEAVY', heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr


def test_python_dash_m_jenga_is_the_command():
    proc = subprocess.run([sys.executable, "-m", "jenga", "--version"], capture_output=True, text=True, env=_env(),
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("jenga "), proc.stdout + proc.stderr


@pytest.mark.parametrize(("argv", "needle"), [
    (["--height", "100"], "--height 100: must be a multiple of 16"),
    (["--width", "830"], "--width 830: must be a multiple of 16"),
    (["--preset", "fast"], "unknown preset 'fast'; accepted: 3stage, base, flash, turbo"),
    (["--image", "no-such.png"], "--image no-such.png: no such file"),
    (["--out", "clip.gif"], "--out must end in .mp4"),
])
def test_generate_input_errors_exit_2_before_loading(argv, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a hub id that would need the network: every check here must answer before it is looked up
    code = cli.main(["generate", "--model", "jenga-test/never-loaded", "--prompt", "a cat", *argv])
    captured = capsys.readouterr()
    assert code == cli.USAGE
    assert needle in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
    assert "loading" not in captured.out


@no_cuda
def test_demo_full_size_on_a_cpu_needs_force(capsys):
    code = cli.main(["demo", "--size", "full", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == cli.USAGE
    assert "--size full on a CPU is at least 40x the default size's work" in err and "--force" in err


def test_demo_turbo_says_when_its_first_stage_rounds_to_full_size(tmp_path, capsys):
    code = cli.main(["demo", "--size", "small", "--steps", "2", "--preset", "turbo", "--out-dir", str(tmp_path),
                     "--no-progress", "--device", "cpu"])
    text = capsys.readouterr().out
    assert code == cli.OK, text
    assert "turbo preset's 0.75 first stage rounds back to 32x32 at this size" in text


def test_doctor_prints_versions_gpu_kernel_path_and_the_cache(tmp_path):
    cache = tmp_path / "hf"
    snapshot = cache / "hub" / "models--jenga-test--cached-pipe" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    proc = subprocess.run(
        [sys.executable, "-m", "jenga", "doctor", "--model", "jenga-test/cached-pipe", "--model", "jenga-test/absent"],
        capture_output=True, text=True, env=_env(HF_HOME=str(cache), HF_HUB_OFFLINE="1"), timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for name in ("torch", "triton", "diffusers", "transformers"):
        assert f"\n{name} " in text, f"no {name} version"
    assert f"torch {torch.__version__}" in text
    assert ("GPU: none" in text) != torch.cuda.is_available()
    assert "attention path (backend auto): " in text and "kernel tuning: " in text and "no tuning in the run" in text
    assert "model jenga-test/cached-pipe: in the offline cache" in text
    assert "model jenga-test/absent: NOT in the offline cache (`hf download jenga-test/absent`)" in text
    assert "HF_HUB_OFFLINE set" in text


@no_cuda
def test_examples_fail_fast_with_one_line(tmp_path):
    script = "wan_t2v.py"  # the others share the same three lines (the offline check: test_first_hour.py)
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script)], capture_output=True, text=True,
                          env=_env(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf")), timeout=120)
    assert proc.returncode == 2, proc.stderr
    # the last line is ours (transformers may warn on import that torchvision is absent); no traceback
    assert proc.stderr.strip().splitlines()[-1] == f"{script}: needs a CUDA GPU (none here); `jenga demo` runs on a CPU"
    assert "Traceback" not in proc.stderr


def test_image_example_checks_its_argument_first(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "hunyuan_i2v.py"), str(tmp_path / "none.png")],
                          capture_output=True, text=True, env=_env(HF_HUB_OFFLINE="1"), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("usage: python examples/hunyuan_i2v.py path/to/first_frame")


def test_toy_example_rejects_a_prompt_it_cannot_read_in_one_line():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "toy_model.py"), "a red triangle moving up"],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "cannot read the prompt 'a red triangle moving up'" in err, err


def test_doctor_names_the_hopper_kernel_and_its_switch(monkeypatch):
    from jenga.cli import _hopper_kernel_line
    from jenga.kernels.gluon_block_sparse import GLUON_IMPORT_ERROR

    monkeypatch.delenv("JENGA_GLUON", raising=False)
    assert _hopper_kernel_line(8) == "" and _hopper_kernel_line(10) == ""
    on_hopper = _hopper_kernel_line(9)
    assert ("Gluon kernel (FlashAttention-3 ping-pong)" in on_hopper) == (GLUON_IMPORT_ERROR is None)
    monkeypatch.setenv("JENGA_GLUON", "0")
    assert "off (JENGA_GLUON=0)" in _hopper_kernel_line(9)
