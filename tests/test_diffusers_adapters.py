"""diffusers adapters on tiny random-init pipelines built in-process (offline, CPU).

Every family's pipeline (SD, SDXL, SD3, FLUX, Wan) is a real diffusers pipeline object with tiny
components (no VAE: the adapters never need one) and tokenizers written in-process (a byte-level
BPE CLIP tokenizer and a Unigram T5 tokenizer over a few words). References are independent: the
pipeline's own encode_prompt, its own latent packing / time ids, and the diffusers model called
directly on its layout; diffusers' schedulers for the schedules.
"""

import importlib.util
import math

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import (  # noqa: E402
    DDPMScheduler,
    EulerDiscreteScheduler,
    FluxPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import (  # noqa: E402
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
    UMT5Config,
    UMT5EncoderModel,
)

from lrm.diffusion.parameterisations import to_x0_eps, training_target  # noqa: E402
from lrm.diffusion.schedules import FlowSchedule, VPSchedule  # noqa: E402
from lrm.generators.diffusers_adapters import (  # noqa: E402
    FAMILIES,
    load_diffusers,
    load_diffusers_denoiser,
    load_diffusers_prompt_encoder,
    pack_pooled,
    prediction_from_scheduler,
    schedule_config_from_scheduler,
)
from lrm.weights import MissingWeightsError  # noqa: E402

WORDS = ["a", "red", "circle", "on", "blue", "background", "square", "cat"]
PROMPTS = ["a red circle", "blue cat on a square"]
CLIP_LENGTH = 8  # the tiny CLIP context (77 in the real models)
T5_LENGTH = 6  # max_sequence_length of the tiny T5 tokens (256 / 512 in the real pipelines)
C, SIZE = 4, 8  # latent channels and side: latents (B, T, 4, 8, 8), i.e. 64 x 64 px at the VAE factor 8
FLOW_SCHEDULER = dict(shift=3.0)  # SD3's scheduler_config.json
FLUX_SCHEDULER = dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                      max_image_seq_len=4096)  # FLUX.1's scheduler_config.json


# ---------------------------------------------------------------- tiny components


def clip_tokenizer() -> CLIPTokenizer:
    """Byte-level BPE over WORDS: one token per word, start/end-of-text ids 0/1."""
    vocab, merges = {"<|startoftext|>": 0, "<|endoftext|>": 1}, []
    for c in sorted(set("".join(WORDS))):
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    for word in WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        merged = parts[0]
        for part in parts[1:]:
            if (merged, part) not in merges:
                merges.append((merged, part))
            merged += part
            vocab.setdefault(merged, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_LENGTH)


