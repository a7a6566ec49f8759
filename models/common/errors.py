"""One error type for everything a user can get wrong.

Engine code raises :class:`LitError` with the input that was wrong and how to fix it; the node layer adds the
node's display name, so a ComfyUI user sees ``[LiT Load Text Encoder] input 'text_encoder': ... Fix: ...``
instead of a traceback from deep inside torch.
"""

from __future__ import annotations


class LitError(ValueError):
    """A user-facing error: what was wrong, which input, and the fix."""

    def __init__(self, message: str, *, input_name: str | None = None, fix: str | None = None,
                 node: str | None = None) -> None:
        self.message = message
        self.input_name = input_name
        self.fix = fix
        self.node = node
        super().__init__(self._render())

    def _render(self) -> str:
        parts = []
        if self.node:
            parts.append(f"[{self.node}]")
        if self.input_name:
            parts.append(f"input '{self.input_name}':")
        parts.append(self.message)
        text = " ".join(parts)
        if self.fix:
            text += f" Fix: {self.fix}"
        return text

    def with_node(self, node: str) -> LitError:
        """The same error, now naming the node it happened in."""
        self.node = node
        self.args = (self._render(),)
        return self

    def __str__(self) -> str:
        return self._render()


# ComfyUI shows an error's type as ``<module>.<class>``; inside ComfyUI our module's name is the pack's path,
# mangled (``custom_nodes.ComfyUI-LiT.models.common.errors``), so name the type as the package exports it.
LitError.__module__ = "comfyui_lit"
