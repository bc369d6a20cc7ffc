"""Test helpers for the web viewer: the server in a subprocess, Debian's headless Chromium, page pictures.

- ``ViewerServer``: ``python -m PositionRegressionADWeb`` on 127.0.0.1 with ``--port 0`` (the
  system picks a free port), ready once it prints its ready line; stopped on exit.
- ``headless_chromium``: Selenium driving ``/usr/bin/chromium`` through ``/usr/bin/chromedriver``
  with ``--headless --no-sandbox --disable-gpu --disable-background-networking`` and a fresh
  ``--user-data-dir``; downloads go to a given folder. No tool ever downloads a browser of its own.
- ``ViewerPage``: what a user does and reads on the page, waiting on the page's state (never on
  fixed sleeps).
- ``hot_pixels`` / ``head_box`` / ``changed_pixels``: what a picture of a slice view shows.
- ``readme_screenshots``: the README's pictures of the page, with the bundled model and sample:
  ``python -m PositionRegressionADWeb.testing Resources/Screenshots``.

Nothing here is used by the product itself.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from PositionRegressionADWeb.__main__ import READY_LINE

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MODULE_DIR = Path(__file__).resolve().parents[1]
# Quad view order of the page (``app.VIEW_ORDER``): axial, 3D, sagittal, coronal.
SLICE_VIEW_INDICES = (0, 2, 3)


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or ``None`` when they can."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        return "Debian's chromium and chromium-driver are not installed (run scripts/install-browser)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed in this Python"
    return None


class ViewerServer:
    """The viewer started as a user starts it, in its own process; use as a context manager.

    Usage::

        with ViewerServer(["--data-dir", str(data), "--model", str(bundle)], log=tmp / "server.log") as server:
            driver.get(server.url)
    """

    def __init__(self, arguments: Sequence[str], log: Path, ready_seconds: float = 120.0) -> None:
        self.arguments = list(arguments)
        self.log = Path(log)
        self.ready_seconds = ready_seconds
        self.url = ""
        self.process: subprocess.Popen | None = None
        self._lines: list[str] = []
        self._ready = threading.Event()

    def __enter__(self) -> "ViewerServer":
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(MODULE_DIR), *filter(None, [env.get("PYTHONPATH")])])
        self._log_handle = self.log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "PositionRegressionADWeb", "--host", "127.0.0.1", "--port", "0", *self.arguments],
            stdout=subprocess.PIPE, stderr=self._log_handle, text=True, env=env)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        if not self._ready.wait(self.ready_seconds) or not self.url:
            self.stop()
            raise RuntimeError(f"the viewer did not start within {self.ready_seconds:.0f} s; its output:\n"
                               + "".join(self._lines) + self.log.read_text()[-3000:])
        return self

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            self._lines.append(line)
            if line.startswith(READY_LINE):
                self.url = line.split()[-1]
                self._ready.set()
        self._ready.set()  # the server ended: stop waiting

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def answers_http(self) -> bool:
        """True when the page itself can still be fetched."""
        with urllib.request.urlopen(self.url, timeout=10) as response:
            return response.status == 200 and b"<html" in response.read().lower()

    def stop(self) -> int | None:
        """Ask the server to stop (SIGTERM, as a service manager does), kill it if it does not."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_handle.close()
        return self.process.returncode

    def __exit__(self, *exc_info) -> None:
        self.stop()


@contextlib.contextmanager
def headless_chromium(profile_dir: Path, download_dir: Path, size: tuple[int, int] = (1600, 1000)) -> Iterator:
    """A Selenium driver of Debian's headless Chromium with a fresh profile; quits on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     f"--user-data-dir={profile_dir}", f"--window-size={size[0]},{size[1]}"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
        yield driver
    finally:
        driver.quit()


def picture(png: bytes) -> np.ndarray:
    """RGB pixels (rows, columns, 3) of a PNG screenshot."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def hot_pixels(rgb: np.ndarray) -> np.ndarray:
    """Where a picture shows the error overlay's hot colours (red, orange, yellow): never on the grey scan."""
    red, green, blue = (rgb[..., channel].astype(int) for channel in range(3))
    return (red > 150) & (red - blue > 80) & (green < red + 20)


def changed_pixels(before: np.ndarray, after: np.ndarray, tolerance: int = 40) -> np.ndarray:
    """Where two pictures of a view differ by more than image-coding noise in some colour."""
    return np.abs(before.astype(int) - after.astype(int)).max(axis=-1) > tolerance


def head_box(rgb: np.ndarray, margin_px: int = 5) -> tuple[slice, slice] | None:
    """Bounding box (rows, columns) of the grey scan's bright pixels, or ``None`` when there are none."""
    red, green, blue = (rgb[..., channel].astype(int) for channel in range(3))
    grey = (np.abs(red - blue) < 25) & (np.abs(red - green) < 25) & (red > 60)
    rows, columns = np.nonzero(grey)
    if rows.size < 500:
        return None
    return (slice(max(rows.min() - margin_px, 0), rows.max() + margin_px + 1),
            slice(max(columns.min() - margin_px, 0), columns.max() + margin_px + 1))


