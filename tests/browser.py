"""Open an HTML file in headless Chromium and report what went wrong: a test helper.

    errors, png = render_in_chromium("reports/memory_decay.html")

Chromium is driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: commands on fd 3, replies on fd 4, each JSON
message ended by a NUL byte), which reports console messages with their
level, uncaught exceptions, and failed or blocked loads (network errors,
Content-Security-Policy violations) as structured events; the ``CONSOLE``
lines of ``--enable-logging=stderr`` carry no level and miss failed loads.
Network access is cut (every host name resolves to nothing), so a page that
is not self-contained shows up as load errors.

Tests that use it skip when no ``chromium`` binary is installed (CI installs
Debian's ``chromium``: ``apt-get update && apt-get install -y chromium``).
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
TIMEOUT_S = 60.0
SETTLE_S = 0.5  # after the load event, time for timers and late errors to fire
MAX_HEIGHT = 16_000  # screenshot height cap (CSS pixels)


def chromium_binary() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def require_chromium() -> str:
    """The Chromium binary, or skip the calling test with the reason."""
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get update && apt-get install -y chromium)")
    return binary


class _DevTools:
    """A minimal DevTools-protocol client over Chromium's pipe transport."""

    def __init__(self, binary: str, user_data_dir: str, width: int, height: int):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def plumb():  # in the child: the protocol reads fd 3 and writes fd 4
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        args = [
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
            "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={user_data_dir}",
            f"--window-size={width},{height}", "--remote-debugging-pipe", "about:blank",
        ]
        # 3 and 4 must survive the child's fd clean-up, which runs after plumb().
        self.process = subprocess.Popen(
            args, pass_fds=(to_chrome_r, from_chrome_w, 3, 4), preexec_fn=plumb,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def send(self, method: str, params: dict | None = None, *, wait: bool = True) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        if not wait:
            return {}
        reply = self.wait_for(lambda m, i=self._next_id: m.get("id") == i)
        if "error" in reply:
            raise RuntimeError(f"DevTools {method} failed: {reply['error']}")
        return reply.get("result", {})

    def wait_for(self, predicate, timeout: float = TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if predicate(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"Chromium did not answer within {timeout:.0f} s")
            ready, _, _ = select.select([self._from_chrome], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    stderr = self.process.stderr.read().decode(errors="replace")[-2000:] if self.process.stderr else ""
                    raise RuntimeError(f"Chromium exited early:\n{stderr}")
                self._buffer += chunk

    def drain(self, seconds: float) -> None:
        try:
            self.wait_for(lambda m: False, timeout=seconds)
        except TimeoutError:
            pass

    def close(self) -> None:
        try:
            self.send("Browser.close", wait=False)
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            for fd in (self._to_chrome, self._from_chrome):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if self.process.stderr:
                self.process.stderr.close()


def _error_text(event: dict) -> str | None:
    """The message of an error event, or None for anything that is not an error."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        d = params.get("exceptionDetails", {})
        description = d.get("exception", {}).get("description") or d.get("text", "exception")
        return f"uncaught exception: {description} ({d.get('url', '')}:{d.get('lineNumber', 0) + 1})"
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
        return f"console.{params['type']}: {text}"
    if method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        entry = params["entry"]
        return f"{entry.get('source', 'log')} error: {entry.get('text', '')} {entry.get('url', '')}".rstrip()
    return None


def render_in_chromium(html_path: str | Path, *, width: int = 1280, height: int = 2000,
                       screenshot: str | Path | None = None) -> tuple[list[str], Path]:
    """Load ``html_path`` in headless Chromium; return (console errors, full-page screenshot PNG path).

    Errors are uncaught exceptions, ``console.error``/``console.assert``
    calls and error-level log entries (failed loads, blocked network
    requests, Content-Security-Policy violations), each as one line of text.
    The screenshot covers the whole page (up to MAX_HEIGHT CSS pixels) at
    ``width``; it is written beside the HTML file unless ``screenshot`` names a path.
    """
    binary = require_chromium()
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise FileNotFoundError(f"no HTML file at {html_path}")
    png = Path(screenshot) if screenshot else html_path.with_suffix(".png")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        tools = _DevTools(binary, profile, width, height)
        try:
            targets = tools.send("Target.getTargets")["targetInfos"]
            page = next(t["targetId"] for t in targets if t["type"] == "page")
            tools.session = tools.send("Target.attachToTarget", {"targetId": page, "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Page"):
                tools.send(f"{domain}.enable")
            tools.send("Page.navigate", {"url": html_path.as_uri()})
            tools.wait_for(lambda m: m.get("method") == "Page.loadEventFired")
            tools.drain(SETTLE_S)
            size = tools.send("Page.getLayoutMetrics")["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": max(width, int(size["width"])),
                    "height": min(MAX_HEIGHT, max(1, int(size["height"]))), "scale": 1}
            shot = tools.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip})
            png.write_bytes(base64.b64decode(shot["data"]))
        finally:
            tools.close()
    errors = [text for text in map(_error_text, tools.events) if text]
    return errors, png


def is_blank(png: str | Path) -> bool:
    """True when the image is a single colour (nothing was drawn)."""
    from PIL import Image

    with Image.open(png) as image:
        extrema = image.convert("RGB").getextrema()
    return all(low == high for low, high in extrema)