def t5_tokenizer() -> T5Tokenizer:
    """Unigram over WORDS plus single letters: pad 0, eos 1, unk 2."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [("▁" + w, -1.0) for w in WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def clip(hidden: int, projection: int | None = None, seed: int = 0):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=80, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=CLIP_LENGTH,
                         projection_dim=projection or hidden, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def t5(width: int, seed: int = 0, umt5: bool = False):
    torch.manual_seed(seed)
    kw = dict(vocab_size=40, d_model=width, d_kv=4, d_ff=2 * width, num_layers=1, num_heads=2,
              relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return (UMT5EncoderModel(UMT5Config(**kw)) if umt5 else T5EncoderModel(T5Config(**kw))).eval()


def unet(cross_attention_dim: int, **extra) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=SIZE, in_channels=C, out_channels=C,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=2, norm_num_groups=4, **extra)


VP = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)  # SD's scheduler_config.json


def build_pipeline(family: str):
    """A diffusers pipeline of `family` with tiny random components (seeded), vae=None."""
    torch.manual_seed(0)
    if family == "sd":
        return StableDiffusionPipeline(
            vae=None, text_encoder=clip(8), tokenizer=clip_tokenizer(), unet=unet(8),
            scheduler=DDPMScheduler(prediction_type="v_prediction", steps_offset=1, clip_sample=False, **VP),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if family == "sdxl":  # tokens 8 + 4 wide, pooled 6 (the second CLIP's projection)
        return StableDiffusionXLPipeline(
            vae=None, text_encoder=clip(8), text_encoder_2=clip(4, projection=6, seed=1), tokenizer=clip_tokenizer(),
            tokenizer_2=clip_tokenizer(), scheduler=EulerDiscreteScheduler(**VP),
            unet=unet(12, addition_embed_type="text_time", addition_time_embed_dim=4,
                      projection_class_embeddings_input_dim=6 * 4 + 6))
    if family == "sd3":  # CLIP-L 8 + CLIP-G 4 padded to T5's 16; pooled 4 + 6
        return StableDiffusion3Pipeline(
            transformer=SD3Transformer2DModel(
                sample_size=SIZE, patch_size=2, in_channels=C, out_channels=C, num_layers=1, attention_head_dim=4,
                num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=8, pooled_projection_dim=10,
                pos_embed_max_size=16),
            scheduler=FlowMatchEulerDiscreteScheduler(**FLOW_SCHEDULER), vae=None,
            text_encoder=clip(8, projection=4), tokenizer=clip_tokenizer(),
            text_encoder_2=clip(4, projection=6, seed=1), tokenizer_2=clip_tokenizer(),
            text_encoder_3=t5(16), tokenizer_3=t5_tokenizer())
    if family == "flux":  # packed channels 4 * 4 = 16, T5 16 wide, CLIP pooled 8, guidance-distilled
        return FluxPipeline(
            transformer=FluxTransformer2DModel(
                patch_size=1, in_channels=4 * C, num_layers=1, num_single_layers=1, attention_head_dim=8,
                num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, guidance_embeds=True,
                axes_dims_rope=(2, 2, 4)),
            scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=None, text_encoder=clip(8),
            tokenizer=clip_tokenizer(), text_encoder_2=t5(16), tokenizer_2=t5_tokenizer())
    assert family == "wan"
    return WanPipeline(
        transformer=WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=C, out_channels=C,
            text_dim=16, freq_dim=8, ffn_dim=16, num_layers=1, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32),
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
        vae=None, text_encoder=t5(16, umt5=True), tokenizer=t5_tokenizer())


OPTIONS = {"flux": {"latent_size": (SIZE, SIZE)}, "wan": {"text_length": T5_LENGTH}}  # adapter extras


@pytest.fixture(scope="module")
def pipelines():
    """family -> tiny pipeline, built once per module."""
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = build_pipeline(family)
        return cache[family]

    return get


@pytest.fixture(scope="module")
def saved(pipelines, tmp_path_factory):
    """family -> folder the pipeline was written to with save_pretrained."""
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = tmp_path_factory.mktemp(family)
            pipelines(family).save_pretrained(cache[family])
        return cache[family]

    return get


def denoiser_of(pipe):
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


def adapter(pipe, family):
    return FAMILIES[family](denoiser_of(pipe), pipe.scheduler, **OPTIONS.get(family, {}))


def reference_text(pipe, family, prompts=PROMPTS, negative=False):
    """(B, L, D) lrm text and the pipeline's own (tokens, pooled) from its encode_prompt."""
    if family == "sd":
        out = pipe.encode_prompt(prompts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
        return out[negative], None
    if family == "sdxl":
        out = pipe.encode_prompt(prompts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
        tokens, pooled = (out[1], out[3]) if negative else (out[0], out[2])
    elif family == "sd3":
        out = pipe.encode_prompt(prompts, None, None, device="cpu", num_images_per_prompt=1,
                                 do_classifier_free_guidance=True, max_sequence_length=T5_LENGTH)
        tokens, pooled = (out[1], out[3]) if negative else (out[0], out[2])
    elif family == "flux":
        assert not negative  # FLUX.1 has no negative prompt: guidance is embedded
        tokens, pooled, _ = pipe.encode_prompt(prompts, None, device="cpu", num_images_per_prompt=1,
                                               max_sequence_length=T5_LENGTH)
    else:
        out = pipe.encode_prompt(prompts, None, True, max_sequence_length=T5_LENGTH, device="cpu")
        return out[negative], None
    return pack_pooled(tokens, pooled), (tokens, pooled)


def inputs(adapter_, b=2, frames=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, frames, C, SIZE, SIZE, generator=g)
    t = adapter_.schedule.sample_timesteps(b, generator=g)
    return x, t


def direct_call(pipe, family, x, t, raw):
    """The diffusers model called on its own layout, as the pipeline's denoising loop does; x (B, 1 | T, ...)."""
    model = denoiser_of(pipe)
    tokens, pooled = raw
    if family == "sd":
        return model(x[:, 0], t, encoder_hidden_states=tokens).sample[:, None]
    if family == "sdxl":
        px = SIZE * pipe.vae_scale_factor
        time_ids = pipe._get_add_time_ids((px, px), (0, 0), (px, px), dtype=x.dtype, text_encoder_projection_dim=6)
        added = {"text_embeds": pooled, "time_ids": time_ids.repeat(x.shape[0], 1)}
        return model(x[:, 0], t, encoder_hidden_states=tokens, added_cond_kwargs=added).sample[:, None]
    if family == "sd3":
        return model(hidden_states=x[:, 0], encoder_hidden_states=tokens, pooled_projections=pooled,
                     timestep=t).sample[:, None]
    if family == "flux":
        b = x.shape[0]
        packed = FluxPipeline._pack_latents(x[:, 0], b, C, SIZE, SIZE)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, SIZE // 2, SIZE // 2, "cpu", x.dtype)
        out = model(hidden_states=packed, timestep=t / 1000, guidance=torch.full((b,), 3.5),
                    pooled_projections=pooled, encoder_hidden_states=tokens,
                    txt_ids=torch.zeros(tokens.shape[1], 3), img_ids=img_ids).sample
        return FluxPipeline._unpack_latents(out, SIZE * pipe.vae_scale_factor, SIZE * pipe.vae_scale_factor,
                                            pipe.vae_scale_factor)[:, None]
    return model(hidden_states=x.transpose(1, 2), timestep=t, encoder_hidden_states=tokens).sample.transpose(1, 2)


FAMILY_NAMES = ["sd", "sdxl", "sd3", "flux", "wan"]


# ---------------------------------------------------------------- prediction and schedule from scheduler configs


@pytest.mark.parametrize("scheduler, prediction, schedule", [
    (DDPMScheduler(**VP), "eps", {"type": "vp", "betas": "scaled-linear", "num_timesteps": 1000}),
    (EulerDiscreteScheduler(prediction_type="v_prediction", **VP), "v",
     {"type": "vp", "betas": "scaled-linear", "num_timesteps": 1000}),
    (DDPMScheduler(), "eps", {"type": "vp", "betas": "linear", "num_timesteps": 1000}),
    (FlowMatchEulerDiscreteScheduler(shift=3.0), "flow",
     {"type": "flow", "shift": 3.0, "num_timesteps": 1000, "grid": "scheduler"}),
    (UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0), "flow",
     {"type": "flow", "shift": 5.0, "num_timesteps": 1000, "grid": "scheduler"}),
    # a community repo that swapped an EDM model's scheduler for a VP one: sigma bounds, but beta_schedule
    (EulerDiscreteScheduler(use_karras_sigmas=True, sigma_min=0.002, sigma_max=80.0, **VP), "eps",
     {"type": "vp", "betas": "scaled-linear", "num_timesteps": 1000}),
])
def test_prediction_and_schedule_from_scheduler_config(scheduler, prediction, schedule):
    saved_json = {**scheduler.config, "_class_name": type(scheduler).__name__}  # as in scheduler_config.json
    for given in (scheduler, saved_json):
        assert prediction_from_scheduler(given) == prediction
        assert schedule_config_from_scheduler(given) == schedule
    if schedule["type"] == "vp":  # the same abar_t as the diffusers scheduler
        alpha, _ = VPSchedule(schedule["betas"]).alpha_sigma(torch.arange(1000))
        torch.testing.assert_close(alpha**2, scheduler.alphas_cumprod.double(), rtol=1e-6, atol=0)


def flux_pipeline_timesteps(scheduler, num_steps: int, image_seq_len: int) -> torch.Tensor:
    """The timesteps FluxPipeline.__call__ samples on, by its own code path: sigmas linspace(1, 1/n, n) and
    mu = calculate_shift(packed latent tokens, ...) through retrieve_timesteps into (a copy of) its scheduler."""
    import numpy as np
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    mu = calculate_shift(image_seq_len, scheduler.config.get("base_image_seq_len", 256),
                         scheduler.config.get("max_image_seq_len", 4096), scheduler.config.get("base_shift", 0.5),
                         scheduler.config.get("max_shift", 1.15))
    return retrieve_timesteps(scheduler, num_steps, "cpu", sigmas=np.linspace(1.0, 1 / num_steps, num_steps),
                              mu=mu)[0]


def test_dynamic_shift_equals_the_flux_pipelines_and_its_grid_the_pipelines_timesteps():
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
    tokens = (128 // 2) ** 2  # 1024 px: 4096 packed tokens
    config = schedule_config_from_scheduler(scheduler, image_tokens=tokens, grid="flux")
    assert config["type"] == "flow" and config["grid"] == "flux"
    assert math.isclose(config["shift"], math.exp(calculate_shift(tokens, 256, 4096, 0.5, 1.15)))
    for n in (1, 4, 28):
        torch.testing.assert_close(FlowSchedule(**{k: v for k, v in config.items() if k != "type"}).timesteps(n),
                                   flux_pipeline_timesteps(scheduler, n, tokens), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="latent size"):
        schedule_config_from_scheduler(scheduler)


@pytest.mark.parametrize("variant", ["dev-1024px", "dev-tiny", "schnell"])
def test_flux_samples_on_flux_pipelines_grid_and_sd3_on_its_schedulers(pipelines, variant):
    """The FLUX adapter's sampling grid is the one FluxPipeline samples on (FLUX.1-dev: dynamic shift for the
    adapter's latent size; FLUX.1-schnell: shift 1), at the step counts users compare (1, 4, 28); SD3's is its
    scheduler's set_timesteps."""
    transformer = pipelines("flux").transformer
    scheduler = FlowMatchEulerDiscreteScheduler(**(FLUX_SCHEDULER if variant.startswith("dev") else dict(shift=1.0)))
    latent = (SIZE, SIZE) if variant == "dev-tiny" else FAMILIES["flux"].DEFAULT_LATENT_SIZE
    flux = FAMILIES["flux"](transformer, scheduler, latent_size=latent)
    sd3 = adapter(pipelines("sd3"), "sd3")
    for n in (1, 4, 28):
        expected = flux_pipeline_timesteps(scheduler, n, (latent[0] // 2) * (latent[1] // 2))
        torch.testing.assert_close(flux.schedule.timesteps(n), expected, rtol=1e-5, atol=1e-4)
        reference = FlowMatchEulerDiscreteScheduler.from_config(sd3.scheduler_config)
        reference.set_timesteps(n)
        torch.testing.assert_close(sd3.schedule.timesteps(n), reference.timesteps, rtol=1e-5, atol=1e-4)
    assert flux.schedule_config["grid"] == "flux" and sd3.schedule_config["grid"] == "scheduler"


# playgroundai/playground-v2.5-1024px-aesthetic scheduler/scheduler_config.json, as published
EDM_PLAYGROUND = {"_class_name": "EDMDPMSolverMultistepScheduler", "algorithm_type": "dpmsolver++",
                  "dynamic_thresholding_ratio": 0.995, "euler_at_final": False, "final_sigmas_type": "zero",
                  "lower_order_final": True, "num_train_timesteps": 1000, "prediction_type": "epsilon", "rho": 7.0,
                  "sample_max_value": 1.0, "sigma_data": 0.5, "sigma_max": 80.0, "sigma_min": 0.002,
                  "solver_order": 2, "solver_type": "midpoint", "thresholding": False}


@pytest.mark.parametrize("given", ["playground-json", "EDMDPMSolverMultistepScheduler", "EDMEulerScheduler"])
def test_edm_schedulers_are_refused_naming_the_class(pipelines, given):
    from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler

    scheduler = {"playground-json": EDM_PLAYGROUND,
                 "EDMDPMSolverMultistepScheduler": EDMDPMSolverMultistepScheduler(sigma_data=0.5),
                 "EDMEulerScheduler": EDMEulerScheduler()}[given]
    name = "EDMDPMSolverMultistepScheduler" if given == "playground-json" else given
    expected = f"scheduler {name} is an EDM scheduler .*supports VP \\(DDPM betas\\) and flow-matching schedulers"
    for read in (prediction_from_scheduler, schedule_config_from_scheduler):
        with pytest.raises(ValueError, match=expected) as error:
            read(scheduler)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=expected):  # an SDXL-family pipeline with Playground's scheduler
        FAMILIES["sdxl"](pipelines("sdxl").unet, scheduler)


@pytest.mark.parametrize("change, message", [
    ({"beta_schedule": "squaredcos_cap_v2"}, "not supported"),
    ({"beta_end": 0.02}, "differ from lrm"),
    ({"rescale_betas_zero_snr": True}, "cannot represent"),
    ({"prediction_type": "bogus"}, "not supported"),
    ({"_class_name": None, "beta_schedule": None}, "cannot be told apart"),
])
def test_unrepresentable_scheduler_configs_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        config = {**DDPMScheduler(**VP).config, "_class_name": "DDPMScheduler", **change}
        config = {k: v for k, v in config.items() if v is not None}  # None: the key is absent
        prediction_from_scheduler(config)
        schedule_config_from_scheduler(config)


# ---------------------------------------------------------------- forward: the model's own numbers, on lrm's layout


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_forward_equals_the_diffusers_model_and_converts_to_x0_eps(pipelines, family):
    pipe = pipelines(family)
    den = adapter(pipe, family)
    frames = 3 if family == "wan" else 1
    x, t = inputs(den, frames=frames)
    text, raw = reference_text(pipe, family)
    with torch.no_grad():
        out = den(x, t, text, torch.ones(text.shape[:2], dtype=torch.bool))
        expected = direct_call(pipe, family, x, t, raw or (text, None))
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().mean() > 0
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert den.prediction == ("v" if family == "sd" else "eps" if family == "sdxl" else "flow")
    assert den.schedule.config() == den.schedule_config
    alpha, sigma = den.schedule.alpha_sigma(t, x)
    x0_hat, eps_hat = to_x0_eps(den.prediction, out, x, alpha, sigma)
    torch.testing.assert_close(alpha * x0_hat + sigma * eps_hat, x, rtol=0, atol=1e-5)  # consistent with x_t
    torch.testing.assert_close(training_target(den.prediction, x0_hat, eps_hat, alpha, sigma), out, rtol=0, atol=1e-5)


def test_flux_without_guidance_embedding(pipelines):
    """FLUX.1-schnell's config: no guidance embedding, a static shift."""
    pipe = pipelines("flux")
    torch.manual_seed(0)
    model = FluxTransformer2DModel.from_config({**pipe.transformer.config, "guidance_embeds": False})
    den = FAMILIES["flux"](model, FlowMatchEulerDiscreteScheduler(shift=1.0))
    assert den.schedule == FlowSchedule(1.0, grid="flux")
    x, t = inputs(den)
    text, (tokens, pooled) = reference_text(pipe, "flux")
    packed = FluxPipeline._pack_latents(x[:, 0], 2, C, SIZE, SIZE)
    img_ids = FluxPipeline._prepare_latent_image_ids(2, SIZE // 2, SIZE // 2, "cpu", x.dtype)
    with torch.no_grad():
        out = den(x, t, text)
        expected = model(hidden_states=packed, timestep=t / 1000, guidance=None, pooled_projections=pooled,
                         encoder_hidden_states=tokens, txt_ids=torch.zeros(tokens.shape[1], 3), img_ids=img_ids).sample
    torch.testing.assert_close(out[:, 0], FluxPipeline._unpack_latents(expected, 64, 64, 8), rtol=0, atol=1e-6)


def test_schedules_per_family(pipelines):
    assert adapter(pipelines("sd"), "sd").schedule == VPSchedule("scaled-linear")
    assert adapter(pipelines("sd3"), "sd3").schedule == FlowSchedule(3.0)
    assert adapter(pipelines("wan"), "wan").schedule == FlowSchedule(3.0)
    flux = adapter(pipelines("flux"), "flux")  # 8 x 8 latents: 16 packed tokens, below base_image_seq_len
    assert math.isclose(flux.schedule.shift, math.exp(0.5 + (1.15 - 0.5) / (4096 - 256) * (16 - 256)))


def test_the_sdxl_refiner_is_refused_and_the_base_accepted():
    """The refiner's UNet reads five time ids (with the aesthetic score) and only the second CLIP's tokens, so its
    added embedding is pooled + 5 ids with pooled = token width: 2560 = 1280 + 5 * 256 (cross_attention_dim 1280);
    the base's is 2816 = 1280 + 6 * 256 with 2048-wide tokens. Tiny UNets with those widths, and a tiny refiner."""
    def sdxl_unet(tokens, time_dim, width):
        return unet(tokens, addition_embed_type="text_time", addition_time_embed_dim=time_dim,
                    projection_class_embeddings_input_dim=width)

    for refiner in (sdxl_unet(1280, 256, 2560), sdxl_unet(12, 2, 12 + 5 * 2)):
        with pytest.raises(ValueError, match="SDXL refiner's .* the refiner is not supported, only the SDXL base"):
            FAMILIES["sdxl"](refiner, EulerDiscreteScheduler(**VP))
    base = FAMILIES["sdxl"](sdxl_unet(2048, 256, 2816), EulerDiscreteScheduler(**VP))
    assert base.pooled_dim == 1280 and base.text_dim == 2048


def test_image_models_denoise_clips_frame_by_frame(pipelines):
    pipe = pipelines("sdxl")
    den = adapter(pipe, "sdxl")
    x, t = inputs(den, frames=3)
    text, _ = reference_text(pipe, "sdxl")
    with torch.no_grad():
        clip_out = den(x, t, text)
        frames = [den(x[:, i : i + 1], t, text) for i in range(3)]
    torch.testing.assert_close(clip_out, torch.cat(frames, dim=1), rtol=0, atol=1e-6)


def test_wan_pads_real_tokens_as_its_pipeline_does(pipelines):
    pipe = pipelines("wan")
    den = adapter(pipe, "wan")
    x, t = inputs(den, frames=2)
    padded, _ = reference_text(pipe, "wan", prompts=["a red circle", "blue cat"])  # (B, 6, 16): 4 / 3 tokens, zeros
    real = padded[:, :4].clone()  # what the prompt encoder returns: up to the longest prompt's tokens
    mask = real.abs().sum(-1) > 0
    assert mask.sum(1).tolist() == [4, 3]
    real[1, 3:] = 123.0  # beyond the second prompt's tokens: masked out, so ignored
    with torch.no_grad():
        torch.testing.assert_close(den(x, t, real, mask), den(x, t, padded), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_gradients_reach_the_models_parameters(pipelines, family):
    pipe = pipelines(family)
    den = adapter(pipe, family)
    x, t = inputs(den, frames=2 if family == "wan" else 1)
    text, _ = reference_text(pipe, family)
    x.requires_grad_(True)
    den.zero_grad()
    den(x, t, text).square().mean().backward()
    params = [p for p in den.parameters() if p.requires_grad]
    assert params and all(p.grad is not None for p in params)
    assert sum(p.grad.abs().sum() > 0 for p in params) > 0.9 * len(params)
    assert x.grad.abs().sum() > 0
    den.zero_grad(set_to_none=True)


def test_model_dtype_is_used_and_outputs_come_back_in_the_inputs_dtype(pipelines):
    pipe = pipelines("sd3")
    den = FAMILIES["sd3"](SD3Transformer2DModel.from_config(pipe.transformer.config).to(torch.bfloat16),
                          pipe.scheduler)
    x, t = inputs(den)
    text, _ = reference_text(pipe, "sd3")
    with torch.no_grad():
        out = den(x, t, text)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


# ---------------------------------------------------------------- unconditional branch and bad input


def test_unconditional_rows_use_null_text(pipelines):
    pipe = pipelines("sd")
    den = adapter(pipe, "sd")
    x, t = inputs(den)
    text, _ = reference_text(pipe, "sd")
    mask = torch.ones(text.shape[:2], dtype=torch.bool)
    mask[1] = False  # CFG dropout of the second sample's text
    with pytest.raises(ValueError, match="null_text"):
        den(x, t, text, mask)
    with pytest.raises(ValueError, match="null_text"):
        den(x, t)
    den.null_text = reference_text(pipe, "sd", negative=True)[0][:1]  # the pipeline's "" encoding
    with torch.no_grad():
        mixed = den(x, t, text, mask)
        cond = den(x, t, text)
        uncond = den(x, t)
        explicit = den(x, t, den.null_text.expand(2, -1, -1))
    torch.testing.assert_close(uncond, explicit, rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[0], cond[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[1], uncond[1], rtol=0, atol=1e-6)
    assert not torch.allclose(cond[1], uncond[1])


def test_bad_inputs_get_clear_errors(pipelines):
    pipe = pipelines("sd3")
    den = adapter(pipe, "sd3")
    x, t = inputs(den)
    text, _ = reference_text(pipe, "sd3")
    with pytest.raises(ValueError, match="D=16"):
        den(x, t, text[..., :8])
    with pytest.raises(ValueError, match=r"\(B, T, c, h, w\)"):
        den(x[:, 0], t, text)
    with pytest.raises(ValueError, match="t must have shape"):
        den(x, t[:1], text)
    with pytest.raises(ValueError, match="text_mask"):
        den(x, t, None, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="wraps a SD3Transformer2DModel"):
        FAMILIES["sd3"](pipe.text_encoder, pipe.scheduler)


# ---------------------------------------------------------------- loading and prompt encoding


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_load_pipeline_folder_and_encode_prompts_as_the_pipeline(pipelines, saved, family):
    pipe, folder = pipelines(family), saved(family)
    if family == "wan" and importlib.util.find_spec("accelerate") is None:
        with pytest.raises(ImportError, match="pip install accelerate"):  # diffusers keeps Wan's fp32 modules with it
            load_diffusers_denoiser(str(folder))
        encoder = load_diffusers_prompt_encoder(str(folder), max_sequence_length=T5_LENGTH)
        den = adapter(pipe, family)
        den.null_text = encoder.unconditional()
    else:
        options = {"latent_size": (SIZE, SIZE)} if family == "flux" else {}  # Wan's text_length: the encoder's
        den, encoder = load_diffusers(str(folder), max_sequence_length=T5_LENGTH, **options)
    assert den.family == family and type(den) is FAMILIES[family]
    reference = adapter(pipe, family)
    assert (den.prediction, den.schedule_config) == (reference.prediction, reference.schedule_config)
    emb, mask = encoder.encode(PROMPTS)
    expected, _ = reference_text(pipe, family)
    if family == "wan":  # real tokens only; the adapter zero-pads them to the pipeline's length
        assert emb.shape[1] <= expected.shape[1] and (mask.sum(1) == (expected.abs().sum(-1) > 0).sum(1)).all()
        expected = expected[:, : emb.shape[1]] * mask[..., None]
    else:
        assert mask.all()
    torch.testing.assert_close(emb, expected, rtol=0, atol=1e-6)
    if family != "flux":  # CFG's negative prompt "" (zeros for SDXL), as the pipeline's encode_prompt
        negative, _ = reference_text(pipe, family, prompts=[""], negative=True)
        torch.testing.assert_close(den.null_text, negative[:, : den.null_text.shape[1]], rtol=0, atol=1e-6)
    x, t = inputs(den, frames=2 if family == "wan" else 1)
    with torch.no_grad():  # the loaded weights are the saved ones
        torch.testing.assert_close(den(x, t, emb, mask), adapter(pipe, family)(x, t, emb, mask), rtol=0, atol=1e-6)


def test_prompts_are_cached(saved, monkeypatch):
    _, encoder = load_diffusers(str(saved("sd")))
    first = encoder.encode(PROMPTS).emb
    calls = []
    original = encoder.embed_tokens
    monkeypatch.setattr(encoder, "embed_tokens", lambda prompts: calls.append(prompts) or original(prompts))
    again = encoder.encode([PROMPTS[1], "a cat", PROMPTS[0]]).emb
    assert calls == [["a cat"]]  # only the new prompt goes through the text encoder
    torch.testing.assert_close(again[[2, 0]], first, rtol=0, atol=0)


def test_missing_folders_and_files_are_one_line_errors(saved, tmp_path, monkeypatch):
    with pytest.raises(MissingWeightsError, match="no folder at") as missing:
        load_diffusers_denoiser(str(tmp_path / "nope"))
    assert "\n" not in str(missing.value) and "save_pretrained" in str(missing.value)
    with pytest.raises(MissingWeightsError, match="neither unet/config.json nor transformer/config.json") as empty:
        load_diffusers_denoiser(str(tmp_path))
    assert "\n" not in str(empty.value)
    import shutil

    folder = tmp_path / "sd3"
    shutil.copytree(saved("sd3"), folder)
    shutil.rmtree(folder / "scheduler")
    with pytest.raises(MissingWeightsError, match="scheduler/scheduler_config.json is missing") as no_scheduler:
        load_diffusers_denoiser(str(folder))
    assert "\n" not in str(no_scheduler.value)
    with pytest.raises(ValueError, match="holds a 'sd3' denoiser, not 'flux'"):
        load_diffusers_denoiser(str(saved("sd3")), family="flux")
    monkeypatch.setenv("LRM_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match="Hugging Face cache") as hub:
        load_diffusers_denoiser("lrm-tests/no-such-pipeline")
    assert "\n" not in str(hub.value)


def test_loading_from_the_hf_cache(saved, tmp_path, monkeypatch):
    """A hub id resolves through the Hugging Face cache layout (models--org--name/snapshots/<rev>) offline."""
    import shutil

    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--lrm-tests--tiny-sd3" / "snapshots" / ("0" * 40)
    shutil.copytree(saved("sd3"), snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("LRM_OFFLINE", "1")
    den = load_diffusers_denoiser("lrm-tests/tiny-sd3")
    assert den.family == "sd3" and den.schedule == FlowSchedule(3.0)
