"""Which ffmpeg binary to run: a system ffmpeg on PATH, else the static one imageio-ffmpeg ships."""
from __future__ import annotations

import functools
import shutil


@functools.cache
def ffmpeg_exe() -> str:
    system = shutil.which("ffmpeg")
    if system:
        return system
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()