def hot_pixels_in_head(rgb: np.ndarray) -> int:
    """How many hot pixels lie inside the head's bounding box (0 when no head is visible)."""
    box = head_box(rgb)
    return 0 if box is None else int(hot_pixels(rgb)[box].sum())


class ViewerPage:
    """The viewer's page in a browser, read and used through the element ids the page sets."""

    def __init__(self, driver, url: str, timeout_seconds: float = 60.0) -> None:
        from selenium.webdriver.common.by import By

        self.driver = driver
        self.by = By
        self.timeout_seconds = timeout_seconds
        driver.get(url)
        self.wait_until(lambda: self.driver.find_elements(By.ID, "load-sample"), "the page to appear")

    def wait_until(self, condition: Callable[[], object], what: str, timeout_seconds: float | None = None) -> object:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        timeout = timeout_seconds or self.timeout_seconds
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.2,
                                 ignored_exceptions=(StaleElementReferenceException,)).until(lambda _: condition())
        except Exception as error:
            raise AssertionError(f"waited {timeout:.0f} s for {what}; the page says: {self.status()!r}") from error

    def element(self, element_id: str):
        return self.driver.find_element(self.by.ID, element_id)

    def click(self, element_id: str) -> None:
        self.wait_until(lambda: self.element(element_id).is_enabled(), f"{element_id} to be enabled")
        self.element(element_id).click()

    def status(self) -> str:
        found = self.driver.find_elements(self.by.ID, "status-message")
        return found[0].text.strip() if found and found[0].is_displayed() else ""

    def wait_for_status(self, *words: str, timeout_seconds: float | None = None) -> str:
        """The status message once it holds one of ``words`` (case-insensitive)."""
        def holds() -> str | None:
            text = self.status()
            return text if any(word.lower() in text.lower() for word in words) else None

        return self.wait_until(holds, f"a status with one of {words}", timeout_seconds)

    def progress_message(self) -> str:
        found = self.driver.find_elements(self.by.ID, "progress-message")
        return found[0].text.strip() if found and found[0].is_displayed() else ""

    def running(self) -> bool:
        return self.element("cancel-button").is_enabled()

    def region_scores(self) -> dict[str, float]:
        """{region key: score in mm} as the scores table shows them."""
        scores = {}
        for row in self.driver.find_elements(self.by.CSS_SELECTOR, "#scores-table tr[data-region]"):
            region = row.get_attribute("data-region")
            if region:
                text = row.find_element(self.by.CSS_SELECTOR, ".score-value").text
                scores[region] = float(text.split()[0])
        return scores

    def view_pictures(self) -> list[np.ndarray]:
        """RGB pictures of the quad view's four views, in the page's order (``SLICE_VIEW_INDICES``)."""
        views = self.driver.find_elements(self.by.CSS_SELECTOR, ".layout-grid-item")
        return [picture(view.screenshot_as_png) for view in views]

    def slice_pictures(self) -> list[np.ndarray]:
        pictures = self.view_pictures()
        return [pictures[index] for index in SLICE_VIEW_INDICES]

    def wait_for_slices(self, condition: Callable[[list[np.ndarray]], bool], what: str) -> list[np.ndarray]:
        """The slice views' pictures once ``condition`` holds for them (the views stream asynchronously)."""
        def pictures_if_ready() -> list[np.ndarray] | None:
            pictures = self.slice_pictures()
            return pictures if condition(pictures) else None

        return self.wait_until(pictures_if_ready, what)

    def settled_slices(self) -> list[np.ndarray]:
        """The slice views' pictures once two captures in a row are the same (no render in flight)."""
        previous = [self.slice_pictures()]

        def same_as_before() -> list[np.ndarray] | None:
            pictures = self.slice_pictures()
            settled = all(not changed_pixels(a, b).any() for a, b in zip(previous[0], pictures))
            previous[0] = pictures
            return pictures if settled else None

        return self.wait_until(same_as_before, "the slice views to settle")

    def state(self, name: str) -> object:
        """A value of the page's state, as the page holds it."""
        return self.driver.execute_script("return window.trame.state.get(arguments[0])", name)

    def slider_to_end(self, element_id: str, end: str) -> None:
        """Move a slider to its "min" or "max" with the keyboard (Home / End on its thumb), as a user can."""
        from selenium.webdriver.common.keys import Keys

        slider = self.driver.execute_script("return arguments[0].closest('.v-slider')", self.element(element_id))
        thumb = slider.find_element(self.by.CSS_SELECTOR, ".v-slider-thumb")
        self.wait_until(lambda: thumb.get_attribute("aria-readonly") == "false" and "v-input--disabled"
                        not in slider.get_attribute("class"), f"{element_id} to be enabled")
        thumb.send_keys({"min": Keys.HOME, "max": Keys.END}[end])

    def upload(self, path: Path) -> None:
        self.driver.find_element(self.by.CSS_SELECTOR, "#upload-input, input[type=file]").send_keys(str(path))

    def trigger(self, name: str, arguments: list) -> object:
        """Call a server trigger as a hand-made client would (the page's code is bypassed)."""
        return self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "window.trame.trigger(arguments[0], arguments[1]).then(done, (error) => done(String(error)));",
            name, arguments)

    def save_screenshot(self, path: Path) -> Path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return Path(path)


