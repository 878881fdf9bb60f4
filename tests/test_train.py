"""Contracts for course_lib.train: checkpoints round-trip everything (weights, Adam moments, scheduler, RNGs),
resume is bitwise exact, incomplete/corrupt checkpoints are never picked, a kill -9 mid-checkpoint is harmless,
a NaN loss stops the run before the bad update, EMA matches the closed form, keep_last prunes."""
import importlib.util
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from course_lib.checkpoint import checkpoint_step, copy_checkpoints
from course_lib.train import (EMA, TrainHistory, TrainingDivergedError, constant_schedule_with_warmup,
                              cosine_schedule_with_warmup, latest_checkpoint, load_checkpoint, save_checkpoint,
                              train_loop, warmup_factor)
from _numerics import TEST_THREADS  # tests/_numerics.py

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is faster on a busy shared CPU, and matches the kill test's subprocess."""
    previous = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(previous)


# A tiny regression problem whose every source of randomness goes through a different RNG: the batch comes
# from `generator`, dropout from torch's global RNG, a jitter from python's `random` and numpy's global RNG.
# Exact resume must restore all four. Shared (as source text) with the kill test's subprocess.
SETUP_SOURCE = '''
import random
import numpy as np
import torch
from torch import nn
from course_lib.train import EMA, cosine_schedule_with_warmup, train_loop


def build(seed=0, total_steps=20, width=16):
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    model = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Dropout(0.2), nn.Linear(width, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2)
    lr_scheduler = cosine_schedule_with_warmup(optimizer, warmup_steps=3, total_steps=total_steps)
    generator = torch.Generator().manual_seed(seed + 1)
    ema = EMA(model, decay=0.9)
    return model, optimizer, lr_scheduler, generator, ema


def make_step_fn(model):
    def step_fn(step, generator):
        x = torch.randn(8, 4, generator=generator)
        y = x.sum(dim=1, keepdim=True)
        jitter = 1.0 + 0.01 * random.random() + 0.01 * float(np.random.rand())
        return ((model(x) - y) ** 2).mean() * jitter
    return step_fn


def run(folder, num_steps, total_steps=20, checkpoint_every=1, width=16, keep_last=2, callback=None):
    model, optimizer, lr_scheduler, generator, ema = build(total_steps=total_steps, width=width)
    history = train_loop(make_step_fn(model), num_steps, modules={"model": model}, optimizer=optimizer,
                         lr_scheduler=lr_scheduler, generator=generator, checkpoint_dir=folder,
                         checkpoint_every=checkpoint_every, resume="latest", max_grad_norm=1.0, ema=ema,
                         keep_last=keep_last, callback=callback)
    return model, optimizer, ema, history


if __name__ == "__main__":
    import sys
    torch.set_num_threads(1)
    folder, num_steps, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    run(folder, num_steps, total_steps=num_steps, width=width)
'''


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    path = tmp_path_factory.mktemp("setup") / "train_setup.py"
    path.write_text(SETUP_SOURCE)
    spec = importlib.util.spec_from_file_location("train_setup", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.path = path
    return module


def seed_everything(seed):
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def assert_states_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_optimizers_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for index in sa["state"]:
        assert_states_equal(sa["state"][index], sb["state"][index])


# ------------------------------------------------------------------------------------------- round trip

def test_checkpoint_round_trip_restores_everything(trainer, tmp_path):
    seed_everything(0)
    model, optimizer, lr_scheduler, generator, ema = trainer.build()
    step_fn = trainer.make_step_fn(model)
    for step in range(3):  # a few real updates so Adam has moments and the scheduler has moved
        optimizer.zero_grad()
        step_fn(step, generator).backward()
        optimizer.step()
        lr_scheduler.step()
        ema.update()
    path = save_checkpoint(tmp_path, 3, {"model": model, "ema": ema}, optimizer, lr_scheduler, generator,
                           extra={"note": "hello", "losses": [0.5, 0.25]})
    assert path == tmp_path / "checkpoint-00000003" and latest_checkpoint(tmp_path) == path
    # what every RNG would produce next, and the full training state
    expected_draws = (torch.rand(3), random.random(), np.random.rand(), torch.rand(3, generator=generator))
    expected_model, expected_ema = model.state_dict(), {k: v.clone() for k, v in ema.state_dict().items()}
    expected_scheduler = lr_scheduler.state_dict()

    seed_everything(123)  # different everything
    model2, optimizer2, lr_scheduler2, generator2, ema2 = trainer.build(seed=7)
    state = load_checkpoint(path, {"model": model2, "ema": ema2}, optimizer2, lr_scheduler2, generator2)
    assert state == {"step": 3, "extra": {"note": "hello", "losses": [0.5, 0.25]}}
    assert_states_equal(model2.state_dict(), expected_model)
    assert_states_equal(ema2.state_dict(), expected_ema)
    assert ema2.num_updates == 3
    assert_optimizers_equal(optimizer2, optimizer)
    assert isinstance(optimizer2.param_groups[0]["betas"], tuple)  # no silent tuple -> list change
    assert optimizer2.state[optimizer2.param_groups[0]["params"][0]]["exp_avg_sq"].abs().sum() > 0
    assert lr_scheduler2.state_dict() == expected_scheduler
    assert optimizer2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    draws = (torch.rand(3), random.random(), np.random.rand(), torch.rand(3, generator=generator2))
    assert torch.equal(draws[0], expected_draws[0]) and torch.equal(draws[3], expected_draws[3])
    assert draws[1:3] == expected_draws[1:3]
    # the checkpoint holds no pickle: only safetensors and JSON
    assert {p.suffix for p in path.iterdir()} == {".safetensors", ".json"}


# ------------------------------------------------------------------------------------------- exact resume

@pytest.mark.parametrize("interruption", ["stop-at-10", "crash-at-13"])
def test_resume_is_bitwise_exact(trainer, tmp_path, interruption):
    seed_everything(0)
    straight_model, straight_opt, straight_ema, straight = trainer.run(tmp_path / "straight", 20,
                                                                            checkpoint_every=None)
    assert straight.resumed_from is None and len(straight.losses) == 20

    class Crash(Exception):
        pass

    def crash_at_13(step, loss):
        if step == 13:
            raise Crash

    seed_everything(0)
    if interruption == "stop-at-10":
        _, _, _, first = trainer.run(tmp_path / "resumed", 10, checkpoint_every=5)
        assert first.checkpoint.name == "checkpoint-00000010"
    else:
        with pytest.raises(Crash):
            trainer.run(tmp_path / "resumed", 20, checkpoint_every=5, callback=crash_at_13)
        assert latest_checkpoint(tmp_path / "resumed").name == "checkpoint-00000010"
    seed_everything(99)  # the resumed process starts with other global RNG states: the checkpoint fixes them
    model, optimizer, ema, resumed = trainer.run(tmp_path / "resumed", 20, checkpoint_every=5)

    assert resumed.resumed_from == 10
    assert resumed.losses == straight.losses  # the history is complete, and equal float for float
    assert_states_equal(model.state_dict(), straight_model.state_dict())  # BITWISE
    assert_states_equal(ema.state_dict(), straight_ema.state_dict())
    assert_optimizers_equal(optimizer, straight_opt)
    assert not torch.equal(ema.shadow["0.weight"], model[0].weight)  # the EMA is a real average


# ------------------------------------------------------------------------------ incomplete or corrupt

def test_latest_checkpoint_skips_incomplete_and_corrupt(trainer, tmp_path):
    model, optimizer, lr_scheduler, generator, _ = trainer.build()
    modules = {"model": model}
    for step in range(1, 7):
        save_checkpoint(tmp_path, step, modules, optimizer, lr_scheduler, generator)
    (tmp_path / "checkpoint-00000004" / "manifest.json").unlink()                 # marker missing
    weights = tmp_path / "checkpoint-00000005" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])      # truncated safetensors
    (tmp_path / "checkpoint-00000006" / "rng.json").unlink()                      # a file missing
    half = tmp_path / ".tmp-checkpoint-00000009-abcd"                             # a write killed midway
    shutil.copytree(tmp_path / "checkpoint-00000003", half)
    (half / "optimizer.safetensors").write_bytes(b"\x00" * 10)
    (tmp_path / "checkpoint-00000010").mkdir()                                    # empty folder
    with pytest.warns(UserWarning, match="skipping checkpoint") as record:
        latest = latest_checkpoint(tmp_path)
    assert latest == tmp_path / "checkpoint-00000003" and len(record) == 4
    load_checkpoint(latest, modules, optimizer, lr_scheduler, generator)
    for name, reason in [("checkpoint-00000004", "manifest"), ("checkpoint-00000005", "truncated or corrupt"),
                         ("checkpoint-00000006", "rng.json is missing"), ("checkpoint-00000010", "manifest"),
                         ("nope", "not found")]:
        with pytest.raises(ValueError, match=f"path.*{reason}"):
            load_checkpoint(tmp_path / name, modules, optimizer)
    assert latest_checkpoint(tmp_path / "does-not-exist") is None


