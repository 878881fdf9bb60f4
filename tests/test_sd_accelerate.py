"""Contracts of the multi-GPU LoRA trainer (course_lib.sd.lora_accelerate, python -m course_lib.sd.launch).

The real launcher runs it: ``accelerate launch --num_processes 1 --cpu -m course_lib.sd.launch`` in a
subprocess, on the tiny offline SD, with no accelerate config file (HF_HOME points at an empty folder). With one
process in fp32 it must give train_lora's LoRA weights bit for bit, resume from its checkpoints, and write a
file diffusers loads. The sharding of micro-batches over N processes is checked with accelerate's own
``prepare_data_loader``, without starting N processes.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch

from course_lib._io import load_safetensors
from course_lib.sd import (LORA_WEIGHT_NAME, LoRATrainingConfig, build_tiny_sd, encode_images, encode_prompts,
                           load_pipeline, load_sd_components, noise_prediction_loss, train_lora)
from course_lib.sd.launch import build_parser, main, parse_config
from course_lib.sd.lora_accelerate import _ProcessGenerators, train_lora_accelerate
from course_lib.sd.lora_training import sample_indices
from _numerics import TEST_THREADS  # tests/_numerics.py

PAIRS = [("red", "circle"), ("blue", "square"), ("green", "triangle")]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd", seed=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """An image folder with metadata.jsonl: three 64x64 shapes with their captions."""
    from course_lib.data import shapes_batch, write_image_folder
    batch = shapes_batch(3, seed=0, image_size=64, pairs=PAIRS, caption_style="short")
    return write_image_folder(tmp_path_factory.mktemp("data") / "images", batch["image"], batch["caption"]), batch


def _config(dataset, out, tiny_folder, **overrides):
    settings = dict(dataset=str(dataset), output_dir=str(out), pretrained_model_name_or_path=str(tiny_folder),
                    resolution=64, max_train_steps=6, train_batch_size=2, gradient_accumulation_steps=2,
                    learning_rate=1e-2, checkpoint_every=3, seed=3, alpha=8.0, validation_prompts=("a red circle",),
                    validation_every=6, num_inference_steps=2)
    return LoRATrainingConfig(**{**settings, **overrides})


def _as_argv(config: LoRATrainingConfig) -> list[str]:
    """The command-line options that spell out every field of ``config``."""
    argv = []
    for key, value in config.to_dict().items():
        argv.append(f"--{key}")
        argv.extend(value if isinstance(value, list) else ["none" if value is None else str(value)])
    return argv


def _launch(argv: list[str], home) -> subprocess.CompletedProcess:
    """accelerate's real launcher, one CPU process, every setting passed as a flag: no config file needed."""
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "course_lib.sd.launch", *argv]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _fixed_batch_loss(unet, components, images_batch, scheduler) -> float:
    """The LDM loss of 8 copies of each image, fixed noise and timesteps (independent of the training draws)."""
    g = torch.Generator().manual_seed(123)
    pixels = images_batch["image"].repeat(8, 1, 1, 1)
    with torch.no_grad():
        z0, c = encode_images(components, pixels, g), encode_prompts(components, images_batch["caption"] * 8)
        eps, t = torch.randn(z0.shape, generator=g), torch.randint(0, 1000, (len(z0),), generator=g)
        return float(noise_prediction_loss(unet, scheduler, z0, c, eps, t))


def test_accelerate_launch_one_cpu_process_equals_train_lora_and_resumes(tiny_folder, images, tmp_path):
    home = tmp_path / "hf_home"
    home.mkdir()
    config = _config(images[0], tmp_path / "launched", tiny_folder)
    (tmp_path / "lora.json").write_text(json.dumps(config.to_dict()))
    first = _launch(["--config", str(tmp_path / "lora.json")], home)
    assert "after 6 updates" in first.stdout and "resumed" not in first.stdout
    assert not (home / "accelerate").exists()                  # no accelerate config file was read or written

    out = tmp_path / "launched"
    reference = train_lora(_config(images[0], tmp_path / "reference", tiny_folder), load_sd_components(tiny_folder))
    ours, theirs = load_safetensors(out / LORA_WEIGHT_NAME), load_safetensors(reference.lora_path)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    final = out / "checkpoints" / "checkpoint-00000006"
    assert json.loads((final / "trainer_state.json").read_text())["extra"]["loss_history"] == reference.losses
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-00000003", "checkpoint-00000006"]
    assert (out / "validation" / "step-00000006.png").is_file()
    assert LoRATrainingConfig.from_dict(json.loads((out / "training_config.json").read_text())) == config

    # one process writes train_lora's checkpoint format: the same LoRA and optimizer files, byte for byte
    theirs_3 = tmp_path / "reference" / "checkpoints" / "checkpoint-00000003"
    for name in ("lora.safetensors", "optimizer.safetensors", "optimizer.json"):
        assert (out / "checkpoints" / "checkpoint-00000003" / name).read_bytes() == (theirs_3 / name).read_bytes()

    # resume from train_lora's checkpoint 3 after losing the run's checkpoints and output; options as flags
    shutil.rmtree(out / "checkpoints")
    (out / LORA_WEIGHT_NAME).unlink()
    shutil.copytree(theirs_3, out / "checkpoints" / theirs_3.name)
    second = _launch(_as_argv(config), home)
    assert "after 6 updates, resumed from step 3" in second.stdout
    again = load_safetensors(out / LORA_WEIGHT_NAME)
    assert all(torch.equal(again[k], theirs[k]) for k in theirs)

    # diffusers reads the file, and the LoRA lowers the loss on the training images
    from diffusers import DDPMScheduler
    components, pipe = load_sd_components(tiny_folder), load_pipeline(tiny_folder)
    pipe.load_lora_weights(out)
    scheduler = DDPMScheduler.from_config(components.scheduler.config)
    before = _fixed_batch_loss(components.unet, components, images[1], scheduler)
    after = _fixed_batch_loss(pipe.unet, components, images[1], scheduler)
    assert after < 0.99 * before, (before, after)


