"""Helpers the tests share: reading a player's markup back."""

from __future__ import annotations

import base64
import re

from IPython.display import HTML

_FRAME = re.compile(r"frames\[(\d+)\]\s*=\s*\"data:image/")


def frames_in(html: str | HTML) -> int:
    """How many embedded frames a player's markup holds."""
    text = html.data if isinstance(html, HTML) else html
    return len(_FRAME.findall(text))


def png_bytes(html: str, i: int = 0) -> bytes:
    """The PNG bytes of frame ``i`` of a player's markup."""
    match = re.search(rf"frames\[{i}\]\s*=\s*\"data:image/png;base64,([^\"]*)\"", html)
    if match is None:
        raise ValueError(f"no PNG frame {i} in this markup")
    return base64.b64decode(match.group(1).replace("\\\n", ""))
