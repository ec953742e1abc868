"""Open local HTML pages in headless Chromium and report what a reader's browser sees.

Talks the DevTools protocol over ``--remote-debugging-pipe`` (JSON messages ended by NUL on
file descriptors 3 and 4), so nothing beyond the standard library and a ``chromium`` binary is
needed. For every page: each image (source, whether it decoded, its natural width), each link's
resolved address, and every console error, uncaught exception or failed load.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PageReport", "chromium", "inspect_pages"]

_PROBE = """(async () => {
  const images = await Promise.all(Array.from(document.images).map(async (img) => {
    let decoded = true;
    try { await img.decode(); } catch (e) { decoded = false; }
    return {src: img.src, decoded: decoded && img.naturalWidth > 0, width: img.naturalWidth};
  }));
  const links = Array.from(document.querySelectorAll('a[href]')).map((a) => a.href);
  return JSON.stringify({images, links, title: document.title});
})()"""


@dataclass
class PageReport:
    """What the browser saw on one page."""

    title: str = ""
    images: list[dict[str, Any]] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def chromium() -> str | None:
    """The Chromium executable, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _Browser:
    def __init__(self, executable: str, profile: str) -> None:
        self._to_browser_r, self._to_browser_w = os.pipe()
        self._from_browser_r, self._from_browser_w = os.pipe()
        command = (
            f'exec "{executable}" --headless --no-sandbox --disable-gpu '
            "--no-first-run --no-default-browser-check --disable-extensions "
            f'--user-data-dir="{profile}" --remote-debugging-pipe '
            f"3<&{self._to_browser_r} 4>&{self._from_browser_w}"
        )
        self.process = subprocess.Popen(
            ["bash", "-c", command],
            pass_fds=(self._to_browser_r, self._from_browser_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(self._to_browser_r)
        os.close(self._from_browser_w)
        self._buffer = b""
        self._next = 0
        self.events: list[dict[str, Any]] = []

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read(deadline))

    def _read(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser_r], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_browser_r, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser_w)
        os.close(self._from_browser_r)


def _errors(events: list[dict[str, Any]]) -> list[str]:
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append(
                "console: "
                + " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params.get("args", [])
                )
            )
        elif method == "Runtime.exceptionThrown":
            found.append("exception: " + str(params.get("exceptionDetails", {}).get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            found.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.loadingFailed":
            found.append(f"failed load: {params.get('errorText')}")
    return found


def inspect_pages(pages: list[Path], timeout: float = 60.0) -> dict[Path, PageReport]:
    """Open each page (a local file) in one headless Chromium tab and report.

    Raises
    ------
    RuntimeError
        If no Chromium executable is found.
    """
    executable = chromium()
    if executable is None:
        raise RuntimeError("no chromium executable found (apt-get install chromium)")
    reports: dict[Path, PageReport] = {}
    with tempfile.TemporaryDirectory() as profile:
        browser = _Browser(executable, profile)
        try:
            target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Page", "Runtime", "Log", "Network"):
                browser.send(f"{domain}.enable", session=session)
            for page in pages:
                browser.events.clear()
                browser.send(
                    "Page.navigate", {"url": Path(page).resolve().as_uri()}, session=session
                )
                browser.wait_for("Page.loadEventFired", timeout)
                result = browser.send(
                    "Runtime.evaluate",
                    {"expression": _PROBE, "awaitPromise": True, "returnByValue": True},
                    session=session,
                    timeout=timeout,
                )
                seen = json.loads(result["result"]["value"])
                reports[Path(page)] = PageReport(
                    seen["title"], seen["images"], seen["links"], _errors(browser.events)
                )
        finally:
            browser.close()
    return reports