def _torchrun(argv: list[str], home, num_processes: int) -> subprocess.CompletedProcess:
    """N CPU processes talking over gloo, started by torchrun (accelerate launch --cpu starts only one without
    MPI); ACCELERATE_USE_CPU=1 is what `accelerate launch --cpu` would set."""
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "ACCELERATE_USE_CPU": "1",
           "ACCELERATE_MIXED_PRECISION": "no"}
    with socket.socket() as probe:  # a free port for the processes' rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(num_processes),
               "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "course_lib.sd.launch", *argv]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _data_parallel_reference(config: LoRATrainingConfig, tiny_folder, num_processes: int) -> dict:
    """The LoRA weights of N data-parallel processes, computed in this one process: micro-batch j N + p of the
    stream and noise from the generator seeded seed + p for process p; gradients averaged over all N x
    gradient_accumulation_steps micro-batches; clip, AdamW step. (No accelerate, no DDP.)"""
    from diffusers import DDPMScheduler

    from course_lib.lora import lora_layers
    from course_lib.sd import precision_for
    from course_lib.sd.lora_training import (collate, load_training_dataset, make_optimizer, prepare_models,
                                             training_inputs)
    components, dataset = load_sd_components(tiny_folder), load_training_dataset(config)
    params = prepare_models(components, config, precision_for("cpu", "no"))
    optimizer, _ = make_optimizer(config, params)  # constant learning rate
    scheduler = DDPMScheduler.from_config(components.scheduler.config)
    generators = [torch.Generator().manual_seed(config.seed + p) for p in range(num_processes)]
    stream = LoRATrainingConfig(**{**config.to_dict(), "gradient_accumulation_steps": 1})
    accumulation = config.gradient_accumulation_steps
    for step in range(config.max_train_steps):
        optimizer.zero_grad()
        for micro in range(accumulation):
            for p in range(num_processes):
                k = (step * accumulation + micro) * num_processes + p
                batch = collate([dataset[i] for i in sample_indices(k, 0, stream, len(dataset))])
                inputs = training_inputs(components, batch, generators[p], 1000)
                loss = noise_prediction_loss(components.unet, scheduler, *inputs)
                (loss / (accumulation * num_processes)).backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
    return {f"unet.{name}.{ab}.weight": getattr(layer, ab).weight.detach()
            for name, layer in lora_layers(components.unet).items() for ab in ("lora_A", "lora_B")}


def test_two_cpu_processes_average_gradients_and_checkpoint_both_generators(tiny_folder, images, tmp_path):
    home = tmp_path / "hf_home"
    home.mkdir()
    config = _config(images[0], tmp_path / "ddp", tiny_folder, max_train_steps=4, checkpoint_every=2,
                     validation_prompts=(), validation_every=None)
    run = _torchrun(_as_argv(config), home, num_processes=2)
    assert run.stdout.count("wrote") == 1                      # only the main process reports (and writes)
    out = tmp_path / "ddp"
    ours = load_safetensors(out / LORA_WEIGHT_NAME)
    expected = _data_parallel_reference(config, tiny_folder, num_processes=2)
    assert ours.keys() == expected.keys()
    for key in ours:  # float sums in another order (DDP's all-reduce), hence not bit for bit
        torch.testing.assert_close(ours[key], expected[key], rtol=1e-4, atol=1e-5)

    # resuming: process i takes row i of the checkpoint's generators; with another process count, process 0
    # keeps the generator restored from rng.json (and warns), the others take fresh seeds
    checkpoint = out / "checkpoints" / "checkpoint-00000002"
    states = load_safetensors(checkpoint / "generators.safetensors")["states"]
    assert states.shape[0] == 2 and not torch.equal(states[0], states[1])
    untouched = torch.Generator().manual_seed(99).get_state()
    for index, count in [(1, 2), (0, 3), (2, 3)]:
        generator = torch.Generator().manual_seed(99)
        accelerator = SimpleNamespace(process_index=index, num_processes=count)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _ProcessGenerators(accelerator, generator).restore(checkpoint, config.seed, 2)
        state = generator.get_state()
        if count == 2:
            assert torch.equal(state, states[1]) and not caught
        elif index == 0:
            assert torch.equal(state, untouched) and "written by 2 processes" in str(caught[0].message)
        else:
            assert not caught and not any(torch.equal(state, s) for s in (*states, untouched))


