"""Locating the ffmpeg/ffprobe binaries once, so every caller agrees on which build it runs.

Debian's package brings both; the imageio-ffmpeg wheel carries only ffmpeg, so it is a fallback for
encoding/decoding but never for probing.
"""

from __future__ import annotations

import functools
import os
import shutil


def _configured(tool: str) -> str | None:
    """``$STAPIPE_<TOOL>`` if set, else the tool on PATH."""
    return os.environ.get(f"STAPIPE_{tool.upper()}") or shutil.which(tool)


@functools.cache
def ffmpeg_exe() -> str:
    """Path of ffmpeg: ``$STAPIPE_FFMPEG``, then PATH, then the imageio-ffmpeg wheel's binary."""
    found = _configured("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - dependency of the project
        raise FileNotFoundError("ffmpeg not found: install Debian's ffmpeg package") from exc
    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.cache
def ffprobe_exe() -> str:
    """Path of ffprobe (``$STAPIPE_FFPROBE`` or PATH); there is no wheel fallback for it."""
    found = _configured("ffprobe")
    if found:
        return found
    sibling = os.path.join(os.path.dirname(ffmpeg_exe()), "ffprobe")
    if os.access(sibling, os.X_OK):
        return sibling
    raise FileNotFoundError("ffprobe not found: install Debian's ffmpeg package (apt-get install ffmpeg)")
