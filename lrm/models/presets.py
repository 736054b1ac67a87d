"""Named surrogate architectures: the paper's two (Tab. 10, Tab. 11), video variants, larger sizes.

Sizes: the base presets are the paper's width 128; "-m" is wider (256) with one extra 3x3
stage; "-l" is wider and deeper (256 -> 384 x 3). Video: "video-frame-avg" is the 2D image CNN
per latent frame with predictions averaged (the paper's default for video rewards); "video-3d"
convolves over time (kernel 3) too. "-fullres" and "video-pair" keep the latent resolution
(lrm.models.fullres): local maps pooled by mean and top 5%, per frame (fine-grained image quality:
BRISQUE) or per consecutive frame pair (flicker, motion). "-patch-gaussian" is NIQE's structure
(lrm.models.patch_gaussian): per-patch features, their Gaussian, its distance to a learned one;
"-mscn-gaussian" (lrm.models.mscn_gaussian) the same on NIQE's own pixel-level MSCN statistics of
learned pixel planes; "-nss-pixels" (lrm.models.nss_pixels) computes NIQE itself (differentiably)
on grey pixels decoded by one linear 3x3 conv, "-nss-codec" on the codec's own decode (its decoder run
frozen inside the surrogate).
"-log" presets also feed the backbone log energies of the latents (natural-scene-statistics
rewards: BRISQUE, NIQE). Text presets add Tab. 11's cross-attention on text tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from lrm.models.cnn import ConvBackbone
from lrm.models.fullres import FullResolutionBackbone
from lrm.models.mscn_gaussian import MSCNGaussianBackbone
from lrm.models.nss_pixels import CodecNIQEBackbone, NSSPixelBackbone
from lrm.models.patch_gaussian import PatchGaussianBackbone
from lrm.models.surrogate import LatentRewardModel
from lrm.models.timestep import TimestepEmbedding
from lrm.models.xattn import TextCrossAttention

TIME_EMBED_DIM = 128  # width of the timestep embedding of noise-aware surrogates


@dataclass(frozen=True)
class Architecture:
    widths: tuple[int, ...]  # channels per conv stage (stage 0: 4x4 s4, stage 1: 3x3 s2, later: 3x3 s1;
    #                          full resolution: every stage 3x3 s1)
    feature_dim: int  # channels of the final 1x1 conv = the feature vector the head reads (full resolution: 2x)
    temporal: bool = False  # True: 3D convs over (T, h, w) / frame pairs; False: 2D per frame, frame-averaged
    full_resolution: bool = False  # True: FullResolutionBackbone (stride-1 3x3 convs; temporal: frame pairs)
    text: bool = False  # True: Tab. 11 cross-attention on text token embeddings
    pooled_stats: bool = False  # True: the head also reads per-channel pooled statistics (channel_stats)
    log_energy: bool = False  # True: the backbone also reads log(x^2 + eps) of every latent channel
    patch_gaussian: bool = False  # True: PatchGaussianBackbone (feature_dim: its local moment maps)
    mscn: bool = False  # with patch_gaussian: MSCNGaussianBackbone (feature_dim: its pixel planes)
    patch_features: int = 16  # patch-Gaussian: features per patch, the Gaussian's dimension (NIQE's: 36)
    nss_pixels: bool = False  # True: NSSPixelBackbone (no widths; feature_dim: its 64 grey pixels per cell)
    codec_decoder: bool = False  # with nss_pixels: CodecNIQEBackbone, the codec's own decoder (no widths, no
    #                              feature_dim: it reads NIQE's distance and 36 features)

    @property
    def niqe_patches(self) -> bool:
        """Frames need two of NIQE's 96-px patches: 12 x 12 latent cells each (lrm.models.patch_gaussian)."""
        return self.patch_gaussian or self.nss_pixels


