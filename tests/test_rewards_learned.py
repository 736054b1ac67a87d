"""Learned-reward adapters on tiny random models of the published architectures.

Every reward is checked against an independent computation of its published formula (the
model's own forward pass, or a hand-written reference), for shape, determinism, gradients to the
pixels and frame averaging on videos; the factories are checked to fail offline with an error
that names the missing file.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from lrm import weights
from lrm.rewards import REWARDS, availability, load
from lrm.rewards import clip as clip_rewards
from lrm.rewards import imagereward as ir
from lrm.rewards import pickscore as ps
from lrm.rewards.preprocess import ImagePreprocess, center_crop, normalize, resize_longest_pad, resize_shortest

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")
pytest.importorskip("timm")

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
PROMPTS = ["a red circle on a blue background", "a cat"]


def pixels(b=2, t=1, h=40, w=48, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 3, h, w, generator=g)


# ---------------------------------------------------------------------------------------------
# preprocessing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(40, 56), (57, 33), (32, 32)])
def test_preprocess_matches_torchvision_tensor_path(shape):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    x = torch.rand(2, 3, *shape, generator=torch.Generator().manual_seed(1))
    ours = ImagePreprocess(32, MEAN, STD)(x)
    ref = TF.resize(x, 32, interpolation=InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
    ref = TF.normalize(TF.center_crop(ref, 32), MEAN, STD)
    assert ours.shape == (2, 3, 32, 32)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_preprocess_close_to_published_pil_transform():
    """open_clip's PIL transform (what the papers used) vs our torch path on a smooth image."""
    from PIL import Image

    yy, xx = torch.meshgrid(torch.linspace(0, 1, 72), torch.linspace(0, 1, 96), indexing="ij")
    img = torch.stack([xx, yy, (xx + yy) / 2])  # (3, 72, 96)
    uint8 = (img * 255).round().to(torch.uint8)
    ref = open_clip.image_transform(32, is_train=False, mean=MEAN, std=STD)(
        Image.fromarray(uint8.permute(1, 2, 0).numpy())
    )
    ours = ImagePreprocess(32, MEAN, STD)(uint8.float().unsqueeze(0) / 255)[0]
    assert (ours - ref).abs().max() < 0.05  # a few 8-bit levels / std: PIL's filter vs torch's antialias


def test_resize_longest_pads_centred_with_fill():
    x = torch.rand(1, 3, 20, 40)
    out = resize_longest_pad(x, 32, fill=0.0)  # content 16 x 32, 8 rows of padding above and below
    assert out.shape == (1, 3, 32, 32)
    assert out[..., :8, :].abs().max() == 0 and out[..., 24:, :].abs().max() == 0
    content = F.interpolate(x, (16, 32), mode="bicubic", antialias=True).clamp(0, 1)
    torch.testing.assert_close(out[..., 8:24, :], content)


def test_preprocess_helpers_and_errors():
    x = torch.rand(1, 3, 30, 60)
    assert resize_shortest(x, 10).shape[-2:] == (10, 20)
    assert center_crop(torch.arange(25.0).view(1, 1, 5, 5), 3)[0, 0, 0].tolist() == [6.0, 7.0, 8.0]
    half = torch.full((1, 3, 1, 1), 0.5)
    torch.testing.assert_close(normalize(half, (0.5, 0.5, 0.5), (2, 2, 2)), torch.zeros(1, 3, 1, 1))
    with pytest.raises(ValueError, match="resize_mode"):
        ImagePreprocess(32, MEAN, STD, resize_mode="stretch")


# ---------------------------------------------------------------------------------------------
# shared checks
# ---------------------------------------------------------------------------------------------


