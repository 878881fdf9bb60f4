"""The miniature Stable Diffusion: stages resume exactly, the fast demo writes every artefact and report field.

Picture quality is not asserted here (a unit test cannot afford the training); `bench/demo.py` measures it.
"""
import contextlib
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

import course_lib.minisd as minisd
from course_lib.demo import main
from course_lib.minisd import MiniSDConfig, prompt_set, train_clip, train_unet, train_vae

FAST = dict(num_train_images=128, num_val_images=32, vae_steps=6, clip_steps=6, unet_steps=12,
            checkpoint_every=4)


def test_config_round_trip_and_validation():
    config = MiniSDConfig.fast()
    assert MiniSDConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert MiniSDConfig.from_dict(MiniSDConfig().to_dict()) == MiniSDConfig()
    with pytest.raises(ValueError, match="held_out_pairs"):
        MiniSDConfig(held_out_pairs=[("purple", "circle")])
    with pytest.raises(ValueError, match="unet_steps"):
        MiniSDConfig(unet_steps=0)
    with pytest.raises(ValueError, match="cond_dropout"):
        MiniSDConfig(cond_dropout=1.5)
    with pytest.raises(ValueError, match="text_features"):
        MiniSDConfig(text_features="pooled")
    partial = MiniSDConfig().to_dict()
    del partial["text_features"]  # a missing key takes the field's default
    assert MiniSDConfig.from_dict(partial).text_features == MiniSDConfig().text_features
    nested = MiniSDConfig.fast().to_dict()
    assert isinstance(nested["vae"], dict) and isinstance(MiniSDConfig.from_dict(nested).vae, type(config.vae))
    with pytest.raises(ValueError, match="unet_step"):  # a typo is named, not silently ignored
        MiniSDConfig.from_dict({"unet_step": 10})


def test_prompt_set_covers_every_pair_once():
    prompts = prompt_set()
    assert len(prompts) == 12 and len({p for p, _, _ in prompts}) == 12
    assert ("a red circle", 0, 0) in prompts


def test_min_snr_weights_match_the_formula():
    scheduler = minisd.make_scheduler(MiniSDConfig.fast())
    t = torch.tensor([0, 10, 500, 999])
    abar = scheduler.alphas_cumprod[t].double()
    snr = abar / (1 - abar)
    expected = torch.minimum(snr, torch.tensor(5.0, dtype=torch.double)) / snr
    torch.testing.assert_close(minisd.min_snr_weights(scheduler, t, 5.0).double(), expected, rtol=1e-5, atol=0)
    assert minisd.min_snr_weights(scheduler, torch.tensor([999]), 5.0).item() == pytest.approx(1.0)


def test_one_min_snr_function_serves_the_course_and_stable_diffusion():
    from course_lib.sd import min_snr_weights as sd_min_snr_weights
    scheduler = minisd.make_scheduler(MiniSDConfig.fast())
    t = torch.tensor([3, 700])
    assert minisd.min_snr_weights is sd_min_snr_weights
    by_tensor = minisd.min_snr_weights(scheduler.alphas_cumprod, t, 5.0)
    assert torch.equal(minisd.min_snr_weights(scheduler, t, 5.0), by_tensor)


def test_importing_the_demo_keeps_the_matplotlib_backend():
    """A notebook that imports course_lib.demo keeps its inline backend (here: svg stands for it)."""
    import subprocess
    import sys
    code = "import matplotlib; matplotlib.use('svg'); import course_lib.demo; print(matplotlib.get_backend())"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "svg"


def _stages(config, out):
    vae, vae_report = train_vae(config, out)
    clip, tokenizer, _ = train_clip(config, out)
    unet, _ = train_unet(config, out, vae, clip.text_encoder, tokenizer, vae_report["scale_factor"])
    return unet


@contextlib.contextmanager
def _interrupted_at_unet_step(step: int):
    """Ctrl-C in the middle of the UNet stage: min_snr_weights runs once per step, the call of ``step`` raises."""
    calls = {"n": 0}
    real = minisd.min_snr_weights

    def crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step + 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    minisd.min_snr_weights = crash
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        minisd.min_snr_weights = real


def test_interrupted_unet_stage_resumes_bit_for_bit(tmp_path):
    config = MiniSDConfig.fast(**FAST)
    straight = _stages(config, tmp_path / "straight")
    with _interrupted_at_unet_step(10):
        _stages(config, tmp_path / "resumed")
    assert not (tmp_path / "resumed/unet/report.json").exists()
    resumed = _stages(config, tmp_path / "resumed")  # VAE and CLIP are skipped, the UNet resumes at step 8
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    report = json.loads((tmp_path / "resumed/unet/report.json").read_text())
    assert len(report["losses"]) == config.unet_steps
    # the speed counts the steps of this run (after the checkpoint of step 8), not the time spent encoding
    assert report["steps_this_run"] == config.unet_steps - 8
    assert 0 < report["encode_seconds"] < report["seconds"]