ARCHITECTURES: dict[str, Architecture] = {
    "image-cnn": Architecture((128, 128), 128),  # Tab. 10, 189,441 params at 12 channels
    "image-cnn-m": Architecture((256, 256, 256), 256),
    "image-cnn-l": Architecture((256, 384, 384, 384), 384),
    "text-image-xattn": Architecture((128, 128), 128, text=True),  # Tab. 11
    "text-image-xattn-m": Architecture((256, 256, 256), 256, text=True),
    "text-image-xattn-l": Architecture((256, 384, 384, 384), 384, text=True),
    "video-frame-avg": Architecture((128, 128), 128),
    "video-frame-avg-m": Architecture((256, 256, 256), 256),
    "video-3d": Architecture((128, 128), 128, temporal=True),
    "video-3d-m": Architecture((256, 256, 256), 256, temporal=True),
    "text-video-xattn": Architecture((128, 128), 128, text=True),
    "text-video-3d-xattn": Architecture((128, 128), 128, temporal=True, text=True),
    # "-stats": the same CNN whose head also reads pooled per-channel statistics (surrogate.channel_stats:
    # mean, std, mean |spatial difference|, for clips mean |temporal difference|, and their logs).
    # The first GroupNorm of Tab. 10 normalises away each sample's channel energies, which
    # energy-like rewards (JPEG size, sharpness, flicker) depend on; the extra inputs give them back.
    "image-cnn-stats": Architecture((128, 128), 128, pooled_stats=True),
    "text-image-xattn-stats": Architecture((128, 128), 128, text=True, pooled_stats=True),
    "video-3d-stats": Architecture((128, 128), 128, temporal=True, pooled_stats=True),
    "text-video-3d-xattn-stats": Architecture((128, 128), 128, temporal=True, text=True, pooled_stats=True),
    # Latent resolution throughout, 16 local maps pooled by mean and top 5%, + pooled statistics.
    "image-fullres-stats": Architecture((64, 64, 64), 16, full_resolution=True, pooled_stats=True),
    "video-pair-stats": Architecture((32, 32, 32), 16, temporal=True, full_resolution=True, pooled_stats=True),
    # "-log": the backbone also reads log energies log(x^2 + eps) (surrogate.with_log_energy), for
    # natural-scene-statistics rewards (BRISQUE, NIQE), which divide local deviations by local contrast.
    "image-cnn-log-stats": Architecture((128, 128), 128, pooled_stats=True, log_energy=True),
    "image-fullres-log-stats": Architecture((64, 64, 64), 16, full_resolution=True, pooled_stats=True,
                                            log_energy=True),
    # Patch-Gaussian (lrm.models.patch_gaussian): per-96-px-patch features, their Gaussian over the
    # frame's patches and its distance to a learned reference, NIQE's own structure.
    "image-patch-gaussian-log-stats": Architecture((64, 64, 64), 32, pooled_stats=True, log_energy=True,
                                                   patch_gaussian=True),
    # "-s": half the width (4x fewer conv FLOPs, for fits on larger batches on a CPU) and NIQE's own
    # 36 features per patch (the 16 above bottleneck the Gaussian: benchmarks/niqe_oracle.py).
    "image-patch-gaussian-log-stats-s": Architecture((32, 32, 32), 32, pooled_stats=True, log_energy=True,
                                                     patch_gaussian=True, patch_features=36),
    # MSCN-Gaussian (lrm.models.mscn_gaussian): the same at pixel resolution, on NIQE's MSCN statistics
    # of 2 learned pixel planes, decoded from the raw latents (a linear path spans dct's exact decoder).
    "image-mscn-gaussian-stats": Architecture((64, 64), 2, pooled_stats=True, patch_gaussian=True, mscn=True),
    # NSS pixels (lrm.models.nss_pixels): NIQE itself on grey pixels decoded by one linear 3x3 conv,
    # which lrm.fitting fits to the codec's decoder by least squares before training.
    "image-nss-pixels": Architecture((), 64, nss_pixels=True),
    # NSS codec (lrm.models.nss_pixels): NIQE itself on the codec's own decode, the decoder run frozen
    # inside the surrogate; for learned decoders no linear conv matches (taef2: 16.9 grey levels off).
    "image-nss-codec": Architecture((), 0, nss_pixels=True, codec_decoder=True),
}


# Reward kind -> the recommended surrogate preset (`lrm fit` without --model, FitConfig.preset None) (temporal rewards need a temporal backbone). Image and video
# default to the "-stats" heads: the real-data benchmark (benchmarks/fidelity.py) measures them,
# and on the main job they beat the plain Tab. 10 CNN (held-out Spearman 0.957 vs 0.911). Video
# defaults to frame pairs at full latent resolution, which beat the 3D CNN on both measured video
# rewards (flicker, dynamic degree) in both codecs (README, "Fidelity on real data").
# Text kinds keep Tab. 11 until a text reward is measured the same way. The "-log" image presets
# are no default: they lift every image reward in dct but lower BRISQUE and colourfulness in taef2.
DEFAULT_PRESETS = {
    "image": "image-cnn-stats",  # Tab. 10 + pooled channel statistics
    "text-image": "text-image-xattn",  # Tab. 11
    "video": "video-pair-stats",  # consecutive latent frame pairs, mean + top-5% pooled change maps
    "text-video": "text-video-3d-xattn",
}


