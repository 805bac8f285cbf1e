"""A real headless Chromium, driven over the DevTools protocol through a pipe (no websocket library, no
port): load a page, record every request it makes, evaluate JavaScript in it, take a screenshot.

Debian's `chromium` (`.ci/run` installs it); `browser()` is None where it is absent. Every run gets a
fresh profile and the flags that keep Chromium's own traffic off (updates, sync, background fetches),
so what the request log holds is what the page asked for."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--remote-debugging-pipe",
)
BINARIES = ("chromium", "chromium-browser")


def chromium() -> str | None:
    return next(filter(None, map(shutil.which, BINARIES)), None)


class Page:
    """One tab of a Chromium started with --remote-debugging-pipe: commands on fd 3, answers on fd 4,
    each a JSON message ended by a NUL byte."""

    def __init__(self, binary: str, profile: Path, width: int = 1400, height: int = 900):
        to_child, self._commands = os.pipe()
        self._answers, from_child = os.pipe()

        def pipes_on_3_and_4() -> None:
            read, write = os.dup(to_child), os.dup(from_child)  # either may be 3 or 4 already
            os.dup2(read, 3)
            os.dup2(write, 4)

        self.process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            preexec_fn=pipes_on_3_and_4,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child)
        os.close(from_child)
        self._next, self._buffer, self.events, self._session = 0, b"", [], None
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Network", "Page", "Runtime"):
            self.send(f"{domain}.enable")

    def send(self, method: str, **params) -> dict:
        """A command to the page (to the browser for Target.* and Browser.*); returns its result."""
        self._next += 1
        message = {"id": self._next, "method": method, "params": params}
        if self._session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self._session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._receive()
            if answer.get("id") == self._next:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def _receive(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._answers, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self.events.append(message)
        return message

    def open(self, url: str) -> None:
        """Navigate and wait for the load event (every image loaded or failed)."""
        self.events.clear()
        self.send("Page.navigate", url=url)
        while not any(e["method"] == "Page.loadEventFired" for e in self.events):
            self._receive()

    def requests(self) -> list[str]:
        """The URLs the page requested since it was opened, itself included."""
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def screenshot(self, path: Path, full_page: bool = False) -> None:
        path.write_bytes(
            base64.b64decode(self.send("Page.captureScreenshot", format="png", captureBeyondViewport=full_page)["data"])
        )

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, OSError):
            self.send("Browser.close")
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._answers)


@contextlib.contextmanager
def browser(width: int = 1400, height: int = 900) -> Iterator[Page]:
    """A fresh headless Chromium with one page; requires chromium (check `chromium()` first)."""
    binary = chromium()
    if binary is None:
        raise RuntimeError("no chromium on PATH")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        page = Page(binary, Path(profile), width, height)
        try:
            yield page
        finally:
            page.close()
