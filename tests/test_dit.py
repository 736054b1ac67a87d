"""lrm's latent DiT: shapes, conditioning, adaLN-zero, a short overfit, save/load and its refusals."""

import json

import pytest
import torch

from torch import nn

from lrm.generators import DIT_PRESETS, DenoiserMismatchError, LatentDiT, build_dit, inflate, load_denoiser, save_denoiser

C, D = 8, 12  # latent channels, text width: tiny, so every test runs in a second or two
DCT = {"name": "dct", "version": "1", "channels": C, "spatial_factor": 8, "temporal_factor": 1, "scale": 1.0}


def tiny(frames=1, **overrides) -> LatentDiT:
    torch.manual_seed(0)
    return build_dit("dit-xs", C, D, frames, **{"width": 32, **overrides})


def inputs(b=2, frames=1, size=8, tokens=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, frames, C, size, size, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    text = torch.randn(b, tokens, D, generator=g)
    mask = torch.ones(b, tokens, dtype=torch.bool)
    mask[0, 3:] = False
    return x, t, text, mask


def randomise(model: LatentDiT) -> LatentDiT:
    """Every parameter drawn at random: a model whose outputs depend on all of them (not the zero init)."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("frames", [1, 4])
@pytest.mark.parametrize("with_text", [True, False])
def test_forward_shapes(frames, with_text):
    model = randomise(tiny(frames))
    x, t, text, mask = inputs(frames=frames)
    out = model(x, t, text, mask) if with_text else model(x, t)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    assert out.abs().mean() > 0


def test_defaults_and_float_timesteps():
    model = randomise(tiny())
    assert model.prediction == "conjugate-v"
    assert model.schedule_config == {"type": "vp", "betas": "linear", "num_timesteps": 1000}
    x, _, text, mask = inputs()
    out = model(x, torch.tensor([0.5, 999.0]), text, mask)  # flow models pass float timesteps
    assert out.shape == x.shape
    assert not torch.allclose(out, model(x, torch.tensor([1.5, 999.0]), text, mask))


def test_zero_output_at_init():
    model = build_dit("dit-xs", C, D, frames=4)
    x, t, text, mask = inputs(frames=4)
    assert torch.equal(model(x, t, text, mask), torch.zeros_like(x))


def test_masked_tokens_do_not_matter_and_text_does():
    model = randomise(tiny(frames=2))
    x, t, text, mask = inputs(frames=2)
    changed = text.clone()
    changed[0, 3:] = torch.randn(2, D) * 100  # masked-out tokens of sample 0
    assert torch.allclose(model(x, t, text, mask), model(x, t, changed, mask), atol=1e-5)
    changed[0, 0] += 1.0  # a valid token
    assert not torch.allclose(model(x, t, text, mask)[0], model(x, t, changed, mask)[0], atol=1e-4)
    # a row whose mask is all False is the unconditional branch, the same as text=None
    mask[1] = False
    with_rows = model(x, t, text, mask)
    assert torch.allclose(with_rows[1], model(x[1:], t[1:])[0], atol=1e-5)
    assert not torch.allclose(with_rows[0], model(x[:1], t[:1])[0], atol=1e-4)


def test_frames_are_independent_without_temporal_layers():
    image_model = randomise(tiny(frames=1))
    x, t, text, mask = inputs(frames=3)
    clip = image_model(x, t, text, mask)
    frame = image_model(x[:, 1:2], t, text, mask)
    assert torch.allclose(clip[:, 1:2], frame, atol=1e-5)  # an image model denoises a clip frame by frame
    video_model = randomise(tiny(frames=3))
    assert not torch.allclose(video_model(x, t, text, mask)[:, 1:2], video_model(x[:, 1:2], t, text, mask), atol=1e-4)


def test_backward_reaches_every_parameter_from_the_zero_init():
    """adaLN-zero: at init only the final layer has gradients; after two optimiser steps the gates have
    opened and one backward reaches every parameter."""
    model = tiny(frames=2)
    x, t, text, mask = inputs(frames=2)
    target = torch.randn_like(x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gates = [block.modulation[1].weight for block in model.blocks]
    for step in range(3):
        opt.zero_grad()
        (model(x, t, text, mask) - target).square().mean().backward()
        if step == 0:
            assert model.final.weight.grad.abs().sum() > 0
            assert all(g.grad is None or g.grad.abs().sum() == 0 for g in gates)  # gated off by the zero final layer
        if step == 1:
            assert all(g.grad.abs().sum() > 0 for g in gates)  # the gates get gradients
        opt.step()
    missing = [name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_gradient_checkpointing_gives_the_same_gradients():
    x, t, text, mask = inputs(frames=2)
    grads = []
    for flag in (False, True):
        model = randomise(tiny(frames=2, gradient_checkpointing=flag)).train()
        model(x, t, text, mask).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_overfits_one_batch_on_the_conjugate_v_target():
    """x_t = sqrt(abar) x0 + sqrt(1 - abar) eps (linear betas, T = 1000), target x0 - eps (DOLLAR Eq. 13)."""
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float()
    model = tiny()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 1, C, 8, 8, generator=g)
    eps = torch.randn(4, 1, C, 8, 8, generator=g)
    t = torch.tensor([50, 300, 600, 900])
    a = abar[t].view(-1, 1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    _, _, text, mask = inputs(b=4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = (model(x_t, t, text, mask) - (x0 - eps)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(2.0, rel=0.2)  # zero output: E|x0 - eps|^2 = 2
    assert losses[-1] < 0.5 * losses[0]


def test_save_load_round_trip(tmp_path):
    model = randomise(tiny(frames=2)).eval()
    model.codec_settings, model.text_encoder_id = DCT, "minilm-l6-v2"
    save_denoiser(model, tmp_path / "teacher", extra={"steps": 7})
    config = json.loads((tmp_path / "teacher" / "config.json").read_text())
    assert config["preset"] == "dit-xs" and config["dimensions"]["width"] == 32 and config["frames"] == 2
    assert config["prediction"] == "conjugate-v" and config["schedule_config"]["type"] == "vp"
    assert config["codec_settings"] == DCT and config["text_encoder_id"] == "minilm-l6-v2"
    loaded = load_denoiser(tmp_path / "teacher", codec_settings=DCT, text_encoder_id="minilm-l6-v2")
    assert not loaded.training and loaded.preset == "dit-xs" and loaded.codec_settings == DCT
    x, t, text, mask = inputs(frames=2)
    assert torch.equal(model(x, t, text, mask), loaded(x, t, text, mask))


def test_flow_schedule_and_prediction_are_saved(tmp_path):
    schedule = {"type": "flow", "shift": 3.0, "num_timesteps": 1000}
    model = tiny(prediction="flow", schedule_config=schedule)
    save_denoiser(model, tmp_path / "m")
    loaded = load_denoiser(tmp_path / "m")
    assert loaded.prediction == "flow" and loaded.schedule_config == schedule


def test_load_refuses_another_codec_or_text_encoder(tmp_path):
    model = tiny()
    model.codec_settings, model.text_encoder_id = DCT, "minilm-l6-v2"
    save_denoiser(model, tmp_path / "m")
    with pytest.raises(DenoiserMismatchError, match=r"differs in: name, spatial_factor.*encode with the codec"):
        load_denoiser(tmp_path / "m", codec_settings={**DCT, "name": "taef2", "spatial_factor": 16})
    with pytest.raises(DenoiserMismatchError, match=r"'minilm-l6-v2' tokens, not 't5:/x'.*lrm.text.load"):
        load_denoiser(tmp_path / "m", text_encoder_id="t5:/x")
    with pytest.raises(DenoiserMismatchError) as caught:
        load_denoiser(tmp_path / "m", codec_settings={**DCT, "scale": 2.0})
    assert "\n" not in str(caught.value) and "differs in: scale" in str(caught.value)


def test_format_v1_video_models_are_refused_and_v1_image_models_load(tmp_path):
    """Format v1 added a video DiT's frame positions to every token; v2 adds them inside temporal attention."""
    for frames in (1, 2):
        folder = save_denoiser(tiny(frames=frames), tmp_path / f"m{frames}")
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "format_version": 1}))
    assert load_denoiser(tmp_path / "m1").frames == 1
    with pytest.raises(ValueError, match="video DiT of format v1.*retrain it"):
        load_denoiser(tmp_path / "m2")


