"""Contracts for course_lib.layout_guidance: centroids, the energy of a relation, the steering step, and how the
pipeline and the scenes demo use them."""
import dataclasses

import pytest
import torch

from course_lib.layout_guidance import RelationLayout, attention_centroids, layout_energy, steer_latents
from course_lib.unet import UNet, UNetConfig


def _peaks(rows: list[dict[int, tuple[int, int]]], tokens=6, size=5) -> torch.Tensor:
    """Maps (B, tokens, size, size): token p of row b puts all its attention on pixel (x, y) = rows[b][p]."""
    maps = torch.full((len(rows), tokens, size, size), 1e-9)
    for b, row in enumerate(rows):
        for token, (x, y) in row.items():
            maps[b, token, y, x] = 1.0
    return maps


def test_centroids_are_attention_weighted_positions_in_minus_one_to_one():
    maps = _peaks([{0: (0, 0), 1: (4, 4)}, {0: (4, 2), 1: (0, 2)}])
    got = attention_centroids(maps, [(0,), (0,)])
    assert torch.allclose(got, torch.tensor([[-1.0, -1.0], [1.0, 0.0]]), atol=1e-6)  # x right, y down
    both = attention_centroids(maps, [(0, 1), (0, 1)])  # two words of one object: their summed maps
    assert torch.allclose(both, torch.tensor([[0.0, 0.0], [0.0, 0.0]]), atol=1e-6)
    uniform = attention_centroids(torch.ones(1, 2, 4, 8), [(1,)])
    assert torch.allclose(uniform, torch.zeros(1, 2), atol=1e-6)


@pytest.mark.parametrize("relation, first_xy, second_xy, expected", [
    ("left of", (0, 2), (4, 2), 0.0),    # d = 2 >= margin
    ("left of", (4, 2), (0, 2), 2.5),    # d = -2: E = 0.5 - (-2)
    ("right of", (4, 2), (0, 2), 0.0),
    ("above", (2, 0), (2, 4), 0.0),
    ("below", (2, 0), (2, 4), 2.5),
    ("left of", (2, 2), (3, 2), 0.0),    # d = 0.5 = margin: just satisfied
    ("left of", (2, 0), (2, 4), 0.5),    # side by side vertically: d = 0
])
def test_energy_is_zero_once_the_relation_holds_by_the_margin(relation, first_xy, second_xy, expected):
    maps = _peaks([{2: first_xy, 4: second_xy}])
    energy = layout_energy(maps, [RelationLayout((2,), (4,), relation)], margin=0.5)
    assert energy.shape == (1,) and energy.item() == pytest.approx(expected, abs=1e-5)


def test_rows_without_a_layout_have_zero_energy():
    maps = _peaks([{2: (4, 2), 4: (0, 2)}, {2: (4, 2), 4: (0, 2)}])
    energy = layout_energy(maps, [None, RelationLayout((2,), (4,), "left of")])
    assert energy[0] == 0 and energy[1] > 0
    assert layout_energy(maps, [None, None]).eq(0).all()


def _tiny_unet(seed=0) -> UNet:
    torch.manual_seed(seed)
    return UNet(UNetConfig(block_channels=(16, 32), attention_levels=(0, 1), num_heads=2, context_dim=8,
                           norm_groups=8)).eval()


def test_record_cross_attention_keeps_the_graph_only_when_asked():
    unet = _tiny_unet()
    z, context = torch.randn(1, 4, 8, 8, requires_grad=True), torch.randn(1, 6, 8)
    with unet.record_cross_attention() as store:
        unet(z, 10, context)
    assert all(m.grad_fn is None for m in store.values())
    with unet.record_cross_attention(keep_graph=True) as store:
        unet(z, 10, context)
    assert all(m.grad_fn is not None for m in store.values())
    assert all(not b.keep_graph for b in unet.modules() if hasattr(b, "keep_graph"))  # reset on leaving


def test_steering_lowers_the_energy_and_leaves_other_pictures_alone():
    """Gradient steps on z_t move the two words' attention centroids apart in the named direction."""
    from course_lib.unet import average_cross_attention
    unet = _tiny_unet()
    g = torch.Generator().manual_seed(1)
    z, context = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 6, 8, generator=g)
    layouts = [RelationLayout((1, 2), (4, 5), "left of"), None, RelationLayout((1,), (4,), "below")]

    def energy(latents):
        with torch.no_grad(), unet.record_cross_attention() as store:
            unet(latents, 500, context)
        return layout_energy(average_cross_attention(store), layouts, margin=2.0)  # never reached: always > 0

    before, steered = energy(z), z
    for _ in range(5):
        steered = steer_latents(unet, steered, 500, context, None, layouts, scale=0.5, margin=2.0)
    after = energy(steered)
    assert after[0] < before[0] and after[2] < before[2], (before, after)
    assert torch.equal(steered[1], z[1])
    step = steer_latents(unet, z, 500, context, None, layouts, scale=0.5, margin=2.0)
    assert (step - z)[0].norm().item() == pytest.approx(0.5, rel=1e-4)  # a step of length `scale` per picture
    assert steered.grad_fn is None and not steered.requires_grad
    assert torch.equal(steer_latents(unet, z, 500, context, None, layouts, scale=0.0), z)
    assert torch.equal(steer_latents(unet, z, 500, context, None, [None] * 3), z)


