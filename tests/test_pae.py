"""lrm's own autoencoder (lrm.codecs.pae) and the HOG descriptors its tokens are aligned to (lrm.codecs.hog):
descriptors on images whose gradients are known by hand, training, resume, loading, settings and refusals."""

import json
import math
import shutil
from dataclasses import replace

import pytest
import torch

from lrm import codecs
from lrm.codecs import hog, pae
from lrm.codecs import pae_training

TINY = pae.PAEConfig(widths=(4, 4, 8), size=32, images=16, steps=6, batch_size=4, warmup_steps=2,
                     checkpoint_every=3, min_psnr=0.0)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return pae_training.train_pae(TINY, tmp_path_factory.mktemp("codecs") / TINY.folder_name())


# ---- HOG descriptors -------------------------------------------------------------------------------

def gray(luma: torch.Tensor) -> torch.Tensor:
    """(H, W) luminance -> (1, 3, H, W) grey pixels of that luminance."""
    return luma.expand(1, 3, *luma.shape).clone()


def test_hog_of_ramps_splits_each_gradient_between_its_two_nearest_orientation_bins():
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    a = 0.01
    horizontal = hog.token_hog(gray(a * x))[0, :, 3, 3].view(4, 9)  # window 16..40: no padding reached
    # gradient (a, 0): 0 degrees, halfway between the centres of bin 8 (170 deg) and bin 0 (10 deg)
    expected = torch.zeros(9)
    expected[0] = expected[8] = math.sqrt(a / 2)
    torch.testing.assert_close(horizontal, expected.expand(4, 9))
    diagonal = hog.token_hog(gray(a * (x + y)))[0, :, 3, 3].view(4, 9)
    # gradient (a, a): 45 degrees = bin position 2.25, so bin 1 (centre 1.5) takes 1/4 and bin 2 (2.5) 3/4
    expected = torch.zeros(9)
    expected[1], expected[2] = math.sqrt(0.25 * a * math.sqrt(2)), math.sqrt(0.75 * a * math.sqrt(2))
    torch.testing.assert_close(diagonal, expected.expand(4, 9))


def test_hog_cells_are_the_quadrants_of_a_tokens_24_pixel_window():
    luma = torch.zeros(64, 64)
    luma[:, 16:] = 1.0  # a vertical edge at x = 15.5 (gradients at x = 15, 16)
    descriptors = hog.token_hog(gray(luma))  # (1, 36, 8, 8)
    assert descriptors.shape == (1, hog.CHANNELS, 8, 8)
    cells = descriptors[0, :, 3, 2].view(4, 9).sum(1)  # token column 2: window x = 8..31, cells 8..19 | 20..31
    assert cells[0] > 0 and cells[2] > 0 and cells[1] == 0 and cells[3] == 0  # top-left, top-right, bottom-left, ...
    assert not descriptors[0, :, :, 4:].any()  # windows from x = 24 on see no edge (and the padding is flat)
    assert not hog.token_hog(torch.full((2, 3, 16, 16), 0.3)).any()
    with pytest.raises(ValueError, match="multiples of 8"):
        hog.token_hog(torch.zeros(1, 3, 20, 16))


# ---- training ------------------------------------------------------------------------------------

def test_a_collapsed_training_is_refused_and_not_marked_finished(tmp_path):
    with pytest.raises(ValueError, match=r"collapsed \(reconstruction .* dB on its own images, under 60.0 dB\)"):
        pae_training.train_pae(replace(TINY, min_psnr=60.0), tmp_path / "run")
    assert not pae.is_trained(tmp_path / "run")


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    config = replace(TINY, steps=100, warmup_steps=10, lr=1e-3)
    assert pae_training.learning_rate(0, config) == pytest.approx(1e-4)
    assert pae_training.learning_rate(9, config) == pytest.approx(1e-3)
    assert pae_training.learning_rate(10, config) == pytest.approx(1e-3)
    assert pae_training.learning_rate(100, config) == pytest.approx(1e-4)


def test_training_writes_a_finished_folder_and_removes_its_checkpoints(tiny_folder):
    assert pae.is_trained(tiny_folder) and not (tiny_folder / "checkpoints").exists()
    metrics = json.loads((tiny_folder / "metrics.json").read_text())
    assert metrics["psnr_db"] > 0 and metrics["train_s"] > 0 and set(metrics["final"]) == {"mse", "l1", "latent", "align", "loss"}
    assert pae.config_from_json(json.loads((tiny_folder / "config.json").read_text()),
                                tiny_folder) == TINY