def check_reward_basics(reward, prompts, reference):
    """(B,) float32, deterministic, equal to `reference(frames)`, gradients reach the pixels, videos averaged."""
    x = pixels()
    scores = reward(x, prompts)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    torch.testing.assert_close(reward(x, prompts), scores)  # deterministic (eval mode, no dropout)
    torch.testing.assert_close(scores, reference(x[:, 0]), atol=1e-4, rtol=1e-4)
    assert reward.spec.differentiable

    leaf = x.clone().requires_grad_(True)
    reward(leaf, prompts).sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0

    video = pixels(t=3, seed=3)
    per_frame = torch.stack([reward(video[:, i : i + 1], prompts) for i in range(3)], 1)  # (B, 3)
    torch.testing.assert_close(reward(video, prompts), per_frame.mean(1), atol=1e-5, rtol=1e-5)
    return scores


# ---------------------------------------------------------------------------------------------
# open_clip family: clip-score, hpsv2, laion-aesthetic
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=dict(layers=2, width=32, head_width=16, patch_size=8, image_size=32),
        text_cfg=dict(context_length=77, vocab_size=clip_rewards.CLIP_VOCAB_SIZE, width=32, heads=2, layers=2),
    )
    open_clip.model.set_model_preprocess_cfg(model, asdict(open_clip.transform.PreprocessCfg(size=32)))
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def clip_tokenizer():
    return clip_rewards.load_clip_tokenizer("ViT-H-14")  # the real BPE vocabulary, shipped inside open_clip


def clip_reference(model, tokenizer, preprocess, frames, prompts):
    """open_clip's own forward: normalised image and text features."""
    image, text, _ = model(preprocess(frames), tokenizer(prompts))
    return (image * text).sum(-1)


def test_clip_tokenizer_has_full_vocabulary(clip_tokenizer):
    assert len(clip_tokenizer.encoder) == 49408
    assert clip_tokenizer(["a cat"])[0, :4].tolist() == [49406, 320, 2368, 49407]


def test_clip_score(tiny_clip, clip_tokenizer):
    preprocess = clip_rewards.open_clip_preprocess(tiny_clip)
    assert (preprocess.size, preprocess.mean, preprocess.resize_mode) == (32, MEAN, "shortest")
    reward = clip_rewards.ClipScoreReward(tiny_clip, clip_tokenizer, preprocess)
    ref = lambda f: (100 * clip_reference(tiny_clip, clip_tokenizer, preprocess, f, PROMPTS)).clamp(min=0)
    scores = check_reward_basics(reward, PROMPTS, ref)
    assert (scores >= 0).all() and (scores <= 100).all()
    assert reward.spec.name == "clip-score" and reward.spec.size == 32


def test_hps_scores_cosine_with_padded_preprocessing(tiny_clip, clip_tokenizer):
    preprocess = clip_rewards.open_clip_preprocess(tiny_clip, resize_mode="longest")
    reward = clip_rewards.HPSReward(tiny_clip, clip_tokenizer, preprocess, name="hpsv2.1")
    ref = lambda f: clip_reference(tiny_clip, clip_tokenizer, preprocess, f, PROMPTS)
    scores = check_reward_basics(reward, PROMPTS, ref)
    assert (scores.abs() <= 1).all()  # published HPS units: a cosine, not x100
    assert reward.spec.name == "hpsv2.1"


def test_hps_checkpoint_layout_loads_strictly(tiny_clip, tmp_path):
    """HPS_v2*_compressed.pt hold {'state_dict': open_clip keys}, possibly DDP-prefixed with 'module.'."""
    torch.save({"state_dict": {"module." + k: v for k, v in tiny_clip.state_dict().items()}}, tmp_path / "hps.pt")
    torch.manual_seed(5)
    fresh = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=dict(layers=2, width=32, head_width=16, patch_size=8, image_size=32),
        text_cfg=dict(context_length=77, vocab_size=clip_rewards.CLIP_VOCAB_SIZE, width=32, heads=2, layers=2),
    )
    clip_rewards.load_checkpoint_into(fresh, tmp_path / "hps.pt")
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(fresh.eval().encode_image(x), tiny_clip.encode_image(x))


def test_load_open_clip_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown open_clip model"):
        clip_rewards.load_open_clip("ViT-Q-99", "openai")
    with pytest.raises(ValueError, match="neither an open_clip tag"):
        clip_rewards.load_open_clip("ViT-L-14", "no-such-tag")