def test_missing_folder_or_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="denoiser folder .*nowhere not found"):
        load_denoiser(tmp_path / "nowhere")
    save_denoiser(tiny(), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model.safetensors not found"):
        load_denoiser(tmp_path / "m")


def test_bad_inputs_get_clear_errors():
    model = tiny()
    x, t, text, mask = inputs()
    with pytest.raises(ValueError, match=r"unsqueeze\(1\)"):
        model(x[:, 0], t)
    with pytest.raises(ValueError, match="expects 8 latent channels, got 3"):
        model(x[:, :, :3], t)
    with pytest.raises(ValueError, match="multiples of the patch size 2"):
        model(x[..., :7, :7], t)
    with pytest.raises(ValueError, match=r"text must have shape \(2, L, 12\)"):
        model(x, t, text[..., :5])
    with pytest.raises(ValueError, match="text_mask given without text"):
        model(x, t, None, mask)
    with pytest.raises(ValueError, match="t must be a tensor of 2 timesteps"):
        model(x, t[:1], text, mask)
    with pytest.raises(KeyError, match="unknown DiT preset 'dit-xl'"):
        build_dit("dit-xl", C, D)
    with pytest.raises(ValueError, match="width 36 must be a multiple of heads 5"):
        LatentDiT(C, D, depth=1, width=36, heads=5, patch=2)
    with pytest.raises(ValueError, match="depth must be a positive integer, got 0"):
        LatentDiT(C, D, depth=0, width=32, heads=2, patch=2)
    with pytest.raises(ValueError, match="unknown prediction type 'epsilon'"):
        tiny(prediction="epsilon")  # refused when built, not when first sampled
    with pytest.raises(ValueError, match="eps model on a flow schedule cannot give x0 at sigma = 1"):
        tiny(prediction="eps", schedule_config={"type": "flow", "shift": 3.0, "num_timesteps": 1000})


def test_a_damaged_saved_model_is_named_with_the_fix_in_one_line(tmp_path):
    """A truncated weights file, weights of another size, a config without dimensions or not JSON at all: one line
    naming the file, not safetensors' or torch's multi-line errors."""
    def damaged(name, change) -> str:
        folder = save_denoiser(tiny(), tmp_path / name)
        change(folder)
        with pytest.raises(ValueError) as caught:
            load_denoiser(folder)
        message = str(caught.value)
        assert "\n" not in message and str(folder) in message and "rerun the command that wrote it" in message
        return message

    def edit_config(**changes):
        def change(folder):
            config = json.loads((folder / "config.json").read_text())
            config.update(changes)
            (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
        return change

    def truncate(folder):
        path = folder / "model.safetensors"
        path.write_bytes(path.read_bytes()[:1000])

    assert "cannot be read as safetensors" in damaged("truncated", truncate)
    wider = damaged("wider", lambda f: edit_config(dimensions={**tiny().dimensions(), "width": 64})(f))
    assert "does not hold the weights config.json describes" in wider
    assert "has no \"dimensions\"" in damaged("no-dimensions", edit_config(dimensions=None))
    assert "do not build a DiT" in damaged("unknown-dimension", edit_config(dimensions={**tiny().dimensions(),
                                                                                          "colour": 3}))
    assert "is not valid JSON" in damaged("not-json", lambda f: (f / "config.json").write_text("{'a': 1"))


def test_preset_parameter_counts_are_pinned():
    """Every preset builds; counts at the embedded default (dct: 32 channels, all-MiniLM-L6-v2: D = 384),
    as the DIT_PRESETS comments quote them. Built on the meta device: no memory, so dit-b is cheap too."""
    with torch.device("meta"):
        counts = {name: tuple(sum(p.numel() for p in build_dit(name, 32, 384, frames).parameters())
                              for frames in (1, 8)) for name in DIT_PRESETS}
    assert counts == {"dit-xs": (286_464, 344_704), "dit-s": (2_672_640, 3_366_144),
                      "dit-s1": (2_647_968, 3_341_472),
                      "dit-m": (13_711_872, 17_396_224), "dit-m1": (13_662_624, 17_346_976),
                      "dit-b": (180_793_856, 230_403_584)}


def test_real_codec_settings_survive_the_json_round_trip(tmp_path):
    import lrm.codecs

    model = build_dit("dit-xs", 32, 384)
    model.codec_settings = lrm.codecs.load("dct").settings()  # holds a list (its channel split)
    save_denoiser(model, tmp_path / "m")
    load_denoiser(tmp_path / "m", codec_settings=lrm.codecs.load("dct").settings())
    with pytest.raises(DenoiserMismatchError, match="differs in: split"):
        load_denoiser(tmp_path / "m", codec_settings=lrm.codecs.load("dct", split=(16, 8, 8)).settings())


def test_inflate_starts_as_the_image_model_frame_by_frame():
    """The inflated video model equals its image model on every frame (temporal gates at zero) and, once its
    temporal gates open, mixes frames; errors for a video model or too few frames."""
    image = randomise(tiny(frames=1))
    image.codec_settings, image.text_encoder_id = dict(DCT), "minilm-l6-v2"
    video = inflate(image, 3)
    assert video.temporal and video.frames == 3
    assert (video.preset, video.codec_settings, video.text_encoder_id) == (image.preset, DCT, "minilm-l6-v2")
    x, t, text, mask = inputs(frames=3)
    assert torch.allclose(video(x, t, text, mask), image(x, t, text, mask), atol=1e-5)
    for block in video.blocks:  # open the temporal gates: the frames now inform each other
        nn.init.normal_(block.modulation[1].weight, std=0.05)
    mixed = video(x, t, text, mask)
    x_other = x.clone()
    x_other[:, 0] = torch.randn_like(x_other[:, 0])  # change frame 0 only
    assert not torch.allclose(video(x_other, t, text, mask)[:, 1:], mixed[:, 1:], atol=1e-4)
    with pytest.raises(ValueError, match="already a video model"):
        inflate(video, 3)
    with pytest.raises(ValueError, match="frames >= 2"):
        inflate(image, 1)