def test_text_encoder_trained_with_the_unet_is_saved_resumed_and_reloaded(tmp_path):
    """train_text_encoder: the UNet's loss moves the text encoder (CLIP's saved copy stays as it was); an
    interrupted run resumes bit for bit, a finished one loads the tuned encoder back; a mismatch is refused."""
    config = MiniSDConfig.fast(**FAST, train_text_encoder=True)

    def stages(out):
        vae, vae_report = train_vae(config, out)
        clip, tokenizer, _ = train_clip(config, out)
        unet, _ = train_unet(config, out, vae, clip.text_encoder, tokenizer, vae_report["scale_factor"])
        return clip, unet

    clip, unet = stages(tmp_path / "straight")
    contrastive = load_file(str(tmp_path / "straight/clip/model.safetensors"))
    tuned = load_file(str(tmp_path / "straight/unet" / minisd.TUNED_TEXT_ENCODER))
    assert any(not torch.equal(v, contrastive[f"text_encoder.{k}"]) for k, v in tuned.items())
    assert all(torch.equal(v, tuned[k]) for k, v in clip.text_encoder.state_dict().items())  # in place
    assert not any(p.requires_grad for p in clip.text_encoder.parameters())

    with _interrupted_at_unet_step(6):
        stages(tmp_path / "resumed")
    clip_again, unet_again = stages(tmp_path / "resumed")
    assert all(torch.equal(v, unet_again.state_dict()[k]) for k, v in unet.state_dict().items())
    assert all(torch.equal(v, clip_again.text_encoder.state_dict()[k]) for k, v in tuned.items())
    clip_loaded, _ = stages(tmp_path / "resumed")  # finished: loaded, the tuned encoder put back in place
    assert all(torch.equal(v, clip_loaded.text_encoder.state_dict()[k]) for k, v in tuned.items())
    with pytest.raises(ValueError, match="train_text_encoder"):
        frozen = dataclasses.replace(config, train_text_encoder=False)
        vae, vae_report = train_vae(frozen, tmp_path / "resumed")
        clip, tokenizer, _ = train_clip(frozen, tmp_path / "resumed")
        train_unet(frozen, tmp_path / "resumed", vae, clip.text_encoder, tokenizer, vae_report["scale_factor"])
    with pytest.raises(ValueError, match="train_text_encoder"):
        MiniSDConfig.fast(train_text_encoder="yes")

def test_finished_stage_is_loaded_not_retrained(tmp_path):
    config = MiniSDConfig.fast(**FAST)
    vae, report = train_vae(config, tmp_path)
    again, report_again = train_vae(config, tmp_path)
    assert report_again == json.loads((tmp_path / "vae/report.json").read_text())
    assert report_again["seconds"] == report["seconds"]
    saved = load_file(str(tmp_path / "vae/model.safetensors"))
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in saved.items())


REPORT_FIELDS = {
    "training_seconds", "total_training_seconds", "evaluator", "vae", "clip", "unet", "prompt_accuracy",
    "held_out_pairs",
}