TINY_OPEN_CLIP = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                                  "patch_size": 16},
                  "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}


@pytest.fixture()
def tiny_open_clip_files(tmp_path, monkeypatch):
    """A tiny open_clip architecture "lrm-tiny" (plain GELU config, as ViT-L-14) and its random weights saved as a
    state dict and as a TorchScript archive (the format of OpenAI's ViT-L-14.pt, which VBench loads)."""
    from open_clip import factory

    monkeypatch.setitem(factory._MODEL_CONFIGS, "lrm-tiny", TINY_OPEN_CLIP)
    torch.manual_seed(0)
    model = open_clip.create_model("lrm-tiny", pretrained=None).eval()
    state_path, archive_path = tmp_path / "tiny_state.pt", tmp_path / "tiny_openai.pt"
    torch.save(model.state_dict(), state_path)
    inputs = (torch.rand(1, 3, 32, 32), torch.zeros(1, 8, dtype=torch.long))
    torch.jit.trace(model, inputs, check_trace=False).save(str(archive_path))
    return model, state_path, archive_path


def activation(model) -> str:
    return type(model.visual.transformer.resblocks[0].mlp.gelu).__name__


def test_clip_checkpoint_path_gets_quick_gelu_when_asked_or_an_openai_archive(tiny_open_clip_files):
    # a path was built with the config's plain GELU: OpenAI's weights (QuickGELU-trained) silently gave other
    # embeddings, and OpenAI's own TorchScript .pt (VBench's file) did not load at all (torch.load weights_only)
    model, state_path, archive_path = tiny_open_clip_files
    x = torch.rand(2, 3, 32, 32)
    plain = clip_rewards.load_open_clip("lrm-tiny", str(state_path))
    assert activation(plain) == "GELU"  # what the model name implies
    forced = clip_rewards.load_open_clip("lrm-tiny", str(state_path), quick_gelu=True)
    assert activation(forced) == "QuickGELU"
    torch.testing.assert_close(forced.visual.conv1.weight, model.visual.conv1.weight)
    assert not torch.allclose(forced.encode_image(x), plain.encode_image(x))
    archive = clip_rewards.load_open_clip("lrm-tiny", str(archive_path))
    assert clip_rewards.is_torchscript_archive(archive_path) and not clip_rewards.is_torchscript_archive(state_path)
    assert activation(archive) == "QuickGELU"  # OpenAI released every CLIP as TorchScript, all QuickGELU-trained
    torch.testing.assert_close(archive.encode_image(x), forced.encode_image(x))
    assert activation(clip_rewards.load_open_clip("lrm-tiny", str(archive_path), quick_gelu=False)) == "GELU"
    with pytest.raises(ValueError, match="QuickGELU configuration"):
        clip_rewards.load_open_clip("ViT-B-32-quickgelu", None, quick_gelu=False)


def test_clip_rewards_take_a_quick_gelu_option(tiny_open_clip_files, monkeypatch):
    from lrm.rewards import vbench_dims

    _, state_path, _ = tiny_open_clip_files
    built = []
    monkeypatch.setattr(clip_rewards, "load_clip_tokenizer", lambda name: None)
    monkeypatch.setattr(clip_rewards, "load_open_clip", lambda *args: built.append(args) or torch.nn.Linear(1, 1))
    monkeypatch.setattr(clip_rewards, "open_clip_preprocess", lambda model: ImagePreprocess(32, MEAN, STD))
    load("clip-score", model="lrm-tiny", pretrained=str(state_path), quick_gelu=True)
    assert built[-1] == ("lrm-tiny", str(state_path), True)
    # vbench-aesthetic-quality: VBench's backbone is OpenAI's ViT-L/14, so a checkpoint file defaults to QuickGELU
    monkeypatch.setattr(vbench_dims, "load_open_clip", lambda *args: built.append(args) or torch.nn.Linear(1, 1))
    monkeypatch.setattr(vbench_dims.weights, "require", lambda *names: None)
    monkeypatch.setattr(vbench_dims.weights, "load_registered",
                        lambda name: {"weight": torch.zeros(1, 768), "bias": torch.zeros(1)})
    vbench_dims.vbench_aesthetic_quality(pretrained=str(state_path))
    assert built[-1] == ("ViT-L-14", str(state_path), True)
    vbench_dims.vbench_aesthetic_quality(pretrained=str(state_path), quick_gelu=False)
    assert built[-1] == ("ViT-L-14", str(state_path), False)