def test_bit_flip_is_detected(trainer, tmp_path):
    model, *_ = trainer.build()
    path = save_checkpoint(tmp_path, 1, {"model": model})
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # same size, one bit of one weight differs
    weights.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="corrupt"):
        assert latest_checkpoint(tmp_path) is None


def _checkpoint_steps(folder: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*"))


def test_kill_during_checkpointing_leaves_a_loadable_checkpoint(trainer, tmp_path):
    """kill -9 a training run (checkpointing every step, so it is nearly always mid-write) at random moments;
    each time the newest complete checkpoint loads, and the run finished from there equals an uninterrupted
    run bit for bit."""
    num_steps, width = 24, 256
    folder = tmp_path / "ckpt"
    command = [sys.executable, str(trainer.path), str(folder), str(num_steps), str(width)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    rng = random.Random(0)
    kills = 0
    for _ in range(2):
        newest_before = max(_checkpoint_steps(folder), default=0) if folder.exists() else 0
        process = subprocess.Popen(command, env=env, cwd=REPO)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:  # wait until it wrote a new checkpoint
            if folder.exists() and max(_checkpoint_steps(folder), default=0) > newest_before:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.1))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
        path = latest_checkpoint(folder)  # the newest complete one: loads fine
        assert path is not None
        model, optimizer, lr_scheduler, generator, ema = trainer.build(total_steps=num_steps, width=width)
        state = load_checkpoint(path, {"model": model, "ema": ema}, optimizer, lr_scheduler, generator)
        assert len(state["extra"]["loss_history"]) == state["step"] >= 1
    assert kills >= 1
    resumed, _, _, history = trainer.run(folder, num_steps, total_steps=num_steps, width=width)  # finish here
    assert history.resumed_from is not None and len(history.losses) == num_steps
    reference, *_ = trainer.run(tmp_path / "reference", num_steps, total_steps=num_steps, width=width,
                                checkpoint_every=None)
    assert_states_equal(resumed.state_dict(), reference.state_dict())