@pytest.mark.slow
def test_fast_demo_writes_every_artefact(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--fast", "--world", "shapes", "--out", str(out), "--seeds-per-prompt", "2"]) == 0
    for name in ("samples.png", "img2img.png", "inpaint.png", "losses.png", "report.json", "config.json",
                 "pipeline/pipeline.json", "pipeline/unet/model.safetensors", "pipeline/unet/config.json",
                 "pipeline/vae/model.safetensors", "pipeline/text_encoder/model.safetensors",
                 "pipeline/tokenizer.json", "evaluator/model.safetensors"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert REPORT_FIELDS <= set(report)
    assert set(report["training_seconds"]) == {"evaluator", "vae", "clip", "unet"}
    quality = report["prompt_accuracy"]
    for part in ("seen", "held_out"):
        assert set(quality[part]) == {"shape_acc", "colour_acc", "joint_acc", "n"}
        assert 0.0 <= quality[part]["joint_acc"] <= 1.0
    assert quality["seen"]["n"] == 10 * 2 and quality["held_out"]["n"] == 2 * 2
    assert len(quality["per_prompt"]) == 12
    assert quality["fid_like"] >= 0 and report["vae"]["latent_shape"] == [4, 8, 8]
    assert "prompt accuracy" in capsys.readouterr().out

    # running again resumes: nothing is retrained, the report is reproduced
    assert main(["--fast", "--world", "shapes", "--out", str(out), "--seeds-per-prompt", "2"]) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["training_seconds"] == report["training_seconds"]
    assert again["prompt_accuracy"]["seen"] == quality["seen"]


def test_demo_refuses_to_mix_settings(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(MiniSDConfig().to_dict()))
    assert main(["--fast", "--out", str(out)]) == 2
    assert "--fresh" in capsys.readouterr().err


@pytest.mark.parametrize("argv, argument", [
    (["--fast", "--unet-steps", "0"], "unet_steps"),
    (["--fast", "--threads", "0"], "--threads"),
    (["--fast", "--seeds-per-prompt", "1"], "--seeds-per-prompt"),
    (["--fast", "--guidance-scale", "-1"], "guidance_scale"),
    (["--fast", "--train-images", "-5"], "num_train_images"),
    (["--fast", "--layout-guidance-scale", "-0.5"], "layout_guidance_scale"),
])
def test_cli_rejects_bad_values(tmp_path, capsys, argv, argument):
    assert main(argv + ["--out", str(tmp_path / "x")]) == 2
    assert argument in capsys.readouterr().err


def test_cli_help_lists_the_budgets(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--fast", "--unet-steps", "--seed", "--out", "--fresh", "--threads", "--layout-guidance-scale"):
        assert option in text
    assert "scenes 3500, shapes 2500" in " ".join(text.split())  # each world's own default budget
    assert "scenes 32, shapes 64" in " ".join(text.split())
    assert "(default: None)" not in text


# ---------------------------------------------------------------------------------------------------------
# The scenes world (the default demo)
# ---------------------------------------------------------------------------------------------------------

def test_scenes_config_round_trip_and_validation():
    config = MiniSDConfig.scenes()
    assert config.world == "scenes" and config.image_size == 64 and config.vae.downsample_factor == 8
    assert MiniSDConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert MiniSDConfig.from_dict(json.loads(json.dumps(MiniSDConfig.fast(world="scenes").to_dict()))) \
        == MiniSDConfig.fast(world="scenes")
    with pytest.raises(ValueError, match="world"):
        MiniSDConfig(world="cities")
    with pytest.raises(ValueError, match="held_out_pairings"):  # pairs a held-out (never seen) object
        MiniSDConfig.scenes(held_out_pairings=[[["green", "triangle"], ["red", "circle"]]])
    with pytest.raises(ValueError, match="image_size"):  # 32 is not divisible by f = 8 times the UNet's 2
        MiniSDConfig.scenes(image_size=36)


def test_scenes_tokenizer_knows_every_word_of_the_grammar():
    from course_lib.scenes import scenes_batch
    tokenizer = minisd.make_tokenizer(MiniSDConfig.scenes())
    for caption in scenes_batch(60, seed=3)["caption"] + scenes_batch(20, seed=3, split="held_out_pairings")["caption"]:
        assert tokenizer.unk_token_id not in tokenizer.encode(caption), caption


SCENES_REPORT_KEYS = {"binding", "relation", "count", "kid", "total_train_seconds", "latent_shape", "fid_like",
                      "evaluator", "vae", "clip", "unet", "training_seconds"}


@pytest.mark.slow
def test_fast_scenes_demo_writes_every_artefact_and_resumes(tmp_path, capsys):
    out = tmp_path / "scenes"
    argv = ["--fast", "--out", str(out), "--num-images", "20", "--unet-steps", "8", "--vae-steps", "4",
            "--clip-steps", "4", "--train-images", "64"]
    assert main(argv) == 0
    for name in ("samples.png", "relations.png", "losses.png", "report.json", "config.json",
                 "pipeline/pipeline.json", "pipeline/vae/model.safetensors", "evaluator/model.safetensors"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert SCENES_REPORT_KEYS <= set(report) and report["world"] == "scenes"
    assert report["latent_shape"] == [4, 8, 8]
    assert {"seen", "held_out", "held_out_pairs", "held_out_pairings"} <= set(report["binding"])
    for key in ("binding", "relation", "count"):
        for part in ("seen", "held_out"):
            assert 0.0 <= report[key][part] <= 1.0, (key, part)
    assert set(report["kid"]) >= {"generated_vs_real", "standard_error", "real_vs_real"}
    assert report["kid"]["standard_error"] >= 0 and report["total_train_seconds"] > 0
    assert 0.0 <= report["vae"]["reconstruction"]["judge_on_reconstructions"]["count"] <= 1.0
    assert "binding" in capsys.readouterr().out
    # running again resumes: nothing is retrained, the judged figures are reproduced
    assert main(argv) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["training_seconds"] == report["training_seconds"]
    assert again["binding"] == report["binding"] and again["kid"] == report["kid"]
