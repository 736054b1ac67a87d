"""Diffusion pieces: noise schedule (more to come: v-prediction, DDIM, posteriors, samplers)."""
