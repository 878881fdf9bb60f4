"""course_lib.sd.full_finetuning: the full-UNet run sees the LoRA run's exact batches, trains every UNet weight
and nothing else; training_state_bytes agrees with AdamW's real state."""
import pytest
import torch

from course_lib.sd import LoRATrainingConfig, build_tiny_sd, load_sd_components, train_lora
from course_lib.sd.full_finetuning import train_unet_full, training_state_bytes


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from course_lib.data import shapes_batch, write_image_folder
    folder = build_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd", seed=0)
    batch = shapes_batch(3, seed=0, image_size=64, caption_style="short")
    data = write_image_folder(tmp_path_factory.mktemp("data") / "images", batch["image"], batch["caption"])
    return folder, data, tmp_path_factory


def _config(folder, data, out, lr):
    return LoRATrainingConfig(dataset=str(data), output_dir=str(out), pretrained_model_name_or_path=str(folder),
                              resolution=64, max_train_steps=2, train_batch_size=2, learning_rate=lr,
                              checkpoint_every=100, resume=None, seed=0, device="cpu")


def test_full_run_sees_the_lora_runs_batches_and_trains_every_unet_weight_only(setup):
    folder, data, factory = setup
    lora = train_lora(_config(folder, data, factory.mktemp("lora"), 1e-3), load_sd_components(folder))
    components = load_sd_components(folder)
    before = {name: {k: v.clone() for k, v in getattr(components, name).state_dict().items()}
              for name in ("unet", "vae", "text_encoder")}
    full = train_unet_full(_config(folder, data, factory.mktemp("full"), 1e-4), components)
    # update 0: LoRA's B = 0, so both runs evaluate the same UNet on the same latents, noise and timesteps
    assert abs(full.losses[0] - lora.losses[0]) <= 1e-5 * abs(lora.losses[0])
    assert full.losses[1] != lora.losses[1]  # after one update the models differ
    for name in ("vae", "text_encoder"):
        after = getattr(components, name).state_dict()
        assert all(torch.equal(after[k], v) for k, v in before[name].items()), f"{name} changed"
    after = components.unet.state_dict()
    unchanged = [k for k, v in before["unet"].items() if torch.equal(after[k], v)]
    assert not unchanged, f"UNet weights that did not train: {unchanged[:3]}"
    assert all(p.requires_grad for p in components.unet.parameters())
    assert not any(p.requires_grad for p in components.vae.parameters())


def test_training_state_bytes_matches_adamw_state():
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2))
    model[1].requires_grad_(False)  # frozen: not counted
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    trainable = [p for p in model.parameters() if p.requires_grad]
    moments = sum(state[key].numel() * state[key].element_size() for p in trainable
                  for state in [optimizer.state[p]] for key in ("exp_avg", "exp_avg_sq"))
    assert training_state_bytes(model) == {"parameters": (15 + 5) * 4, "gradients": (15 + 5) * 4,
                                           "adamw_state": moments}
    with pytest.raises(ValueError, match="model"):
        training_state_bytes("unet")