# ----------------------------------------------------------------------------------------- divergence

def test_nan_loss_raises_and_keeps_the_last_good_checkpoint(trainer, tmp_path):
    seed_everything(0)
    model, optimizer, lr_scheduler, generator, _ = trainer.build()
    step_fn = trainer.make_step_fn(model)
    weights_after = {}

    def poisoned(step, gen):
        loss = step_fn(step, gen)
        return loss * float("nan") if step == 5 else loss

    def remember(step, loss):
        weights_after[step + 1] = {k: v.clone() for k, v in model.state_dict().items()}

    with pytest.raises(TrainingDivergedError, match=r"nan at step 5.*learning rate.*bad data.*fp16") as info:
        train_loop(poisoned, 10, modules={"model": model}, optimizer=optimizer, lr_scheduler=lr_scheduler,
                   generator=generator, checkpoint_dir=tmp_path, checkpoint_every=2, callback=remember)
    assert isinstance(info.value, FloatingPointError) and info.value.step == 5 and math.isnan(info.value.loss)
    assert "checkpoint-00000004" in str(info.value)
    assert _checkpoint_steps(tmp_path) == [2, 4]  # nothing saved after the bad step
    assert_states_equal(model.state_dict(), weights_after[5])  # no update was made with the NaN loss
    fresh, *_ = trainer.build(seed=3)
    load_checkpoint(tmp_path / "checkpoint-00000004", {"model": fresh})
    assert_states_equal(fresh.state_dict(), weights_after[4])