def test_quick_gelu_option_values_are_flags_or_refused_by_name(tmp_path):
    # `-o quick_gelu=False` gives the string "False", which bool() would read as True: the option check refuses it
    from lrm.cli.options import parse_options

    assert parse_options(["a=true", "b=false"]) == {"a": True, "b": False}
    for value in parse_options(["a=False", "b=0", "c=yes"]).values():
        with pytest.raises(ValueError, match=f"clip-score option 'quick_gelu' takes bool, got {value!r}"):
            load("clip-score", pretrained=str(tmp_path / "none.pt"), quick_gelu=value)
    import zipfile

    damaged = tmp_path / "damaged.pt"
    with zipfile.ZipFile(damaged, "w") as archive:
        archive.writestr("archive/constants.pkl", b"x")
    damaged.write_bytes(damaged.read_bytes().replace(b"PK\x01\x02", b"XX\x01\x02"))  # its central directory
    assert zipfile.is_zipfile(damaged)
    assert not clip_rewards.is_torchscript_archive(damaged)  # it raised BadZipFile


@pytest.mark.parametrize("content", ["damaged", "another model"])
def test_registered_clip_file_that_is_damaged_or_another_model_names_the_file_and_fix(content, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    path = tmp_path / weights.WEIGHTS["clip_vit_b32_openai"].local_name
    if content == "damaged":
        path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{trunc")
    else:
        save_file({"visual.conv1.weight": torch.zeros(1024, 3, 14, 14)}, path)  # a ViT-L/14 stem
    monkeypatch.setenv("LRM_WEIGHTS", str(tmp_path))
    with pytest.raises(ValueError, match=r"(?s)clip_vit_b32_openai\.safetensors does not hold open_clip ViT-B-32.*"
                                         r"Fix: re-download it from https://huggingface\.co/timm/vit_base_patch32"):
        clip_rewards.load_open_clip("ViT-B-32-quickgelu", "openai")


def test_laion_aesthetic_head_loads_published_keys(tiny_clip, tmp_path):
    torch.manual_seed(1)
    sizes = [(16, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]  # (in, out) of Linear layers 0, 2, 4, 6, 7
    published = {}
    for i, (inp, out) in zip((0, 2, 4, 6, 7), sizes):
        published[f"layers.{i}.weight"] = torch.randn(out, inp) / inp**0.5
        published[f"layers.{i}.bias"] = torch.randn(out)
    torch.save(published, tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    head = clip_rewards.load_checkpoint_into(clip_rewards.ScoreMLP(16), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    head.eval()
    preprocess = clip_rewards.open_clip_preprocess(tiny_clip)
    reward = clip_rewards.LaionAestheticReward(tiny_clip, head, preprocess)

    def ref(frames):  # published: normalised embedding through five affine layers (no activations)
        z = F.normalize(tiny_clip.encode_image(preprocess(frames)), dim=-1)
        for i in (0, 2, 4, 6, 7):
            z = z @ published[f"layers.{i}.weight"].T + published[f"layers.{i}.bias"]
        return z[:, 0]

    check_reward_basics(reward, None, ref)
    assert reward.spec.kind == "image"


# ---------------------------------------------------------------------------------------------
# pickscore (transformers CLIPModel)
# ---------------------------------------------------------------------------------------------


def tiny_clip_tokenizer():
    """A transformers CLIPTokenizer on open_clip's BPE files (same vocabulary as the laion repo's)."""
    st = clip_rewards.load_clip_tokenizer("ViT-H-14")
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(k, k): v for k, v in st.encoder.items()}
    merges = [pair for pair, _ in sorted(st.bpe_ranks.items(), key=lambda kv: kv[1])]
    return transformers.CLIPTokenizer(vocab=vocab, merges=merges), st


def test_pickscore(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    hf_tok, st = tiny_clip_tokenizer()
    tokenize = ps.hf_tokenize(hf_tok)
    ids, mask = tokenize(PROMPTS)
    n = int(mask[0].sum())
    assert ids.shape == (2, 77) and ids[0, :n].tolist() == st(PROMPTS[:1])[0, :n].tolist()  # agrees with open_clip

    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    preprocess = ps.load_preprocess(str(tmp_path))
    assert (preprocess.size, preprocess.mean, preprocess.interpolation) == (32, MEAN, "bicubic")

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, eos_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    model = CLIPModel(config).eval().requires_grad_(False)
    reward = ps.PickScoreReward(model, tokenize, preprocess)

    def ref(frames):  # CLIPModel's own logits: logit_scale.exp() * cos
        out = model(input_ids=ids, attention_mask=mask, pixel_values=preprocess(frames))
        return out.logits_per_image.diagonal()

    check_reward_basics(reward, PROMPTS, ref)


# ---------------------------------------------------------------------------------------------
# imagereward (BLIP ViT + med BERT port)
# ---------------------------------------------------------------------------------------------

ARCH = ir.BlipArch(image_size=32, patch_size=16, vision_width=24, vision_depth=2, vision_heads=2, text_width=32,
                   text_depth=2, text_heads=2, text_intermediate=64, vocab_size=13, max_positions=40)
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "on", "blue", "background"]


def blip_layout_state_dict(arch: ir.BlipArch, seed=0) -> dict[str, torch.Tensor]:
    """Random tensors under ImageReward.pt's key names and shapes (BLIP vit.py / med.py / ImageReward MLP)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g) * 0.2
    dv, dt, di = arch.vision_width, arch.text_width, arch.text_intermediate
    sd = {"blip.visual_encoder.cls_token": rnd(1, 1, dv),
          "blip.visual_encoder.pos_embed": rnd(1, 1 + (arch.image_size // arch.patch_size) ** 2, dv),
          "blip.visual_encoder.patch_embed.proj.weight": rnd(dv, 3, arch.patch_size, arch.patch_size),
          "blip.visual_encoder.patch_embed.proj.bias": rnd(dv),
          "blip.visual_encoder.norm.weight": 1 + rnd(dv), "blip.visual_encoder.norm.bias": rnd(dv)}
    for i in range(arch.vision_depth):
        p = f"blip.visual_encoder.blocks.{i}."
        for name, shape in [("norm1", (dv,)), ("norm2", (dv,))]:
            sd[p + name + ".weight"], sd[p + name + ".bias"] = 1 + rnd(*shape), rnd(*shape)
        linears = [("attn.qkv", 3 * dv, dv), ("attn.proj", dv, dv), ("mlp.fc1", 4 * dv, dv), ("mlp.fc2", dv, 4 * dv)]
        for name, out, inp in linears:
            sd[p + name + ".weight"], sd[p + name + ".bias"] = rnd(out, inp), rnd(out)
    t = "blip.text_encoder."
    sd[t + "embeddings.word_embeddings.weight"] = rnd(arch.vocab_size, dt)
    sd[t + "embeddings.position_embeddings.weight"] = rnd(arch.max_positions, dt)
    sd[t + "embeddings.position_ids"] = torch.arange(arch.max_positions).unsqueeze(0)
    sd[t + "embeddings.LayerNorm.weight"], sd[t + "embeddings.LayerNorm.bias"] = 1 + rnd(dt), rnd(dt)
    for i in range(arch.text_depth):
        p = f"{t}encoder.layer.{i}."
        linears = [("attention.self.query", dt, dt), ("attention.self.key", dt, dt), ("attention.self.value", dt, dt),
                   ("attention.output.dense", dt, dt), ("crossattention.self.query", dt, dt),
                   ("crossattention.self.key", dt, dv), ("crossattention.self.value", dt, dv),
                   ("crossattention.output.dense", dt, dt), ("intermediate.dense", di, dt), ("output.dense", dt, di)]
        for name, out, inp in linears:
            sd[p + name + ".weight"], sd[p + name + ".bias"] = rnd(out, inp), rnd(out)
        for name in ("attention.output.LayerNorm", "crossattention.output.LayerNorm", "output.LayerNorm"):
            sd[p + name + ".weight"], sd[p + name + ".bias"] = 1 + rnd(dt), rnd(dt)
    sd["blip.vision_proj.weight"], sd["blip.text_proj.weight"] = rnd(256, dv), rnd(256, dt)  # unused ITC heads
    for i, (out, inp) in zip((0, 2, 4, 6, 7), [(1024, dt), (128, 1024), (64, 128), (16, 64), (1, 16)]):
        sd[f"mlp.layers.{i}.weight"], sd[f"mlp.layers.{i}.bias"] = rnd(out, inp) / math.sqrt(inp), rnd(out)
    return sd


def med_reference(sd, ids, mask, image_embeds, heads, eps):
    """BLIP med.py BertModel (mode='multimodal') written out from the published state dict."""
    t = "blip.text_encoder."
    lin = lambda x, name: x @ sd[name + ".weight"].T + sd[name + ".bias"]
    ln = lambda x, name: F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)

    def attention(prefix, h, kv, additive_mask):
        split = lambda z: z.view(z.shape[0], z.shape[1], heads, -1).transpose(1, 2)  # (N, heads, L, d)
        q = split(lin(h, prefix + "self.query"))
        k, v = split(lin(kv, prefix + "self.key")), split(lin(kv, prefix + "self.value"))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + additive_mask, dim=-1)
        ctx = (probs @ v).transpose(1, 2).reshape(h.shape)
        return ln(lin(ctx, prefix + "output.dense") + h, prefix + "output.LayerNorm")

    positions = sd[t + "embeddings.position_embeddings.weight"][: ids.shape[1]]
    x = sd[t + "embeddings.word_embeddings.weight"][ids] + positions
    x = ln(x, t + "embeddings.LayerNorm")
    pad = (1.0 - mask[:, None, None, :].float()) * -10000.0  # bidirectional, padding masked
    for i in range(sum(k.endswith("intermediate.dense.weight") for k in sd)):
        p = f"{t}encoder.layer.{i}."
        h = attention(p + "attention.", x, x, pad)
        h = attention(p + "crossattention.", h, image_embeds, 0.0)
        x = ln(lin(F.gelu(lin(h, p + "intermediate.dense")), p + "output.dense") + h, p + "output.LayerNorm")
    return x  # (N, L, D)


@pytest.fixture(scope="module")
def imagereward_model():
    published = blip_layout_state_dict(ARCH)
    model = ir.build_model(ARCH)
    model.load_state_dict(ir.convert_state_dict(published), strict=True)  # every BLIP key lands somewhere
    return model.eval().requires_grad_(False), published


@pytest.fixture(scope="module")
def bert_tokenize():
    tok = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    assert len(tok) == ARCH.vocab_size  # words + [DEC] + [ENC], like 30522 + 2
    return ps.hf_tokenize(tok, ir.MAX_TOKENS)


def test_imagereward_text_encoder_matches_blip_reference(imagereward_model, bert_tokenize):
    model, published = imagereward_model
    ids, mask = bert_tokenize(["a red circle on a blue background", "a circle"])  # second is padded
    assert ids.shape == (2, 35) and mask[1].sum() < mask[0].sum()
    image_embeds = torch.randn(2, 5, ARCH.vision_width, generator=torch.Generator().manual_seed(2))
    ours = model.text(input_ids=ids, attention_mask=mask, encoder_hidden_states=image_embeds,
                      encoder_attention_mask=torch.ones(2, 5, dtype=torch.long)).last_hidden_state
    ref = med_reference(published, ids, mask, image_embeds, ARCH.text_heads, ARCH.layer_norm_eps)
    valid = mask.bool()
    torch.testing.assert_close(ours[valid], ref[valid], atol=1e-4, rtol=1e-4)

    full = int(mask[0].sum())  # no padding at all: attention must still look both ways
    ids, mask = ids[:1, :full], mask[:1, :full]
    ours = model.text(input_ids=ids, attention_mask=mask, encoder_hidden_states=image_embeds[:1],
                      encoder_attention_mask=torch.ones(1, 5, dtype=torch.long)).last_hidden_state
    ref = med_reference(published, ids, mask, image_embeds[:1], ARCH.text_heads, ARCH.layer_norm_eps)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_imagereward_reward(imagereward_model, bert_tokenize):
    model, published = imagereward_model
    preprocess = ImagePreprocess(32, MEAN, STD)
    reward = ir.ImageRewardReward(model, bert_tokenize, preprocess)

    def ref(frames):  # published ImageReward.score with the reference text encoder
        images = preprocess(frames)
        embeds = model.visual.forward_features(images)
        ids, mask = bert_tokenize(PROMPTS)
        cls = med_reference(published, ids, mask, embeds, ARCH.text_heads, ARCH.layer_norm_eps)[:, 0]
        raw = model.head(cls)
        return (raw - ir.REWARD_MEAN) / ir.REWARD_STD

    check_reward_basics(reward, PROMPTS, ref)


def test_imagereward_convert_rejects_foreign_checkpoint():
    with pytest.raises(KeyError, match="not an ImageReward checkpoint"):
        ir.convert_state_dict({"model.weight": torch.zeros(1)})


def test_imagereward_arch_from_med_config():
    med = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
           "vocab_size": 30524, "max_position_embeddings": 512, "layer_norm_eps": 1e-12, "encoder_width": 768}
    assert ir.BlipArch.from_med_config(med) == ir.BlipArch()  # vision stays ViT-L (BLIP overrides encoder_width)


# ---------------------------------------------------------------------------------------------
# registry and offline factories
# ---------------------------------------------------------------------------------------------

MINE = {"clip-score": "clip_vit_l14_openai.safetensors", "laion-aesthetic": "sac+logos+ava1-l14-linearMSE.pth",
        "hpsv2": "HPS_v2_compressed.pt", "hpsv2.1": "HPS_v2.1_compressed.pt", "imagereward": "ImageReward.pt",
        "pickscore": "yuvalkirstain/PickScore_v1|laion/CLIP-ViT-H-14-laion2B-s32B-b79K"}


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No weights anywhere, no network: every search place is an empty temp folder."""
    import huggingface_hub.constants

    for var, sub in [("LRM_WEIGHTS", "w"), ("LRM_CACHE", "c"), ("HF_HOME", "hf")]:
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("LRM_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


@pytest.mark.parametrize("name", sorted(MINE))
def test_factory_without_weights_names_the_file(offline, name):
    assert REWARDS[name].spec.needs_text == (name != "laion-aesthetic")
    with pytest.raises(weights.MissingWeightsError, match=MINE[name].replace("+", r"\+").replace(".", r"\.")):
        load(name)


@pytest.mark.parametrize("name", sorted(MINE))
def test_availability_reports_missing_weights(offline, name):
    entry = REWARDS[name]
    assert set(entry.weights) <= set(weights.WEIGHTS)
    assert set(availability(name).missing_weights) == set(entry.weights)
    assert entry.spec.differentiable


def test_tokenizer_loaders_fail_clearly_offline(offline):
    with pytest.raises(weights.MissingWeightsError, match="bert-base-uncased"):
        ir.load_tokenizer()
    with pytest.raises(weights.MissingWeightsError, match="laion/CLIP-ViT-H-14"):
        ps.load_tokenizer()
