"""Text-guided photo enhancement: the differentiable grade operator and the sampler that fits it."""
