"""Which ffmpeg runs: the one params.yaml names (`ffmpeg: pinned | system`).

Lossy H.264 from another encoder build means other pixels, another backbone and other metrics,
so by default both the synthetic renderer and the frames stage run the static ffmpeg that the
imageio-ffmpeg wheel pinned in requirements.txt ships: the same bytes on every machine of a kind.
`system` runs the ffmpeg on PATH instead (e.g. for a codec the static build lacks); the outputs
record which binary made them (`toolchain()`), so a lock made with another build shows why.
"""

from __future__ import annotations

import functools
import importlib.resources
import shutil
import subprocess

from dgl.checksums import sha256_of
from dgl.errors import UserError


@functools.cache
def ffmpeg_exe(which: str = "pinned") -> str:
    """The path of the ffmpeg binary `which` (`pinned` or `system`, checked by the params schema) names."""
    if which == "system":
        found = shutil.which("ffmpeg")
        if found is None:
            raise UserError("params: ffmpeg = system but there is no ffmpeg on PATH; install one or use ffmpeg: pinned")
        return found
    # Not imageio_ffmpeg.get_ffmpeg_exe(): it prefers $IMAGEIO_FFMPEG_EXE and falls back to a system
    # ffmpeg when the wheel has no binary, which would silently unpin the encoder.
    binaries = importlib.resources.files("imageio_ffmpeg.binaries")
    shipped = sorted(p for p in binaries.iterdir() if p.name.startswith("ffmpeg-"))
    if not shipped:
        raise UserError(
            "the installed imageio-ffmpeg ships no ffmpeg binary for this platform; "
            "reinstall it from its platform wheel (make setup) or set `ffmpeg: system` in params.yaml"
        )
    return str(shipped[0])


@functools.cache
def toolchain(which: str = "pinned") -> dict[str, str]:
    """What made the bytes: the choice, ffmpeg's own version line and the binary's sha256."""
    exe = ffmpeg_exe(which)
    try:
        result = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise UserError(f"{exe}: this ffmpeg does not run ({e}); reinstall it or set `ffmpeg` in params.yaml") from None
    return {"ffmpeg": which, "version": result.stdout.splitlines()[0], "sha256": sha256_of(exe)}
