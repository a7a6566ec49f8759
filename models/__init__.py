"""The engine: plain PyTorch/transformers, no ComfyUI import. One package per feature.

- ``common/``      errors, safetensors reading, atomic writing, fingerprints: what every feature shares
- ``towers/``      the locked image tower and the text tower: architecture detection, building, key mapping
- ``data/``        captioned image datasets (folders, manifests, WebDataset shards) and the embedding cache
- ``tuning/``      locked-image tuning: adapters (head / LoRA / full), losses, the trainer, checkpoints, metrics
- ``retrieval/``   what a tuned model does: zero-shot classify, score, rank (and tag, caption, search)
- ``restoration/`` plug-and-play restoration: degradation operators, denoiser priors, the HQS sampler
- ``enhancement/`` text-guided enhancement: the grade operator and its fitting
- ``attention/``   the Triton attention kernel, its SDPA fallback and the backend choice
"""
