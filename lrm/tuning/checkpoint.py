"""Checkpoints of a distillation run: the weights of every role that training changes and their optimisers, the
RNG streams and the trainer's counters, as safetensors + JSON (never pickle, so loading runs no code). The
caller passes the modules to keep (the trainer: its trainable roles and the EMA; frozen teachers are rebuilt
from their runs). A module with LoRA adapters (lrm.tuning.lora) keeps only the adapter weights: its base is
the frozen teacher's.

Layout of one checkpoint, written into a temporary folder and renamed into place (atomic: a reader sees
a whole checkpoint or none), then `latest` (a text file naming it) is replaced atomically:

    <run>/checkpoints/step-00000100/
        <role>.safetensors            module state_dict (LoRA adapters only, for an adapted module)
        <role>.optimizer.safetensors  optimiser tensors, keyed "<param index>.<name>"
        rng.safetensors               the trainer's generator, torch's CPU (and CUDA) RNG states
        trainer.json                  step, counters, optimiser param_groups and scalar state
    <run>/checkpoints/latest          "step-00000100"
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from lrm.io import atomic_write_text, read_json, read_safetensors
from lrm.tuning.lora import adapter_state, load_adapter_state

LATEST = "latest"


def _tensors_and_scalars_of_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().contiguous().clone()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict, meta: dict) -> dict:
    state: dict[int, dict] = {}
    for flat, value in [*tensors.items(), *meta["scalars"].items()]:
        index, key = flat.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: str | Path, step: int, modules: dict, optimizers: dict, rng: dict[str, torch.Tensor],
                    trainer_state: dict, extra: Callable[[Path], None] | None = None) -> Path:
    """Write checkpoint `step` under run_dir/checkpoints and point `latest` at it; returns its folder.
    modules / optimizers: role name -> nn.Module / Optimizer; rng: name -> uint8 state tensor;
    extra(folder): writes the caller's own files into the checkpoint before it is renamed into place."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    name = f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    try:
        optim_meta = {}
        for role, module in modules.items():
            save_file({k: v.detach().contiguous().clone() for k, v in adapter_state(module).items()},
                      tmp / f"{role}.safetensors")
        for role, optimizer in optimizers.items():
            tensors, optim_meta[role] = _tensors_and_scalars_of_optimizer(optimizer)
            save_file(tensors, tmp / f"{role}.optimizer.safetensors")
        save_file({k: v.contiguous() for k, v in rng.items()}, tmp / "rng.safetensors")
        (tmp / "trainer.json").write_text(json.dumps({**trainer_state, "optimizers": optim_meta}, indent=2))
        if extra is not None:
            extra(tmp)
        final, replaced = root / name, None
        if final.exists():  # the same step again: set the old folder aside until `latest` is rewritten
            replaced = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.replaced."))
            os.replace(final, replaced)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    atomic_write_text(root / LATEST, name + "\n")
    if replaced is not None:
        shutil.rmtree(replaced)
    return final


def _remove_leftovers(root: Path) -> None:
    """Remove the temporary folders of saves that were killed (SIGKILL skips `finally`): `.step-N.<random>` (a
    half-written checkpoint) and `.step-N.replaced.<random>` (an older copy of step N set aside), each as large as
    a checkpoint. A set-aside copy is kept while step-N itself is missing (a kill between the two renames): it is
    then the only copy of the checkpoint `latest` names."""
    for folder in root.glob(".step-*"):
        name = folder.name[1:].split(".", 1)[0]  # "step-00000100"
        if folder.is_dir() and not (".replaced." in folder.name and not (root / name).is_dir()):
            shutil.rmtree(folder, ignore_errors=True)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The folder `latest` names, or None when the run has no checkpoint yet."""
    pointer = Path(run_dir) / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text().strip()
    if not folder.is_dir():
        raise FileNotFoundError(f"{pointer} names {folder.name}, which is missing; delete {pointer} to start over")
    return folder


def load_checkpoint(folder: str | Path, modules: dict, optimizers: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Load weights and optimiser states into the given modules / optimizers (in place, strict);
    returns (rng states, trainer state)."""
    folder = Path(folder)
    state = read_trainer_state(folder)
    for role, module in modules.items():
        path = folder / f"{role}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {folder} has no weights for role {role!r}; was it written by a "
                                    "run with other roles?")
        weights = read_safetensors(path, checkpoint_fix(folder))
        device = next(iter(module.state_dict().values())).device if module.state_dict() else "cpu"
        load_adapter_state(module, {k: v.to(device) for k, v in weights.items()}, str(path))
    for role, optimizer in optimizers.items():
        tensors = read_safetensors(folder / f"{role}.optimizer.safetensors", checkpoint_fix(folder))
        optimizer.load_state_dict(_optimizer_state(tensors, state["optimizers"][role]))
    return read_safetensors(folder / "rng.safetensors", checkpoint_fix(folder)), state


def read_trainer_state(folder: Path) -> dict:
    """trainer.json of checkpoint `folder`; a damaged one is one ValueError naming it and the fix."""
    return read_json(folder / "trainer.json", checkpoint_fix(folder))


def checkpoint_fix(folder: Path) -> str:
    """What to do about a damaged file of checkpoint `folder`."""
    return (f"the checkpoint was cut short (a full disk?); delete {folder.parent} to start the run over, or use "
            "another --out")
