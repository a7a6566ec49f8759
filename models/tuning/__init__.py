"""Locked-image tuning: the LiT model and adapters, losses, the training loop, checkpoints and metrics."""