def test_infinite_gradient_norm_raises():
    w = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([w], lr=0.1)

    def step_fn(step, generator):  # finite loss (0), infinite gradient (d sqrt(x) / dx at 0)
        return torch.sqrt((w - w.detach()).abs().sum())

    with pytest.raises(TrainingDivergedError, match="gradient norm is (inf|nan) at step 0"):
        train_loop(step_fn, 3, modules={"w": nn.ParameterList([w])}, optimizer=optimizer, max_grad_norm=1.0)
    assert torch.equal(w.detach(), torch.ones(3))


# ----------------------------------------------------------------------------------------------- EMA

@pytest.mark.parametrize("warmup", [True, False])
def test_ema_matches_hand_computation(warmup):
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0]]))
    ema = EMA(model, decay=0.5, warmup=warmup)
    shadow = [1.0, -2.0]
    for n, target in enumerate([[3.0, 0.0], [5.0, 1.0], [-1.0, 4.0]], start=1):
        with torch.no_grad():
            model.weight.copy_(torch.tensor([target]))
        d = min(0.5, (1 + n) / (10 + n)) if warmup else 0.5  # warmup: 2/11, 3/12, 4/13 -> all below 0.5
        ema.update()
        shadow = [d * s + (1 - d) * t for s, t in zip(shadow, target)]
        torch.testing.assert_close(ema.shadow["weight"], torch.tensor([shadow]), atol=1e-6, rtol=0)
    assert ema.num_updates == 3
    trained = model.weight.detach().clone()
    with ema.average_parameters():
        torch.testing.assert_close(model.weight.detach(), torch.tensor([shadow]), atol=1e-6, rtol=0)
    assert torch.equal(model.weight.detach(), trained)  # restored after the block
    other = nn.Linear(2, 1, bias=False)
    ema.copy_to(other)
    assert torch.equal(other.weight.detach(), ema.shadow["weight"])


def test_ema_tracks_only_trainable_parameters():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    model[0].requires_grad_(False)
    ema = EMA(model)
    assert set(ema.shadow) == {"1.weight", "1.bias"}
    with pytest.raises(ValueError, match="state_dict"):
        ema.load_state_dict({"num_updates": torch.tensor(0)})


# --------------------------------------------------------------------------------------- keep_last

def test_keep_last_prunes_older_checkpoints(trainer, tmp_path):
    model, *_ = trainer.build()
    (tmp_path / ".tmp-checkpoint-00000001-stale").mkdir()  # leftover of a killed write
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, {"model": model}, keep_last=2)
    assert _checkpoint_steps(tmp_path) == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-00000004", "checkpoint-00000005"]
    save_checkpoint(tmp_path, 5, {"model": model}, keep_last=1)  # re-saving a step replaces it
    assert _checkpoint_steps(tmp_path) == [5] and latest_checkpoint(tmp_path).name == "checkpoint-00000005"
    # the loop's default keep_last=2
    seed_everything(0)
    _, _, _, history = trainer.run(tmp_path / "loop", 7, checkpoint_every=2)
    assert _checkpoint_steps(tmp_path / "loop") == [6, 7] and history.checkpoint.name == "checkpoint-00000007"
    _, _, _, history = trainer.run(tmp_path / "all", 4, checkpoint_every=1, keep_last=None)
    assert _checkpoint_steps(tmp_path / "all") == [1, 2, 3, 4]



