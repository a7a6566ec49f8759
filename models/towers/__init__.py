"""Locked image towers and text towers: detect the architecture of a weights file, build it, load it strictly."""
