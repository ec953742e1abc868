"""Open a local HTML page in a real headless Chromium and report what a visitor would see.

:func:`check_page` starts the system's Chromium (Debian package ``chromium``; ``.ci/run``
installs it when missing) with ``--remote-debugging-pipe`` and drives it over the DevTools
protocol with the standard library only: the protocol's JSON messages, each ended by a NUL
byte, go to Chromium's file descriptor 3 and come back on its descriptor 4. No network is
used; the page is loaded from a ``file://`` URL.

What is reported (:class:`PageReport`):

* every ``<img>`` of the page, with whether the browser decoded it (``HTMLImageElement.decode()``
  resolved and the natural size is not zero);
* broken links: an ``<a href>``, ``<img src>``, ``<link href>``, ``<script src>`` or
  ``<source src>`` pointing at a local file that does not exist, or a ``#fragment`` with no
  element of that id on its page (web links are listed apart, not fetched);
* console errors: ``console.error`` calls, uncaught exceptions and the browser's own
  error-level log entries (a resource that failed to load, for example);
* a PNG screenshot of the whole page, written to the path given.

Usage (see ``tests/test_cli.py::test_demo_page_in_a_real_browser``)::

    report = check_page(out / "index.html", tmp_path / "demo.png")
    assert report.images and all(image.decoded for image in report.images)
    assert report.broken_links == [] and report.console_errors == []
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urldefrag, urlparse

__all__ = ["BrowserError", "ImageStatus", "PageReport", "check_page", "find_chromium"]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Runs in the page once it has loaded: the images (each decoded or not) and every link.
_INSPECT = """
(async () => {
  const images = Array.from(document.images);
  const decoded = await Promise.all(images.map(img => img.decode().then(
      () => img.naturalWidth > 0 && img.naturalHeight > 0, () => false)));
  const links = [];
  for (const [selector, attr] of [["a[href]", "href"], ["img[src]", "src"],
        ["link[href]", "href"], ["script[src]", "src"], ["source[src]", "src"]]) {
    for (const node of document.querySelectorAll(selector)) {
      links.push(node[attr]);
    }
  }
  const ids = Array.from(document.querySelectorAll("[id]")).map(node => node.id);
  const size = [document.documentElement.scrollWidth, document.documentElement.scrollHeight];
  return {images: images.map((img, k) => ({src: img.currentSrc || img.src,
                                           decoded: decoded[k]})),
          links: links, ids: ids, url: document.URL, size: size};
})()
"""


class BrowserError(RuntimeError):
    """Chromium is missing, failed to start, or did not answer in time."""


@dataclass(frozen=True)
class ImageStatus:
    """One ``<img>`` of the page: its resolved URL and whether the browser decoded it."""

    src: str
    decoded: bool


@dataclass
class PageReport:
    """What :func:`check_page` saw on one page."""

    url: str
    images: list[ImageStatus]
    broken_links: list[str]
    console_errors: list[str]
    screenshot: Path
    external_links: list[str] = field(default_factory=list)


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) executable on ``PATH``, or None."""
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class _Pipe:
    """The DevTools protocol over Chromium's ``--remote-debugging-pipe`` descriptors."""

    def __init__(self, executable: str, profile: str, timeout: float) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        self.timeout = timeout

        def wire() -> None:  # in the child: the pipe ends become descriptors 3 and 4
            read_end, write_end = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        command = [
            executable,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--mute-audio",
            "--allow-file-access-from-files",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.process = subprocess.Popen(  # noqa: S603 - a fixed command line
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            preexec_fn=wire,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        """Send one command and return its ``result`` (events meanwhile go to ``events``)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict[str, Any]:
        """The first event named ``method`` (already received or still to come)."""
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._receive()
            self.events.append(event)
            if event.get("method") == method:
                return event

    def _receive(self) -> dict[str, Any]:
        import select

        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_chrome], [], [], max(left, 0))
            if not ready:
                raise BrowserError(f"Chromium did not answer within {self.timeout:.0f} s")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise BrowserError("Chromium closed the DevTools pipe (did it crash?)")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def close(self) -> None:
        try:
            os.close(self._to_chrome)
            os.close(self._from_chrome)
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _console_errors(events: list[dict[str, Any]]) -> list[str]:
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = params.get("args", [])
            errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            errors.append(f"uncaught: {text}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"{entry.get('text', '')} {entry.get('url', '')}".strip())
    return errors


def _broken_links(page: dict[str, Any]) -> tuple[list[str], list[str]]:
    broken, external = [], []
    page_url = urldefrag(page["url"]).url
    for link in dict.fromkeys(page["links"]):
        target, fragment = urldefrag(link)
        parsed = urlparse(target)
        if parsed.scheme in ("http", "https"):
            external.append(link)
        elif parsed.scheme == "file":
            if not Path(unquote(parsed.path)).exists():
                broken.append(link)
            elif fragment and target == page_url and fragment not in page["ids"]:
                broken.append(link)
        elif parsed.scheme not in ("mailto", "data", "javascript", "about", "blob"):
            broken.append(link)  # a scheme a local page cannot reach
    return broken, external


def check_page(
    html: str | os.PathLike[str],
    screenshot: str | os.PathLike[str],
    width: int = 1200,
    timeout: float = 60.0,
) -> PageReport:
    """Load a local HTML file in headless Chromium; report images, links and console errors.

    Parameters
    ----------
    html : path
        The page (a local ``.html`` file).
    screenshot : path
        Where the full-page PNG screenshot is written.
    width : int
        Viewport width in CSS pixels (the height follows the page).
    timeout : float
        Seconds to wait for any one answer of the browser.

    Returns
    -------
    PageReport

    Raises
    ------
    FileNotFoundError
        ``html`` does not exist.
    BrowserError
        No Chromium on ``PATH``, or the browser failed.
    """
    page_path = Path(html).resolve()
    if not page_path.is_file():
        raise FileNotFoundError(f"no such page: {page_path}")
    executable = find_chromium()
    if executable is None:
        raise BrowserError("no Chromium on PATH: install the 'chromium' package (.ci/run does)")
    with tempfile.TemporaryDirectory(prefix="dnnbrain-captum-chromium-") as profile:
        pipe = _Pipe(executable, profile, timeout)
        try:
            return _inspect(pipe, page_path, Path(screenshot), width)
        finally:
            pipe.close()


def _inspect(pipe: _Pipe, page_path: Path, screenshot: Path, width: int) -> PageReport:
    target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log"):
        pipe.send(f"{domain}.enable", session=session)
    pipe.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        session=session,
    )
    pipe.events.clear()
    pipe.send("Page.navigate", {"url": page_path.as_uri()}, session=session)
    pipe.wait_for("Page.loadEventFired")
    answer = pipe.send(
        "Runtime.evaluate",
        {"expression": _INSPECT, "awaitPromise": True, "returnByValue": True},
        session=session,
    )
    if "exceptionDetails" in answer:
        raise BrowserError(f"the page inspection script failed: {answer['exceptionDetails']}")
    page = answer["result"]["value"]
    height = max(int(page["size"][1]), 1)
    pipe.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": min(height, 16384), "deviceScaleFactor": 1, "mobile": False},
        session=session,
    )
    shot = pipe.send(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session
    )
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    broken, external = _broken_links(page)
    return PageReport(
        url=page["url"],
        images=[ImageStatus(src=i["src"], decoded=bool(i["decoded"])) for i in page["images"]],
        broken_links=broken,
        console_errors=_console_errors(pipe.events),
        screenshot=screenshot,
        external_links=external,
    )