def test_a_resumed_training_equals_an_uninterrupted_one(tiny_folder, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = pae_training.step_losses

    def dies_at_step_5(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(pae_training, "step_losses", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        pae_training.train_pae(TINY, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-00000003"
    assert not pae.is_trained(tmp_path / "run")
    resumed = {"n": 0}

    def counted(*args):
        resumed["n"] += 1
        return real(*args)

    monkeypatch.setattr(pae_training, "step_losses", counted)
    pae_training.train_pae(TINY, tmp_path / "run")
    assert resumed["n"] == 3  # steps 3, 4, 5: from the checkpoint, not from the start
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == (tiny_folder / "model.safetensors").read_bytes()


def test_one_step_lowers_the_loss_terms_it_trains():
    config = replace(TINY, lr=3e-3)
    images = pae_training.training_images(config)  # (16, 3, 32, 32) uint8
    targets = pae_training.alignment_targets(images, align_colour=True)
    assert targets.shape == (16, 36 + 3, 4, 4)
    torch.testing.assert_close(targets.mean((0, 2, 3)), torch.zeros(39), atol=1e-5, rtol=0)
    torch.testing.assert_close(targets.std((0, 2, 3)), torch.ones(39), atol=1e-5, rtol=0)
    # the last three: each token's mean colour, standardised (an affine map of the raw mean)
    raw = torch.nn.functional.avg_pool2d(images.float() / 255, 8)[:, 0]  # red, (16, 4, 4)
    assert torch.corrcoef(torch.stack([targets[:, 36].flatten(), raw.flatten()]))[0, 1] > 0.9999
    assert pae_training.alignment_targets(images, align_colour=False).shape == (16, 36, 4, 4)
    torch.manual_seed(0)
    model = pae_training.TrainingAutoencoder(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    pixels = images.float() / 255
    losses = []
    for _ in range(30):
        terms = pae_training.step_losses(model, pixels, targets, replace(config, latent_noise=0.0),
                                         torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append({k: v.item() for k, v in terms.items()})
    assert losses[-1]["mse"] < 0.5 * losses[0]["mse"] and losses[-1]["align"] < losses[0]["align"]


# ---- the codec -----------------------------------------------------------------------------------

def test_codec_encodes_standardised_latents_and_decodes_differentiably(tiny_folder):
    codec = codecs.load("pae", weights=str(tiny_folder), batch_size=3)
    images = pae_training.training_images(TINY).float()[:, None] / 255  # (16, 1, 3, 32, 32)
    latents = codec.encode(images)
    assert latents.shape == (16, 1, 16, 4, 4) == (16, *codec.latent_shape(1, 32, 32))
    # standardised on these very images (the first STATS_IMAGES of the training set)
    torch.testing.assert_close(latents.mean((0, 1, 3, 4)), torch.zeros(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(latents.std((0, 1, 3, 4)), torch.ones(16), atol=1e-3, rtol=0)
    video = torch.rand(2, 3, 3, 32, 40)  # per frame, any multiple of 8
    assert codec.encode(video).shape == (2, 3, 16, 4, 5)
    z = torch.randn(2, 3, 16, 4, 5, requires_grad=True)
    pixels = codec.decode(z)
    assert pixels.shape == (2, 3, 3, 32, 40) and 0 <= pixels.min() and pixels.max() <= 1
    pixels.mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in codec.parameters())  # frozen


def test_settings_name_the_weights_and_from_settings_refuses_other_bits(tiny_folder, tmp_path, monkeypatch):
    codec = codecs.load("pae", weights=str(tiny_folder))
    settings = codec.settings()
    assert settings["weights"] == TINY.folder_name() and len(settings["weights_sha256"]) == 16
    monkeypatch.setenv("LRM_CACHE", str(tiny_folder.parent.parent))  # the folder by name, under $LRM_CACHE/codecs
    (tiny_folder.parent.parent / "codecs").mkdir(exist_ok=True)
    link = tiny_folder.parent.parent / "codecs" / tiny_folder.name
    if not link.exists():
        link.symlink_to(tiny_folder)
    assert codecs.from_settings(settings).settings() == settings
    with pytest.raises(ValueError, match="differs in: weights_sha256"):
        codecs.from_settings({**settings, "weights_sha256": "0" * 16})


def test_missing_and_damaged_weights_are_one_line_errors(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("LRM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=r"no trained pae autoencoder in .*pae-deadbeef .*copy that folder"):
        codecs.load("pae", weights="pae-deadbeef")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text((tiny_folder / "config.json").read_text())
    (damaged / "model.safetensors").write_bytes((tiny_folder / "model.safetensors").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"model.safetensors is damaged .*delete .*damaged: lrm retrains"):
        codecs.load("pae", weights=str(damaged))
    (damaged / "config.json").write_text("{")
    with pytest.raises(ValueError, match=r"config.json is damaged"):
        codecs.load("pae", weights=str(damaged))
    with pytest.raises(ValueError, match=r"PAEConfig: invalid size"):
        pae.PAEConfig(size=30)


def test_under_torchrun_only_rank_0_trains_the_default_and_the_others_wait(tmp_path, monkeypatch):
    monkeypatch.setenv("LRM_CACHE", str(tmp_path))
    monkeypatch.setattr(pae, "PAE_DEFAULT", TINY)
    monkeypatch.setenv("RANK", "1")  # torchrun's rank 1, before any process group is open
    monkeypatch.setenv("WORLD_SIZE", "2")
    train = pae_training.train_pae

    def rank_0_trains_meanwhile(folder):  # what rank 0 does while rank 1 waits
        train(TINY, folder)

    def not_on_rank_1(*args, **kwargs):
        raise AssertionError("rank 1 trained the autoencoder")

    monkeypatch.setattr(pae, "wait_until_trained", rank_0_trains_meanwhile)
    monkeypatch.setattr(pae_training, "train_pae", not_on_rank_1)
    assert pae.resolve_folder(None, train_if_missing=True, progress=False) == tmp_path / "codecs" / TINY.folder_name()
    monkeypatch.undo()
    with pytest.raises(TimeoutError, match=r"waited 0 s for rank 0 to train the pae autoencoder into .*nowhere"):
        pae.wait_until_trained(tmp_path / "nowhere", timeout_s=0.0, poll_s=0.01)


def test_a_bad_source_is_refused_before_the_codec_trains(tmp_path, monkeypatch):
    from lrm.configs import EncodeConfig
    from lrm.datasets.encoding import encode

    monkeypatch.setenv("LRM_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError):
        encode(EncodeConfig(str(tmp_path / "no-such-folder"), codec="pae"), tmp_path / "store", progress=False)
    assert not (tmp_path / "codecs").exists()


def test_the_default_is_trained_on_first_use_and_its_geometry_known_without_training(tmp_path, monkeypatch):
    monkeypatch.setenv("LRM_CACHE", str(tmp_path))
    monkeypatch.setattr(pae, "PAE_DEFAULT", TINY)
    assert codecs.spatial_factor("pae") == 8 and not (tmp_path / "codecs").exists()  # nothing trained
    with pytest.raises(FileNotFoundError, match="no trained pae"):
        codecs.load("pae", train_if_missing=False)
    with pytest.raises(FileNotFoundError, match="no trained pae"):  # named (as a store or teacher names it): never
        codecs.load("pae", weights=TINY.folder_name())                # trained anew, its bits would differ
    codec = codecs.load("pae")
    assert codec.folder == tmp_path / "codecs" / TINY.folder_name() and pae.is_trained(codec.folder)
    assert codecs.from_settings(codec.settings()).folder == codec.folder


def test_a_finished_embedded_teacher_refuses_an_autoencoder_gone_or_retrained(tmp_path, monkeypatch):
    from lrm.configs import EncodeConfig, TeacherConfig
    from lrm.generators import embedded

    monkeypatch.setenv("LRM_CACHE", str(tmp_path))
    monkeypatch.setattr(pae, "PAE_DEFAULT", TINY)
    tiny = embedded.EmbeddedTeacher(EncodeConfig("procedural:8", codec="pae", frames=1, size=32, text="minilm-l6-v2",
                                                 text_length=32),
                                    TeacherConfig(preset="dit-xs", steps=2, batch_size=4, checkpoint_every=2,
                                                  snapshots=0, report_samples=1))
    monkeypatch.setitem(embedded.EMBEDDED, "image", tiny)
    run = embedded.embedded_teacher()  # trains the (tiny) autoencoder, encodes in it, trains the teacher
    assert embedded.embedded_teacher(train_if_missing=False) == run  # its autoencoder as it was: reused
    config = run / "model" / "config.json"
    settings = json.loads(config.read_text())
    config.write_text(json.dumps({**settings, "codec_settings": {**settings["codec_settings"],
                                                                 "weights_sha256": "0" * 16}}))
    with pytest.raises(ValueError, match=r"trained on other weights of pae-.* \(the autoencoder was retrained\); delete"):
        embedded.embedded_teacher()
    shutil.rmtree(tmp_path / "codecs")
    with pytest.raises(FileNotFoundError, match=r"works in the pae autoencoder .*, which is gone; delete"):
        embedded.embedded_teacher()
