"""Plug-and-play restoration: degradation operators with their data steps, denoiser priors, the HQS sampler."""