def test_micro_batches_are_dealt_to_processes_in_turn():
    """With N processes, process p's j-th micro-batch is micro-batch j N + p of train_lora's stream, as
    accelerate's own data loader would deal it: one update sees train_batch_size x N x
    gradient_accumulation_steps images (the effective batch)."""
    from accelerate.data_loader import prepare_data_loader
    num_samples, num_processes = 5, 2
    config = LoRATrainingConfig(dataset="d", output_dir="o", train_batch_size=2, gradient_accumulation_steps=3,
                                max_train_steps=4, seed=11)
    stream = LoRATrainingConfig(**{**config.to_dict(), "gradient_accumulation_steps": 1})  # one micro-batch a step
    accumulation = config.gradient_accumulation_steps
    num_micro = config.max_train_steps * accumulation * num_processes
    positions = [i for m in range(num_micro) for i in sample_indices(m, 0, stream, num_samples)]
    for process in range(num_processes):
        loader = prepare_data_loader(torch.utils.data.DataLoader(positions, batch_size=config.train_batch_size),
                                     num_processes=num_processes, process_index=process, put_on_device=False)
        dealt = [batch.tolist() for batch in loader]
        ours = [sample_indices(step, micro, config, num_samples, process, num_processes)
                for step in range(config.max_train_steps) for micro in range(accumulation)]
        assert dealt == ours and len(ours) == num_micro // num_processes


def test_command_line_options_are_the_config_fields(tmp_path):
    config = LoRATrainingConfig(dataset="data", output_dir="out", alpha=None, revision=None, rank=8,
                                validation_prompts=("a red circle", "a blue square"), validation_every=5,
                                gradient_checkpointing=True, max_grad_norm=0.5, target_modules=("to_q", "to_v"))
    assert parse_config(_as_argv(config)) == config
    options = {action.dest for action in build_parser()._actions} - {"help", "config"}
    assert options == set(config.to_dict())
    (tmp_path / "c.json").write_text(json.dumps(config.to_dict()))
    overridden = parse_config(["--config", str(tmp_path / "c.json"), "--rank", "2", "--gradient_checkpointing", "no"])
    assert (overridden.rank, overridden.gradient_checkpointing, overridden.validation_prompts) == \
        (2, False, config.validation_prompts)


@pytest.mark.parametrize("argv, argname", [
    (["--output_dir", "o"], "dataset"),
    (["--dataset", "d", "--output_dir", "o", "--rank", "0"], "rank"),
    (["--dataset", "d", "--output_dir", "o", "--mixed_precision", "fp8"], "mixed_precision"),
    (["--dataset", "d", "--output_dir", "o", "--validation_every", "5"], "validation_every"),
    (["--config", "missing.json"], "--config"),
])
def test_command_line_rejects_bad_values_with_exit_code_2(argv, argname, capsys):
    assert main(argv) == 2
    assert argname in capsys.readouterr().err


@pytest.mark.parametrize("call, argname", [
    (lambda tmp: train_lora_accelerate({"dataset": "d"}), "config"),
    (lambda tmp: train_lora_accelerate(LoRATrainingConfig(dataset="d", output_dir=str(tmp)), components="unet"),
     "components"),
    (lambda tmp: train_lora_accelerate(LoRATrainingConfig(dataset="d", output_dir=str(tmp), device="cuda:1")),
     "device"),
    (lambda tmp: parse_config(["--dataset", "d", "--output_dir", "o", "--resolution", "60"]), "resolution"),
    (lambda tmp: parse_config(["--config", str((tmp / "list.json").write_text("[1]") and tmp / "list.json")]),
     "--config"),
    (lambda tmp: parse_config(["--config", str((tmp / "bad.json").write_text("{") and tmp / "bad.json")]),
     "--config"),
    (lambda tmp: parse_config(["--dataset", "d", "--output_dir", "o", "--config",
                               str((tmp / "x.json").write_text('{"lr": 1}') and tmp / "x.json")]), "lr"),
])
def test_bad_input_raises_value_error_naming_the_argument(tmp_path, call, argname):
    with pytest.raises(ValueError, match=argname):
        call(tmp_path)
