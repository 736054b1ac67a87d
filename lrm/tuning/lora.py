"""LoRA adapters (peft) on a denoiser's attention projections: a student or fake score that trains only them.

    student = add_lora(copy.deepcopy(teacher), rank=16)   # base weights frozen, adapters trainable
    adapter_state(student)                                # what a checkpoint keeps: the adapter weights only
    plain = merged_copy(student)                          # W + (alpha / r) B A folded in, peft layers gone

The adapters go where diffusers' own LoRA training scripts put them, on the attention projections:
- diffusers denoisers (lrm.generators.diffusers_adapters: UNet2DConditionModel, SD3, FLUX and Wan
  transformers): to_q, to_k, to_v, to_out.0 of every attention block (self- and cross-attention), and in SD3's
  and FLUX's joint blocks the text stream's add_q_proj, add_k_proj, add_v_proj, to_add_out too (diffusers'
  SD3 / FLUX DreamBooth LoRA scripts adapt them; without them the text tokens' attention cannot be tuned); FLUX's
  single blocks: to_q, to_k, to_v only (their attention output is fused with the MLP in proj_out, which those
  scripts leave out too; a "proj_out" suffix would also catch the model's final output layer);
- lrm's LatentDiT: query, key_value and out of every Attention (spatial, temporal, cross).
peft's defaults: B = 0 at the start (the adapted model equals its base exactly), A Kaiming-uniform;
alpha = rank (scale 1, diffusers' scripts). peft wraps each target Linear in place (its weight becomes
"<name>.base_layer.weight"), so the module keeps its class, prediction type, schedule and features.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

DIFFUSERS_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
DIT_TARGETS = ("query", "key_value", "out")
ADAPTER_KEY = "lora_"  # in the state_dict names of peft's LoRA weights (lora_A, lora_B)


def require_peft():
    """The peft module, or a one-line ImportError saying how to install it."""
    try:
        import peft
    except ImportError as exc:
        raise ImportError("--lora-rank (LoRA adapters) needs the peft package: pip install peft "
                          "(or pip install 'lrm[diffusers]')") from exc
    return peft


def lora_targets(module: nn.Module) -> tuple[str, ...]:
    """The attention projections of a diffusers denoiser adapter or a LatentDiT (module names peft matches as
    suffixes); ValueError for any other module."""
    from lrm.generators.diffusers_adapters import DiffusersDenoiser
    from lrm.generators.dit import LatentDiT

    if isinstance(module, DiffusersDenoiser):
        return DIFFUSERS_TARGETS
    if isinstance(module, LatentDiT):
        return DIT_TARGETS
    raise ValueError(f"LoRA applies to diffusers denoisers and lrm's LatentDiT, not a {type(module).__name__}; "
                     "drop --lora-rank to fine-tune every weight")


def add_lora(module: nn.Module, rank: int, alpha: float | None = None, seed: int = 0) -> nn.Module:
    """Inject LoRA adapters of `rank` (alpha: default rank) into the module's attention projections, in place;
    every other weight is frozen. The random A matrices are drawn from torch's generator seeded with `seed`
    (the global RNG state is left as it was), so the same call gives the same adapters. Returns the module."""
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"--lora-rank must be a positive integer, got {rank!r}")
    targets = lora_targets(module)
    peft = require_peft()
    if has_lora(module):
        raise ValueError(f"this {type(module).__name__} already carries LoRA adapters")
    config = peft.LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, target_modules=list(targets))
    module.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft.inject_adapter_in_model(config, module)  # adapter weights are created trainable
    return module


def has_lora(module: nn.Module) -> bool:
    return any(ADAPTER_KEY in name for name, _ in module.named_parameters())


def adapter_state(module: nn.Module) -> dict:
    """The module's state_dict entries of its LoRA adapters (all of it when it has none)."""
    state = module.state_dict()
    if not has_lora(module):
        return state
    return {k: v for k, v in state.items() if ADAPTER_KEY in k}


def load_adapter_state(module: nn.Module, state: dict, where: str) -> None:
    """Load a state written by adapter_state: exactly the adapter entries into a module with adapters (its base
    weights untouched), a full state_dict (strict) into one without."""
    if not has_lora(module):
        module.load_state_dict(state, strict=True)
        return
    expected = set(adapter_state(module))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"{where} does not hold this run's LoRA adapters (missing {missing[:3]}, unexpected "
                         f"{extra[:3]}); was it written with another --lora-rank?")
    module.load_state_dict(state, strict=False)


def merged_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` with every LoRA adapter folded into its base Linear (W + scale B A) and the peft
    wrappers replaced by those Linears: the state_dict keys and class of the module before add_lora."""
    from peft.tuners.lora import LoraLayer

    plain = copy.deepcopy(module)
    wrapped = [(name, layer) for name, layer in plain.named_modules() if isinstance(layer, LoraLayer)]
    for name, layer in wrapped:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = plain.get_submodule(parent_name) if parent_name else plain
        setattr(parent, child, layer.get_base_layer())
    return plain
