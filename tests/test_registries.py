"""Every registry entry builds, or fails with an error that names what is missing."""

import pytest
import torch

import lrm
from lrm.codecs import CODECS
from lrm.models import PRESETS
from lrm.rewards import REWARDS, availability
from lrm.weights import WEIGHTS, MissingWeightsError


@pytest.fixture()
def no_weights(tmp_path, monkeypatch):
    for var in ("LRM_WEIGHTS", "LRM_CACHE", "HF_HOME", "HF_HUB_CACHE"):
        monkeypatch.setenv(var, str(tmp_path / var))
    monkeypatch.setenv("LRM_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_every_reward_builds_or_names_what_is_missing(name, no_weights):
    entry = REWARDS[name]
    avail = availability(name)
    if avail.missing_modules:
        pytest.skip(f"{name} needs {avail.missing_modules}")
    if not entry.weights:
        reward = lrm.load_reward(name)
        assert reward.spec == entry.spec, (reward.spec, entry.spec)
        return
    assert avail.missing_weights == entry.weights
    with pytest.raises(MissingWeightsError) as info:
        lrm.load_reward(name)
    message = str(info.value)
    named = [WEIGHTS[w].filename for w in entry.weights] + [WEIGHTS[w].hf_repo or "" for w in entry.weights]
    # The first missing piece is named (a weight file, or e.g. the tokenizer of the same model), with a fix.
    assert any(n and n in message for n in named), (named, message)
    assert "Fix" in message or "fix" in message, message


def lrm_managed(reward: str) -> list[str]:
    """The weight files of `reward` that lrm itself finds or downloads (not transformers' hub files)."""
    return [w for w in REWARDS[reward].weights if not WEIGHTS[w].hub_only]


@pytest.mark.parametrize("name", sorted(n for n in REWARDS if len(lrm_managed(n)) > 1))
def test_a_reward_missing_several_weight_files_names_them_all_at_once(name, no_weights):
    if availability(name).missing_modules:
        pytest.skip(f"{name} needs {availability(name).missing_modules}")
    with pytest.raises(MissingWeightsError, match=f"{len(lrm_managed(name))} weight files are missing") as info:
        lrm.load_reward(name)
    for weight in lrm_managed(name):
        assert WEIGHTS[weight].local_name in str(info.value)


def test_files_read_from_the_hugging_face_cache_are_looked_for_only_there(no_weights, tmp_path, monkeypatch):
    from lrm import weights

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "vocab.txt").write_text("[PAD]\n")  # a stray file of the same name is not bert's vocabulary
    monkeypatch.setenv("LRM_WEIGHTS", str(folder))
    assert WEIGHTS["bert_base_uncased_vocab"].hub_only and weights.find("bert_base_uncased_vocab") is None
    assert "bert_base_uncased_vocab" in availability("imagereward").missing_weights
    with pytest.raises(MissingWeightsError, match=r"'vocab\.txt' of bert-base-uncased .* not in the Hugging Face "
                                                  r"cache\. Fix: .*hf download bert-base-uncased"):
        weights.resolve("bert_base_uncased_vocab")


def test_weight_free_codecs_build_and_weighted_ones_name_their_file(no_weights):
    for name in CODECS:
        if name == "dct":
            assert lrm.load_codec(name).encode(torch.rand(1, 1, 3, 16, 16)).shape == (1, 1, 32, 2, 2)
        elif name == "pae":  # lrm trains it on first use; asked not to, an empty cache names what is missing
            with pytest.raises(FileNotFoundError, match="no trained pae autoencoder in .*codecs"):
                lrm.load_codec(name, train_if_missing=False)
        else:
            with pytest.raises(MissingWeightsError, match=r"\.pth"):
                lrm.load_codec(name)


def test_public_api_names():
    assert callable(lrm.load_reward) and callable(lrm.load_codec) and callable(lrm.fit_surrogate)
    assert issubclass(lrm.LatentRewardModel, torch.nn.Module)
    with pytest.raises(AttributeError):
        lrm.no_such_name