@pytest.mark.parametrize("call, argname", [
    (lambda: RelationLayout((1,), (2,), "next to"), "relation"),
    (lambda: RelationLayout((), (2,), "above"), "first"),
    (lambda: RelationLayout((1,), (-2,), "above"), "second"),
    (lambda: RelationLayout((1,), (True,), "above"), "second"),
    (lambda: attention_centroids(torch.ones(2, 3, 4, 4), [(0,)]), "positions"),
    (lambda: attention_centroids(torch.ones(1, 3, 4, 4), [(3,)]), "positions"),
    (lambda: attention_centroids(torch.ones(3, 4, 4), [(0,)]), "maps"),
    (lambda: layout_energy(torch.ones(1, 3, 4, 4), [None, None]), "layouts"),
    (lambda: layout_energy(torch.ones(1, 3, 4, 4), [None], margin=-1), "margin"),
    (lambda: steer_latents(_tiny_unet(), torch.zeros(2, 4, 8, 8), 1, torch.zeros(2, 6, 8), None, [None]),
     "layouts"),
    (lambda: steer_latents(_tiny_unet(), torch.zeros(1, 4, 8, 8), 1, torch.zeros(1, 6, 8), None, [None],
                           scale=-1.0), "scale"),
    (lambda: _tiny_unet().record_cross_attention(keep_graph="yes").__enter__(), "keep_graph"),
])
def test_bad_input_raises_value_error_naming_argument(call, argname):
    with pytest.raises(ValueError, match=rf"\b{argname}\b"):
        call()


# --- the pipeline and the scenes demo -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scenes_pipe(tmp_path_factory):
    """An untrained scenes pipeline (its tokenizer knows the grammar; the weights do not matter here)."""
    from course_lib import minisd
    from course_lib.minisd import MiniSDConfig, build_pipeline
    from course_lib.text import TinyCLIP
    from course_lib.vae import VAE

    config = MiniSDConfig.fast(world="scenes")
    tokenizer = minisd.make_tokenizer(config)
    torch.manual_seed(0)
    clip = TinyCLIP(dataclasses.replace(config.clip, vocab_size=tokenizer.vocab_size, image_size=config.image_size))
    vae = VAE(config.vae)
    unet_config = dataclasses.replace(config.unet, in_channels=vae.config.latent_channels,
                                      out_channels=vae.config.latent_channels,
                                      context_dim=clip.text_encoder.config.width)
    return config, build_pipeline(config, vae, clip.text_encoder, tokenizer, UNet(unet_config), 1.0)


def test_relation_layouts_point_at_each_objects_colour_and_shape(scenes_pipe):
    from course_lib.scenes_demo import relation_layouts
    config, pipe = scenes_pipe
    captions = ["a red circle to the left of a blue square", "a red circle and a blue square", "two red circles",
                "a green triangle below a green square"]
    layouts = relation_layouts(pipe, captions)
    assert layouts[1] is None and layouts[2] is None
    L = pipe.text_encoder.config.max_length
    ids = pipe.tokenizer.encode(captions[0])
    first, second = layouts[0].first, layouts[0].second
    assert [pipe.tokenizer.vocab[ids[p]] for p in first[:2]] == ["red", "circle"] and first[2:] == (2 + L, 3 + L)
    assert [pipe.tokenizer.vocab[ids[p]] for p in second[:2]] == ["blue", "square"]
    assert layouts[0].relation == "left of" and layouts[3].relation == "below"
    assert pipe.text_features == "last_hidden_state+token_embeddings"  # hence the second copy at p + L


def test_pipeline_with_layouts_changes_relation_pictures_only(scenes_pipe):
    from course_lib.demo import generate_images
    from course_lib.scenes_demo import relation_layouts
    config, pipe = scenes_pipe
    captions = ["a red circle to the left of a blue square", "a red circle and a blue square"]
    jobs = [(c, 7) for c in captions]
    plain = generate_images(pipe, jobs, 3, 3.0)
    guided = generate_images(pipe, jobs, 3, 3.0, layouts=relation_layouts(pipe, captions), layout_guidance_scale=1.0,
                             layout_guidance_steps=2)
    assert not torch.equal(plain[0], guided[0]) and torch.equal(plain[1], guided[1])
    assert torch.equal(plain, generate_images(pipe, jobs, 3, 3.0, layouts=[None, None]))
    with pytest.raises(ValueError, match="layouts"):
        generate_images(pipe, jobs, 3, 3.0, layouts=[None])
    with pytest.raises(ValueError, match="layout_guidance_steps"):
        pipe(captions, num_inference_steps=2, layouts=[None, None], layout_guidance_steps=-1)
    with pytest.raises(ValueError, match="layout_guidance_scale"):
        dataclasses.replace(config, layout_guidance_scale=-1.0)