def test_copy_checkpoints_mirrors_complete_checkpoints_and_prunes(trainer, tmp_path):
    trainer.run(tmp_path / "run", 6, checkpoint_every=2, keep_last=None)
    (tmp_path / "run" / "checkpoint-00000099").mkdir()  # a write that never finished: no manifest
    copy_checkpoints(tmp_path / "run", tmp_path / "drive", keep_last=2)
    assert _checkpoint_steps(tmp_path / "drive") == [4, 6]
    assert [p.name for p in (tmp_path / "drive").iterdir() if p.name.startswith(".")] == []
    for step in (4, 6):
        name = f"checkpoint-{step:08d}"
        for file in (tmp_path / "run" / name).iterdir():
            assert (tmp_path / "drive" / name / file.name).read_bytes() == file.read_bytes()
    assert latest_checkpoint(tmp_path / "drive").name == "checkpoint-00000006"  # manifest and hashes check out
    assert checkpoint_step(tmp_path / "drive" / "checkpoint-00000006") == 6


def test_train_loop_custom_checkpoint_fn_and_quiet_progress(trainer, tmp_path, capsys):
    """checkpoint_fn replaces save_checkpoint (a multi-process run writes on one process only: None elsewhere)."""
    calls = []

    def only_records(folder, step, modules, *args, **kwargs):
        calls.append((step, sorted(modules), kwargs["extra"]["loss_history"][:]))
        return None

    model, optimizer, lr_scheduler, generator, _ = trainer.build()
    history = train_loop(trainer.make_step_fn(model), 4, modules={"model": model}, optimizer=optimizer,
                         generator=generator, checkpoint_dir=tmp_path / "none", checkpoint_every=2,
                         checkpoint_fn=only_records, progress=False)
    assert [(step, names) for step, names, _ in calls] == [(2, ["model"]), (4, ["model"])]
    assert calls[1][2] == history.losses and history.checkpoint is None and not (tmp_path / "none").exists()
    assert "train" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ schedule

def test_cosine_schedule_matches_diffusers():
    from diffusers.optimization import get_cosine_schedule_with_warmup
    lrs = []
    for make in (lambda o: cosine_schedule_with_warmup(o, warmup_steps=4, total_steps=20),
                 lambda o: get_cosine_schedule_with_warmup(o, num_warmup_steps=4, num_training_steps=20)):
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
        scheduler = make(optimizer)
        seen = []
        for _ in range(22):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        lrs.append(seen)
    assert lrs[0] == pytest.approx(lrs[1], abs=1e-12)
    assert lrs[0][0] == 0.0 and lrs[0][4] == 0.5 and lrs[0][20] == pytest.approx(0.0, abs=1e-12)
    assert lrs[0][12] == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 8 / 16)))


def _lrs_seen(make_scheduler, steps: int, lr: float = 0.5) -> list[float]:
    """The lr each of ``steps`` optimizer updates used."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler, seen = make_scheduler(optimizer), []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_one_warmup_rule_update_s_uses_s_over_w():
    """Update s (0-based) of a W-step warm-up uses lr0 * s / W: 0, lr0/4, lr0/2, 3 lr0/4, then lr0 (W = 4), in
    both schedules, as diffusers' get_constant_schedule_with_warmup / get_cosine_schedule_with_warmup."""
    from diffusers.optimization import get_constant_schedule_with_warmup
    expected = [0.0, 0.125, 0.25, 0.375, 0.5, 0.5, 0.5]
    assert [warmup_factor(s, 4) * 0.5 for s in range(7)] == expected
    constant = _lrs_seen(lambda o: constant_schedule_with_warmup(o, warmup_steps=4), 7)
    assert constant == pytest.approx(expected, abs=1e-12)
    assert constant == pytest.approx(_lrs_seen(lambda o: get_constant_schedule_with_warmup(o, 4), 7), abs=1e-12)
    assert _lrs_seen(lambda o: cosine_schedule_with_warmup(o, 4, 100), 5) == pytest.approx(expected[:5], abs=1e-12)
    assert _lrs_seen(lambda o: constant_schedule_with_warmup(o, warmup_steps=0), 2) == [0.5, 0.5]


