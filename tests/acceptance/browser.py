"""Headless Chromium driven over the Chrome DevTools protocol, for the test that looks at the Prefect UI as a person
does: load a page, wait until the single-page app has drawn what the test needs, measure the rendered DOM, save a
screenshot. No browser package downloads browsers here, so this drives the system's `chromium` (Debian's package)
through its remote-debugging websocket (`websockets`, installed with Prefect)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

INSTALL_HINT = "headless Chromium not found: install it with `apt-get install chromium` (or `make ui-shots`)"


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """One headless Chromium with one page, `width` px wide (its own profile directory, removed on close)."""

    def __init__(self, width: int = 1600, height: int = 1200, timeout: float = 60.0):
        from websockets.sync.client import connect

        exe = chromium_path()
        if exe is None:
            raise RuntimeError(INSTALL_HINT)
        self.width, self.height, self._id = width, height, 0
        self.profile = tempfile.mkdtemp(prefix="sage-chromium-")
        args = [exe, "--headless=new", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}", "--no-first-run", "--no-default-browser-check", "--disable-gpu",
                "--disable-dev-shm-usage", "--hide-scrollbars", f"--window-size={width},{height}", "about:blank"]
        if os.geteuid() == 0:  # Chromium's sandbox refuses to run as root
            args.insert(1, "--no-sandbox")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port = self._devtools_port(timeout)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                page = next(t for t in json.load(r) if t["type"] == "page")
            self.ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout)
            self.call("Page.enable")
            self.resize(height)
        except BaseException:
            self.close()
            raise

    def _devtools_port(self, timeout: float) -> int:
        marker = Path(self.profile) / "DevToolsActivePort"
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with code {self.proc.returncode} before it listened")
            if marker.is_file() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            time.sleep(0.1)
        raise TimeoutError(f"chromium did not open its DevTools port within {timeout:.0f} s")

    def call(self, method: str, timeout: float = 60.0, **params: Any) -> dict[str, Any]:
        """One DevTools command; the events that arrive before its answer are dropped."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        end = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, end - time.monotonic())))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def resize(self, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=height, deviceScaleFactor=1,
                  mobile=False)

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}...: {r['exceptionDetails'].get('exception', {}).get('description')}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, what: str = "") -> Any:
        """Poll `expression` until it is truthy; its value."""
        end = time.monotonic() + timeout
        while True:
            try:
                value = self.eval(expression)
            except RuntimeError:  # the page is still navigating
                value = None
            if value:
                return value
            if time.monotonic() > end:
                raise TimeoutError(f"the page never showed {what or expression} within {timeout:.0f} s "
                                   f"(at {self.eval('location.href')})")
            time.sleep(0.25)

    def screenshot(self, path: Path, full: bool = True, max_height: int = 8000) -> Path:
        """A PNG of the page, `width` px wide; `full`: as tall as the tallest scrolling content (the UI scrolls an
        inner element, not the document), up to `max_height`."""
        height = self.height
        if full:
            height = min(max_height, max(self.height, int(self.eval(
                "Math.max(...[...document.querySelectorAll('*')].map(e => e.scrollHeight))"))))
            self.resize(height)
            time.sleep(2.0)  # the layout, and the flow run page's timeline canvas, redraw at the new height
        try:
            data = self.call("Page.captureScreenshot", format="png")["data"]
        finally:
            if full:
                self.resize(self.height)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
