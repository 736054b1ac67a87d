"""A tiny stand-in for the embedded student, for smoke runs of the study benchmarks (seconds, not the 15+ minutes
of training the embedded teacher and distilling its student).

Writes OUT/model, a generator run as `lrm tune --student` reads it: a dit-xs (286k parameters) with every weight
perturbed at random (an untrained, zero-initialised DiT would output 0 and make the run vacuous), 1 sampling step,
64-px images in the dct latent space, prompts through the embedded default text encoder (all-MiniLM-L6-v2, from
its PyPI wheel). Its config.json records OUT/store, a small procedural store with captions and token embeddings,
so `lrm study overopt --launch` can fit its surrogates on it, for image and text-image rewards alike. Nothing it
generates means anything; it only makes every code path run.

    python benchmarks/tiny_student.py --out /tmp/tiny_student
    python benchmarks/overopt_study.py --student /tmp/tiny_student --rewards jpeg-incompressibility ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

SIZE = 64  # pixels: 8x8 dct latents
LATENT_SHAPE = [1, 32, SIZE // 8, SIZE // 8]  # (T, c, h, w) of one image in the dct codec


def write_tiny_student(out: str | Path, images: int = 40, seed: int = 0) -> Path:
    """OUT/model (the student) recording OUT/store (`images` procedural captioned 64-px images); returns OUT."""
    from lrm.codecs import load as load_codec
    from lrm.configs import EncodeConfig
    from lrm.datasets.encoding import encode
    from lrm.generators import build_dit, save_denoiser
    from lrm.text import DEFAULT_ENCODER, load as load_text

    out = Path(out)
    store = encode(EncodeConfig(f"procedural:{images}", codec="dct", frames=1, size=SIZE, text=DEFAULT_ENCODER,
                                shard_size=images, seed=seed), out / "store", progress=False)
    torch.manual_seed(seed)
    model = build_dit("dit-xs", LATENT_SHAPE[1], load_text(DEFAULT_ENCODER).dim)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.codec_settings, model.text_encoder_id = load_codec("dct").settings(), DEFAULT_ENCODER
    save_denoiser(model, out / "model", extra={"student_steps": 1, "latent_shape": LATENT_SHAPE,
                                               "store": str(store.path.resolve())})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of the student run (OUT/model, OUT/store)")
    parser.add_argument("--images", type=int, default=40, help="procedural images in its store")
    parser.add_argument("--seed", type=int, default=0, help="of the store's images and the student's weights")
    args = parser.parse_args()
    print(f"tiny student in {write_tiny_student(args.out, args.images, args.seed)}")


if __name__ == "__main__":
    main()