def test_train_loop_history_and_progress(trainer, tmp_path):
    seed_everything(0)
    model, optimizer, lr_scheduler, generator, _ = trainer.build()
    seen = []
    history = train_loop(trainer.make_step_fn(model), 5, modules={"model": model}, optimizer=optimizer,
                         generator=generator, callback=lambda step, loss: seen.append((step, loss)))
    assert isinstance(history, TrainHistory) and history.checkpoint is None
    assert [s for s, _ in seen] == [0, 1, 2, 3, 4] and [loss for _, loss in seen] == history.losses
    assert all(isinstance(loss, float) and math.isfinite(loss) for loss in history.losses)


# ----------------------------------------------------------------------------------------- bad input

def _model():
    return nn.Linear(2, 1)


def _opt(model=None):
    return torch.optim.SGD((model or _model()).parameters(), lr=0.1)


def _loop(**overrides):
    model = _model()
    kwargs = dict(modules={"model": model}, optimizer=_opt(model))
    kwargs.update(overrides)
    step_fn = kwargs.pop("step_fn", lambda step, generator: model(torch.ones(1, 2)).sum())
    num_steps = kwargs.pop("num_steps", 2)
    return train_loop(step_fn, num_steps, **kwargs)


BAD_INPUTS = [
    ("folder", lambda tmp: save_checkpoint(None, 1, {"m": _model()})),
    ("folder", lambda tmp: save_checkpoint(tmp / "file.txt", 1, {"m": _model()})),
    ("step", lambda tmp: save_checkpoint(tmp, -1, {"m": _model()})),
    ("step", lambda tmp: save_checkpoint(tmp, 1.0, {"m": _model()})),
    ("modules", lambda tmp: save_checkpoint(tmp, 1, {})),
    ("modules", lambda tmp: save_checkpoint(tmp, 1, [_model()])),
    ("modules", lambda tmp: save_checkpoint(tmp, 1, {"optimizer": _model()})),
    ("modules", lambda tmp: save_checkpoint(tmp, 1, {"a/b": _model()})),
    ("modules", lambda tmp: save_checkpoint(tmp, 1, {"m": torch.zeros(2)})),
    ("optimizer", lambda tmp: save_checkpoint(tmp, 1, {"m": _model()}, optimizer={"lr": 1})),
    ("lr_scheduler", lambda tmp: save_checkpoint(tmp, 1, {"m": _model()}, lr_scheduler=lambda s: 1.0)),
    ("generator", lambda tmp: save_checkpoint(tmp, 1, {"m": _model()}, generator=0)),
    ("extra", lambda tmp: save_checkpoint(tmp, 1, {"m": _model()}, extra=[1, 2])),
    ("extra", lambda tmp: save_checkpoint(tmp, 1, {"m": _model()}, extra={"t": torch.zeros(1)})),
    ("extra", lambda tmp: save_checkpoint(tmp, 1, {"m": _model()}, extra={"x": float("nan")})),
    ("keep_last", lambda tmp: save_checkpoint(tmp, 1, {"m": _model()}, keep_last=0)),
    ("folder", lambda tmp: latest_checkpoint(3)),
    ("folder", lambda tmp: latest_checkpoint(tmp / "file.txt")),
    ("path", lambda tmp: load_checkpoint(tmp / "missing", {"m": _model()})),
    ("path", lambda tmp: load_checkpoint(tmp / "file.txt", {"m": _model()})),
    ("modules", lambda tmp: load_checkpoint(save_checkpoint(tmp, 1, {"m": _model()}), {"other": _model()})),
    ("modules", lambda tmp: load_checkpoint(save_checkpoint(tmp, 1, {"m": _model()}), {"m": nn.Linear(3, 1)})),
    ("optimizer", lambda tmp: load_checkpoint(save_checkpoint(tmp, 1, {"m": _model()}), {"m": _model()},
                                              optimizer=_opt())),
    ("generator", lambda tmp: load_checkpoint(save_checkpoint(tmp, 1, {"m": _model()}), {"m": _model()},
                                              generator=torch.Generator())),
    ("restore_rng", lambda tmp: load_checkpoint(save_checkpoint(tmp, 1, {"m": _model()}), {"m": _model()},
                                                restore_rng="yes")),
    ("step_fn", lambda tmp: _loop(step_fn="loss")),
    ("step_fn", lambda tmp: _loop(step_fn=lambda step, generator: 1.0)),
    ("step_fn", lambda tmp: _loop(step_fn=lambda step, generator: torch.ones(2, requires_grad=True))),
    ("num_steps", lambda tmp: _loop(num_steps=-1)),
    ("modules", lambda tmp: _loop(modules=None)),
    ("optimizer", lambda tmp: _loop(optimizer=None)),
    ("checkpoint_every", lambda tmp: _loop(checkpoint_every=0, checkpoint_dir=tmp)),
    ("checkpoint_dir", lambda tmp: _loop(checkpoint_every=5)),
    ("checkpoint_dir", lambda tmp: _loop(resume="latest")),
    ("checkpoint_dir", lambda tmp: _loop(checkpoint_dir=tmp / "file.txt")),
    ("resume", lambda tmp: _loop(resume=3)),
    ("path", lambda tmp: _loop(resume=tmp / "no-such-checkpoint")),
    ("max_grad_norm", lambda tmp: _loop(max_grad_norm=0.0)),
    ("desc", lambda tmp: _loop(desc=None)),
    ("callback", lambda tmp: _loop(callback="print")),
    ("keep_last", lambda tmp: _loop(keep_last=0, checkpoint_dir=tmp)),
    ("ema", lambda tmp: _loop(ema=0.999)),
    ("checkpoint_fn", lambda tmp: _loop(checkpoint_fn="save")),
    ("progress", lambda tmp: _loop(progress="yes")),
    ("warmup_steps", lambda tmp: constant_schedule_with_warmup(_opt(), warmup_steps=-1)),
    ("target", lambda tmp: copy_checkpoints(tmp, 3)),
    ("keep_last", lambda tmp: copy_checkpoints(tmp, tmp / "copy", keep_last=0)),
    ("path", lambda tmp: checkpoint_step(tmp / "ckpt-3")),
    ("ema", lambda tmp: _loop(ema=EMA(_model()), modules={"ema": _model()})),
    ("num_steps", lambda tmp: _loop(num_steps=0, resume=save_checkpoint(tmp, 5, {"model": _model()},
                                                                      optimizer=_opt()))),
    ("model", lambda tmp: EMA("model")),
    ("decay", lambda tmp: EMA(_model(), decay=1.0)),
    ("decay", lambda tmp: EMA(_model(), decay=-0.1)),
    ("warmup", lambda tmp: EMA(_model(), warmup=1)),
    ("model", lambda tmp: EMA(_model().requires_grad_(False))),
    ("model", lambda tmp: EMA(_model()).copy_to(nn.Linear(5, 5, bias=False))),
    ("state_dict", lambda tmp: EMA(_model()).load_state_dict({"num_updates": torch.tensor(1)})),
    ("optimizer", lambda tmp: cosine_schedule_with_warmup(None, 1, 10)),
    ("warmup_steps", lambda tmp: cosine_schedule_with_warmup(_opt(), -1, 10)),
    ("warmup_steps", lambda tmp: cosine_schedule_with_warmup(_opt(), 11, 10)),
    ("total_steps", lambda tmp: cosine_schedule_with_warmup(_opt(), 0, 0)),
]


@pytest.mark.parametrize("argname, call", BAD_INPUTS, ids=[f"{i}-{a}" for i, (a, _) in enumerate(BAD_INPUTS)])
def test_bad_input_raises_value_error_naming_the_argument(argname, call, tmp_path):
    (tmp_path / "file.txt").write_text("not a folder")
    with pytest.raises(ValueError, match=argname):
        call(tmp_path)
