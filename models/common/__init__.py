"""Shared pieces: the pack's error type, safetensors reading and atomic writing, fingerprints."""