def test_damaged_weight_files_name_the_file_and_the_fix(no_weights, tmp_path, monkeypatch):
    folder = tmp_path / "damaged"
    folder.mkdir()
    for name in ("taef2_encoder", "taef2_decoder"):
        (folder / WEIGHTS[name].filename).write_bytes(b"not a checkpoint")
    monkeypatch.setenv("LRM_WEIGHTS", str(folder))
    with pytest.raises(ValueError, match=r"(?s)could not read .*taef2_encoder.* from .*taef2_encoder\.pth.*Fix: re-download"):
        lrm.load_codec("taef2")


def test_no_two_weight_files_share_a_name_on_disk():
    local = [wf.local_name for wf in WEIGHTS.values() if not wf.hub_only]
    assert len(local) == len(set(local)), sorted(n for n in local if local.count(n) > 1)


def test_clip_towers_published_under_one_name_are_found_and_downloaded_apart(no_weights, tmp_path, monkeypatch):
    import io
    import urllib.request

    from lrm import weights

    b32, l14 = WEIGHTS["clip_vit_b32_openai"], WEIGHTS["clip_vit_l14_openai"]
    assert b32.filename == l14.filename  # both repositories publish open_clip_model.safetensors
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / b32.filename).write_bytes(b"which tower?")  # the ambiguous published name is not taken
    (folder / b32.local_name).write_bytes(b"ViT-B/32")
    monkeypatch.setenv("LRM_WEIGHTS", str(folder))
    assert weights.find("clip_vit_b32_openai") == folder / "clip_vit_b32_openai.safetensors"
    assert weights.find("clip_vit_l14_openai") is None
    with pytest.raises(MissingWeightsError, match=r"(?s)clip_vit_l14_openai\.safetensors.*save it as 'clip_vit_l14_openai"):
        weights.resolve("clip_vit_l14_openai")

    monkeypatch.setenv("LRM_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    asked = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: asked.append(url) or io.BytesIO(b"ViT-L/14"))
    path = weights.resolve("clip_vit_l14_openai")
    assert asked == [l14.url] and path == weights.cache_dir() / "clip_vit_l14_openai.safetensors"
    assert path.read_bytes() == b"ViT-L/14" and weights.find("clip_vit_b32_openai").read_bytes() == b"ViT-B/32"


def test_hub_loaders_read_only_the_cache_when_the_hub_cannot_be_reached(monkeypatch):
    import socket

    from lrm import weights

    monkeypatch.delenv("LRM_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # a fresh endpoint: not in the per-process cache
    dialled = []

    def unreachable(address, timeout):
        dialled.append((address, timeout))
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    assert weights.hub_offline() and weights.hub_offline()
    assert dialled == [(("hub.invalid", 443), 3)]  # checked once per process and endpoint
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.invalid:8080")
    monkeypatch.setattr(socket, "create_connection", lambda address, timeout: socket.socket())
    assert not weights.hub_offline()
    monkeypatch.setenv("LRM_OFFLINE", "1")
    assert weights.hub_offline()


def test_a_file_in_the_hugging_face_cache_is_found_there(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from lrm import weights

    snapshot = tmp_path / "hub" / "models--bert-base-uncased" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "vocab.txt").write_text("[PAD]\n")
    (tmp_path / "hub" / "models--bert-base-uncased" / "refs").mkdir()
    (tmp_path / "hub" / "models--bert-base-uncased" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert weights.find("bert_base_uncased_vocab") == snapshot / "vocab.txt"


def test_the_readme_names_every_reward_and_every_surrogate_preset():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rewards = readme.split("## Rewards", 1)[1].split("\n## ", 1)[0]
    surrogates = readme.split("## Surrogates", 1)[1].split("\n## ", 1)[0]
    assert [r for r in REWARDS if f"| `{r}` |" not in rewards] == []
    # the table's kind, differentiable and better columns are the specs' (niqe read "no" after it became
    # differentiable)
    for name, factory in REWARDS.items():
        spec = factory.spec
        row = f"| `{name}` | {spec.kind} | {'yes' if spec.differentiable else 'no'} | " \
              f"{'higher' if spec.higher_is_better else 'lower'} |"
        assert row in rewards, row
    assert [p for p in PRESETS if f"`{p}`" not in surrogates] == []
