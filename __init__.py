"""ComfyUI-LiT: Locked-image Tuning (LiT) in ComfyUI.

ComfyUI imports this folder by path and reads ``NODE_CLASS_MAPPINGS``, ``NODE_DISPLAY_NAME_MAPPINGS`` and
``WEB_DIRECTORY``. The same folder is the Python package ``comfyui_lit`` for the CLI and tests.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__version__ = "0.1.0"
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY", "__version__"]
