"""Attention: the Triton fused kernel, the SDPA fallback, and the choice between them."""
