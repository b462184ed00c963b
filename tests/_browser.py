"""A real browser for the report's tests: headless Chromium driven over the DevTools protocol.

:func:`chromium_binary` finds Debian's ``chromium`` (or ``chromium-browser``); where it is absent and the tests
run as root with apt, it installs the package once. :class:`Browser` starts it with remote debugging on
127.0.0.1 only, opens pages from disk and reports what a person would notice: console errors, uncaught
exceptions, failed loads, images that did not load, requests that left the disk; and it takes full-page
screenshots.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from typing import Any, Dict, List, Optional

CANDIDATES = ("chromium", "chromium-browser")
APT_PACKAGE = "chromium"
_install_attempt: Dict[str, str] = {}  # one try per test session: "ok" or the reason it failed


def chromium_binary() -> tuple:
    """(path, "") of a Chromium, installing Debian's package when possible; ("", why not) otherwise."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found, ""
    if "result" not in _install_attempt:
        _install_attempt["result"] = _apt_install()
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found, ""
    return "", _install_attempt["result"]


def _apt_install() -> str:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "no chromium on PATH, and the tests do not run as root to install Debian's chromium package"
    if not shutil.which("apt-get"):
        return "no chromium on PATH, and no apt-get to install it"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", APT_PACKAGE]):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"`{' '.join(command)}` failed: {e}"
        if done.returncode != 0:
            return f"`{' '.join(command)}` failed ({done.returncode}): {done.stderr.strip()[-500:]}"
    return "ok"


@dataclasses.dataclass
class PageCheck:
    url: str
    console_errors: List[str]
    exceptions: List[str]
    failed_loads: List[str]
    broken_images: List[Dict[str, Any]]
    images: List[Dict[str, Any]]
    outside_requests: List[str]  # any request not to file: or data:
    links: List[str]
    title: str


class Browser:
    """One headless Chromium process; use as a context manager."""

    def __init__(self, binary: str, width: int = 1280, height: int = 900):
        self._binary = binary
        self._width, self._height = width, height
        self._profile = tempfile.mkdtemp(prefix="report-chromium-")
        self._process: Optional[subprocess.Popen] = None
        self._socket = None
        self._next_id = 0
        self._events: List[Dict[str, Any]] = []

    def __enter__(self) -> "Browser":
        import websocket

        self._process = subprocess.Popen(
            [self._binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--metrics-recording-only", "--mute-audio",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={self._profile}", f"--window-size={self._width},{self._height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port = self._wait_for_port()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
            targets = json.loads(answer.read())
        page = next(t for t in targets if t.get("type") == "page")
        self._socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60,
                                                   suppress_origin=True)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._socket is not None:
                self._socket.close()
        finally:
            if self._process is not None:
                self._process.terminate()
                try:
                    self._process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(timeout=20)
            shutil.rmtree(self._profile, ignore_errors=True)

    def _wait_for_port(self, timeout: float = 60.0) -> int:
        marker = os.path.join(self._profile, "DevToolsActivePort")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"chromium exited ({self._process.returncode}): "
                                   f"{self._process.stderr.read().decode(errors='replace')[-2000:]}")
            if os.path.isfile(marker):
                with open(marker, encoding="utf-8") as f:
                    first = f.readline().strip()
                if first.isdigit():
                    return int(first)
            time.sleep(0.1)
        raise RuntimeError(f"chromium did not open its DevTools port within {timeout:.0f} s")

    def call(self, method: str, **params: Any) -> Dict[str, Any]:
        """Sends one DevTools command and returns its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        call_id = self._next_id
        self._socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self._events.append(message)

    def _wait_for_event(self, method: str, timeout: float = 60.0) -> None:
        if any(e["method"] == method for e in self._events):
            return
        deadline = time.monotonic() + timeout
        self._socket.settimeout(timeout)
        while time.monotonic() < deadline:
            message = json.loads(self._socket.recv())
            if "method" in message:
                self._events.append(message)
                if message["method"] == method:
                    return
        raise TimeoutError(f"no {method} within {timeout:.0f} s")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, path: str) -> PageCheck:
        """Opens a file, waits for it to load (images included) and reports what went wrong on it."""
        url = "file://" + os.path.abspath(path)
        self._events = []
        self.call("Page.navigate", url=url)
        self._wait_for_event("Page.loadEventFired")
        # Images are decoded after the load event in some cases: wait until every one is complete.
        self.evaluate("Promise.all(Array.from(document.images).map(i => i.complete ? null : "
                      "new Promise(r => { i.onload = i.onerror = r; })))")
        self.call("Runtime.evaluate", expression="1")  # drain events that arrived meanwhile
        console_errors, exceptions, failed, outside = [], [], [], []
        for event in self._events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in
                                               params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                exceptions.append(json.dumps(params.get("exceptionDetails", {}))[:500])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                console_errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")
            elif method == "Network.loadingFailed":
                failed.append(f"{params.get('errorText')} ({params.get('requestId')})")
            elif method == "Network.requestWillBeSent":
                request_url = params.get("request", {}).get("url", "")
                if not request_url.startswith(("file:", "data:")):
                    outside.append(request_url)
        images = self.evaluate("Array.from(document.images).map(i => ({src: i.getAttribute('src'), "
                               "complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}))")
        broken = [i for i in images if not i["complete"] or not i["width"] or not i["height"]]
        links = self.evaluate("Array.from(document.links).map(a => a.href)")
        title = self.evaluate("document.title")
        return PageCheck(url, console_errors, exceptions, failed, broken, images, outside, links, title)

    def screenshot(self, path: str) -> str:
        """A full-page PNG of the current page."""
        height = int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)"))
        self.call("Emulation.setDeviceMetricsOverride", width=self._width, height=min(max(height, 200), 16000),
                  deviceScaleFactor=1, mobile=False)
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        self.call("Emulation.clearDeviceMetricsOverride")
        return path