def wait_for_file(folder: Path, pattern: str, timeout_seconds: float = 60.0) -> Path:
    """A finished download in ``folder`` matching ``pattern`` (Chromium's .crdownload parts ignored)."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        found = [path for path in Path(folder).glob(pattern) if not path.name.endswith(".crdownload")]
        if found and found[0].stat().st_size > 0:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no download matching {pattern} arrived in {folder} within {timeout_seconds:.0f} s")


def readme_screenshots(out_dir: Path, work_dir: Path) -> list[Path]:
    """The README's pictures of the page: the bundled model on the bundled sample, during and after a run.

    ``web-progress.png`` is taken while the detector reports progress, ``web-results.png`` once the
    results are shown. Needs the bundled model and sample, and the browser (``browser_missing``).
    """
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    (work_dir / "data").mkdir(parents=True, exist_ok=True)
    with ViewerServer(["--data-dir", str(work_dir / "data")], log=work_dir / "server.log") as server, \
            headless_chromium(work_dir / "profile", work_dir / "downloads") as driver:
        page = ViewerPage(driver, server.url, timeout_seconds=600)
        page.click("load-sample")
        page.wait_for_status("Loaded")
        page.click("detect-button")
        page.wait_until(lambda: (page.state("progress") or 0) >= 30, "the detector to compute the error map")
        pictures = [page.save_screenshot(out_dir / "web-progress.png")]
        page.wait_for_status("Done", "failed")
        page.wait_for_slices(lambda shown: any(hot_pixels_in_head(p) > 0 for p in shown), "the overlay")
        page.settled_slices()
        pictures.append(page.save_screenshot(out_dir / "web-results.png"))
    return pictures


if __name__ == "__main__":
    # python -m PositionRegressionADWeb.testing OUT_DIR: retake the README's pictures of the page.
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ppr-web-shots-") as scratch:
        for written in readme_screenshots(Path(sys.argv[1]), Path(scratch)):
            print(written)


class WslinkClient:
    """A hand-made websocket client of the viewer, speaking wslink as trame's page does (aiohttp, msgpack).

    Usage (in a coroutine)::

        async with WslinkClient(server.url) as client:
            await client.hello()  # the secret the page gets from POST /paraview/
            reply = await client.call("trame.trigger", ["ppr_load_sample", [], {}])
    """

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.messages: list[dict] = []
        self._next_id = 0

    async def __aenter__(self) -> "WslinkClient":
        import aiohttp
        from wslink.chunking import UnChunker

        self.session = aiohttp.ClientSession()
        async with self.session.post(self.url + "/paraview/", data="{}") as response:
            self.settings = await response.json(content_type=None) if response.status == 200 else {}
        self.ws = await self.session.ws_connect(self.url.replace("http", "ws", 1) + "/ws", max_msg_size=0)
        self._unchunker = UnChunker()
        self._unchunker.set_max_message_size(1 << 31)
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.ws.close()
        await self.session.close()

    async def send(self, message: dict) -> None:
        import msgpack
        from wslink.chunking import generate_chunks

        for chunk in generate_chunks(msgpack.packb(message), 4_000_000):
            await self.ws.send_bytes(chunk)

    async def call(self, method: str, args: list | None = None, rpc_kind: str = "rpc",
                   timeout_seconds: float = 60.0) -> dict:
        """Send one request; its reply (``result`` or ``error``). Publications seen meanwhile go to ``messages``."""
        import asyncio

        self._next_id += 1
        rpcid = f"{rpc_kind}:c0:{self._next_id}"
        await self.send({"wslink": "1.0", "id": rpcid, "method": method, "args": args or [], "kwargs": {}})
        async with asyncio.timeout(timeout_seconds):
            while True:
                message = await self.receive()
                if message.get("id") == rpcid:
                    return message
                self.messages.append(message)

    async def receive(self) -> dict:
        import aiohttp

        while True:
            frame = await self.ws.receive()
            if frame.type != aiohttp.WSMsgType.BINARY:
                raise ConnectionError(f"the server closed the connection ({frame.type.name}, {self.ws.close_code})")
            message = self._unchunker.process_chunk(frame.data)
            if message is not None:
                return message

    async def hello(self, secret: str | None = None) -> dict:
        return await self.call("wslink.hello", [{"secret": secret or self.settings.get("secret")}], rpc_kind="system")

    def published_state(self, key: str) -> list:
        """Values of ``key`` in the state the server published to this client so far."""
        return [message["result"][key] for message in self.messages
                if isinstance(message.get("result"), dict) and key in message["result"]]
