"""Captioned image datasets (folders, JSONL/CSV manifests, WebDataset shards) and the image-embedding cache."""
