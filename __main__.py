"""``python -m comfyui_lit``: the command-line interface (same engine as the nodes)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
