"""Regenerate the MUSIQ fixtures from pyiqa's own MUSIQ class (the independent reference).

    pip download --no-deps pyiqa==0.1.16 -d /tmp/pyiqa
    python tests/data/make_musiq_fixtures.py /tmp/pyiqa/pyiqa-0.1.16-py3-none-any.whl

pyiqa is not installed: the four source files MUSIQ needs are read out of the wheel (a zip) and
imported under their own module names, with pyiqa's registry and downloader (which pull in the
package's heavy dependencies) replaced by stand-ins that MUSIQ(pretrained=False) never calls.
Needs torch, torchvision, huggingface_hub and safetensors (pyiqa's arch_util imports the middle two).

Writes, next to this script:
- musiq_keys.json: parameter name -> shape of pyiqa's default MUSIQ (the SPAQ architecture);
- musiq_tiny_reference.safetensors: a tiny MUSIQ's seeded random weights (float16, so the file stays
  small; the reference outputs are computed with exactly these rounded weights in float32), seeded
  inputs, and pyiqa's outputs for them; metadata "config" and "cases" say how each was made.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import types
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save

HERE = Path(__file__).resolve().parent
SOURCES = {  # module name -> file inside the wheel
    "pyiqa.archs.constants": "pyiqa/archs/constants.py",
    "pyiqa.archs.arch_util": "pyiqa/archs/arch_util.py",
    "pyiqa.matlab_utils": "pyiqa/matlab_utils/padding.py",  # the package's __init__ imports much more
    "pyiqa.data.multiscale_trans_util": "pyiqa/data/multiscale_trans_util.py",
    "pyiqa.archs.musiq_arch": "pyiqa/archs/musiq_arch.py",
}
TINY = dict(  # pyiqa MUSIQ keyword arguments; the ResNet root stays at pyiqa's fixed 64 channels
    patch_size=8, hidden_size=16, mlp_dim=32, num_heads=2, num_layers=2, num_scales=3,
    spatial_pos_grid_size=4, longer_side_lengths=[16, 24],
)
CASES = {  # name -> (input shape, max_seq_len_from_original_res)
    "wide": ((2, 3, 14, 32), -1),  # 14 * 24/32 = 10.5: Python's round-half-to-even decides the height
    "tall_cut": ((1, 3, 37, 23), 4),  # native resolution cut to 4 of its 15 patches
    "small_padded": ((1, 3, 9, 12), 6),  # upsampled scales; native 4 patches padded to 6
}


def import_musiq(wheel: Path, unpacked: Path) -> types.ModuleType:
    with zipfile.ZipFile(wheel) as zf:
        for member in SOURCES.values():
            zf.extract(member, unpacked)
    for package in ("pyiqa", "pyiqa.archs", "pyiqa.data", "pyiqa.utils"):
        module = types.ModuleType(package)
        module.__path__ = [str(unpacked / package.replace(".", "/"))]
        sys.modules[package] = module
    registry = types.SimpleNamespace(register=lambda: (lambda cls: cls))
    sys.modules["pyiqa.utils.registry"] = types.SimpleNamespace(ARCH_REGISTRY=registry)
    sys.modules["pyiqa.utils.download_util"] = types.SimpleNamespace(load_file_from_url=None)
    for name, member in SOURCES.items():
        spec = importlib.util.spec_from_file_location(name, unpacked / member)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules["pyiqa.archs.musiq_arch"]


def randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Every parameter random (norm scales around 1, embeddings large enough to matter), then float16-rounded."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if name.endswith("weight") and ("gn" in name or "norm" in name):
                p.copy_(1 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif name.endswith(("position_emb", "scale_emb", "cls")):
                p.copy_(0.5 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)
            p.copy_(p.half().float())


def main(wheel: Path) -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as unpacked:
        arch = import_musiq(wheel, Path(unpacked))
        full = arch.MUSIQ(pretrained=False)  # num_class=1, the published SPAQ architecture
        rows = [f"  {json.dumps(k)}: {list(v.shape)}" for k, v in full.state_dict().items()]
        (HERE / "musiq_keys.json").write_text("{\n" + ",\n".join(rows) + "\n}\n")

        generator = torch.Generator().manual_seed(0)
        tiny = arch.MUSIQ(pretrained=False, **TINY).eval()
        randomise(tiny, generator)
        tensors = {f"state.{k}": v.half() for k, v in tiny.state_dict().items()}
        for case, (shape, original) in CASES.items():
            tiny.data_preprocess_opts["max_seq_len_from_original_res"] = original
            pixels = torch.rand(shape, generator=generator)
            with torch.no_grad():
                tensors[f"{case}.input"] = pixels
                tensors[f"{case}.output"] = tiny(pixels)  # (N, 1)
    metadata = {
        "config": json.dumps(TINY),
        "cases": json.dumps({case: original for case, (_, original) in CASES.items()}),
        "source": "pyiqa 0.1.16 pyiqa/archs/musiq_arch.py, tests/data/make_musiq_fixtures.py",
    }
    (HERE / "musiq_tiny_reference.safetensors").write_bytes(save(tensors, metadata=metadata))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/data/make_musiq_fixtures.py path/to/pyiqa-0.1.16-py3-none-any.whl")
    main(Path(sys.argv[1]))
