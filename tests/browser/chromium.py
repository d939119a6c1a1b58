"""Headless Chromium driven over the DevTools protocol, with no dependency beyond the standard library.

Chromium's ``--remote-debugging-pipe`` reads protocol commands on file descriptor 3 and writes replies and
events on file descriptor 4, one JSON message per NUL-terminated record (Chrome DevTools Protocol,
https://chromedevtools.github.io/devtools-protocol/; the pipe transport is what Puppeteer's ``pipe: true``
uses). A page is a target reached through a flattened session (``Target.attachToTarget`` with
``flatten: true``): its commands carry the ``sessionId``.

``render(html_file)`` loads a report page and answers what the browser saw: the script errors (uncaught
exceptions, console errors, browser log errors), the geometry of the timeline's SVG and of every text and
bar in it, and a PNG screenshot of the whole page. ``python -m tests.browser.chromium REPORT.html OUT.png``
writes that screenshot (how docs/report.png is made).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

# Debian's package (apt-get install chromium): the binary the project's set-up installs (.ci/run, make browser).
CHROMIUM = "/usr/bin/chromium"
# Headless, nothing in the background: no network of its own (updates, sync, QUIC probes), no first-run UI,
# no GPU (none in CI), no sandbox (CI runs as root, where Chromium's sandbox cannot start).
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe",
)
# A guard against a browser that stops answering: a deadlock fails the test instead of hanging it.
REPLY_TIMEOUT_SECONDS = 60.0
PAGE_WIDTH = 1100

# Run in the page once it has loaded: what the checks judge, measured by the browser's own layout.
_MEASURE = """
(() => {
  const box = (el) => { const r = el.getBoundingClientRect();
    return {left: r.left, top: r.top, right: r.right, bottom: r.bottom, width: r.width, height: r.height}; };
  const svg = document.querySelector('svg[aria-label="recovery timeline"]');
  if (!svg) return {svg: null, texts: [], bars: [], marks: []};
  return {
    svg: box(svg),
    texts: [...svg.querySelectorAll('text')].map((t) => ({text: t.textContent, id: t.id || null, box: box(t)})),
    bars: [...svg.querySelectorAll('rect.step')].map((r) => ({
      title: (r.querySelector('title') || {}).textContent || '', box: box(r)})),
    marks: [...svg.querySelectorAll('line.mark')].map((l) => ({box: box(l)})),
    document: {width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight},
  };
})()
"""


class BrowserError(RuntimeError):
    """Chromium did not start, answered a command with an error, or stopped answering."""


@dataclass
class Rendering:
    """What Chromium saw of one page."""

    errors: list[str] = field(default_factory=list)
    layout: dict[str, Any] = field(default_factory=dict)
    png: bytes = b""


def chromium_path() -> str | None:
    """The Chromium to drive: JAMS_DR_CHROMIUM, else Debian's /usr/bin/chromium, else one on PATH."""
    chosen = os.environ.get("JAMS_DR_CHROMIUM")
    if chosen:
        return chosen
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _above_4(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


class Chromium:
    """One headless browser, its own empty profile, talked to over the DevTools pipe."""

    def __init__(self, executable: str) -> None:
        self._profile = tempfile.mkdtemp(prefix="jams-dr-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Above 4, so that putting one end on fd 3 cannot overwrite the other (pytest's capture holds low fds).
        to_browser_r, from_browser_w = (_above_4(to_browser_r), _above_4(from_browser_w))
        # The browser expects the pipe on fds 3 and 4 exactly: bash (dash reads only one-digit fds) puts them
        # there, then becomes Chromium.
        command = ["/bin/bash", "-c", f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}', executable,
                   *FLAGS, f"--user-data-dir={self._profile}", "about:blank"]
        self._process = subprocess.Popen(
            command, pass_fds=(to_browser_r, from_browser_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self._process.poll() is None:
                with contextlib.suppress(BrowserError, OSError):
                    self.send("Browser.close")
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
        finally:
            for fd in (self._to_browser, self._from_browser):
                with contextlib.suppress(OSError):
                    os.close(fd)
            if self._process.stderr is not None:
                self._process.stderr.close()
            shutil.rmtree(self._profile, ignore_errors=True)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """One command; its result. The events that arrive meanwhile are kept in ``events``."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return dict(reply.get("result") or {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str, session: str) -> dict[str, Any]:
        """The first event ``method`` of ``session`` (already received, or the next ones)."""
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            reply = self._receive()
            if "method" in reply:
                self.events.append(reply)

    def _receive(self) -> dict[str, Any]:
        deadline = time.monotonic() + REPLY_TIMEOUT_SECONDS
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(left, 0))
            if not ready:
                raise BrowserError(f"Chromium did not answer within {REPLY_TIMEOUT_SECONDS:.0f} s")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium exited: {self._stderr_tail()}")
            self._buffer += chunk
        record, _, self._buffer = self._buffer.partition(b"\0")
        return dict(json.loads(record))

    def _stderr_tail(self) -> str:
        self._process.wait(timeout=10)
        assert self._process.stderr is not None
        return self._process.stderr.read().decode(errors="replace")[-2000:]

    def render(self, html_file: Path) -> Rendering:
        """Load ``html_file`` in a new tab: its script errors, the timeline's layout and a screenshot."""
        session, target = self.open_page()
        try:
            self.send("Page.navigate", {"url": html_file.resolve().as_uri()}, session=session)
            self.wait_for("Page.loadEventFired", session)
            measured = self.send("Runtime.evaluate", {"expression": _MEASURE, "returnByValue": True}, session=session)
            if "exceptionDetails" in measured:
                raise BrowserError(f"the measuring script failed: {measured['exceptionDetails']}")
            layout = dict(measured["result"].get("value") or {})
            size = layout.get("document") or {"width": PAGE_WIDTH, "height": 800}
            shot = self.send("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}},
                session=session)
            # A last round trip: errors logged while measuring arrive before its reply.
            self.send("Runtime.evaluate", {"expression": "0"}, session=session)
            return Rendering(errors=_error_lines(self.events, session), layout=layout,
                             png=base64.b64decode(shot["data"]))
        finally:
            with contextlib.suppress(BrowserError, OSError):  # a browser that died has said why already
                self.send("Target.closeTarget", {"targetId": target})
            self.events = [e for e in self.events if e.get("sessionId") != session]

    def open_page(self, width: int = PAGE_WIDTH, height: int = 800) -> tuple[str, str]:
        """A new tab with the runtime, the log and page events on: its session and target ids."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = str(self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"])
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        return session, str(target)


def _error_lines(events: list[dict[str, Any]], session: str) -> list[str]:
    """Every script error the page reported: uncaught exceptions, console.error/assert, and the browser's own
    log entries of level error (a resource that failed to load, a blocked script, a CSP violation...)."""
    lines = []
    for event in events:
        if event.get("sessionId") != session:
            continue
        params = event.get("params") or {}
        method = event.get("method")
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails") or {}
            described = (details.get("exception") or {}).get("description") or details.get("text")
            lines.append(f"uncaught exception: {described}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args") or [])
            lines.append(f"console.{params.get('type')}: {text}")
        elif method == "Log.entryAdded" and (params.get("entry") or {}).get("level") == "error":
            entry = params["entry"]
            lines.append(f"log {entry.get('source')}: {entry.get('text')} {entry.get('url') or ''}".rstrip())
    return lines


def render(html_file: Path, executable: str | None = None) -> Rendering:
    """Load ``html_file`` in a headless Chromium of its own (see ``Chromium.render``)."""
    chosen = executable or chromium_path()
    if chosen is None:
        raise BrowserError("no Chromium: install Debian's chromium package (make browser)")
    with Chromium(chosen) as browser:
        return browser.render(html_file)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tests.browser.chromium REPORT.html OUT.png", file=sys.stderr)
        return 2
    rendering = render(Path(argv[0]))
    Path(argv[1]).write_bytes(rendering.png)
    for line in rendering.errors:
        print(f"page error: {line}", file=sys.stderr)
    return 1 if rendering.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