def assemble(preset: str, in_channels: int, text_dim: int | None = None, noise_aware: bool = False,
             codec_settings: dict | None = None) -> LatentRewardModel:
    """Build the named architecture for `in_channels` latent channels (and `text_dim` text tokens);
    `codec_settings` (Codec.settings()) name the latent space, which "-nss-codec" presets decode."""
    arch = ARCHITECTURES[preset]
    if in_channels < 1:
        raise ValueError(f"surrogate {preset!r}: in_channels must be >= 1, got {in_channels}")
    if arch.text and not text_dim:
        raise ValueError(
            f"surrogate {preset!r} reads text: pass text_dim (width D of the text encoder's token embeddings)"
        )
    cond_dim = TIME_EMBED_DIM if noise_aware else None
    backbone_channels = 2 * in_channels if arch.log_energy else in_channels
    if arch.codec_decoder:
        backbone = CodecNIQEBackbone(frame_codec(preset, in_channels, codec_settings, noise_aware))
    elif arch.nss_pixels:
        backbone = NSSPixelBackbone(backbone_channels, cond_dim=cond_dim)
    elif arch.mscn:
        backbone = MSCNGaussianBackbone(backbone_channels, arch.widths, arch.feature_dim, arch.patch_features,
                                        cond_dim=cond_dim)
    elif arch.patch_gaussian:
        backbone = PatchGaussianBackbone(backbone_channels, arch.widths, arch.feature_dim, arch.patch_features,
                                         cond_dim=cond_dim)
    elif arch.full_resolution:
        backbone = FullResolutionBackbone(backbone_channels, arch.widths, arch.feature_dim, arch.temporal, cond_dim)
    else:
        backbone = ConvBackbone(backbone_channels, arch.widths, arch.feature_dim, arch.temporal, cond_dim)
    model = LatentRewardModel(
        preset, in_channels, backbone, per_frame=not arch.temporal,
        cross_attention=TextCrossAttention(backbone.feature_dim, text_dim) if arch.text else None,
        time_embedding=TimestepEmbedding(TIME_EMBED_DIM) if noise_aware else None,
        pooled_stats=arch.pooled_stats, log_energy=arch.log_energy,
    )
    model.info.codec_settings = dict(codec_settings) if codec_settings is not None else None
    return model


def check_frame_codec(preset: str, in_channels: int, codec_settings: dict | None, noise_aware: bool) -> None:
    """A ValueError naming the fix when the latent space `codec_settings` cannot serve a "-nss-codec"
    surrogate: no settings given, another channel count, a video codec, noise-aware. Reads the settings
    only; the codec is not loaded."""
    who = f"surrogate {preset!r}"
    if noise_aware:
        raise ValueError(f"{who} decodes clean latents with the codec's own decoder and has no noise-aware "
                         "variant; fit it without noise awareness (drop --noise-aware, or noise_aware=False)")
    if codec_settings is None:
        raise ValueError(f"{who} runs the codec's own decoder: pass codec_settings (Codec.settings() of the "
                         "latent space; `lrm fit` passes the store's)")
    name = codec_settings.get("name")
    if codec_settings["channels"] != in_channels:
        raise ValueError(f"{who}: codec {name!r} makes {codec_settings['channels']}-channel latents, not {in_channels}")
    if codec_settings.get("temporal_factor", 1) != 1:
        raise ValueError(f"{who} decodes frame by frame, but codec {name!r} decodes "
                         f"{codec_settings['temporal_factor']} frames per latent frame; use image-nss-pixels")


def frame_codec(preset: str, in_channels: int, codec_settings: dict | None, noise_aware: bool):
    """The codec a "-nss-codec" surrogate decodes with, rebuilt from `codec_settings` once they pass
    `check_frame_codec`."""
    from lrm import codecs

    check_frame_codec(preset, in_channels, codec_settings, noise_aware)
    return codecs.from_settings(codec_settings)
