"""The engine: plain PyTorch/transformers, no ComfyUI imports. Usable from Python, the CLI and tests."""
