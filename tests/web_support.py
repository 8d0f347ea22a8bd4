"""Drive the browser page ``examples/web`` (onnxruntime-web) from Python: serve it beside an adaptable folder,
open it in headless Chromium (python Playwright), and call its test API ``window.metactl``.

Used by ``tests/test_web_page.py`` and by benchmarks (:func:`page_adapt_ms`)::

    from tests.web_support import page_adapt_ms
    timing = page_adapt_ms(Path("my-adaptable"), labels=[0, 0, 1, 1], pixels=support_pixels)
    print(timing.embed_ms, timing.adapt_ms)

Needs ``npm ci --prefix examples/web`` (onnxruntime-web and tokenizers.js in examples/web/node_modules),
python Playwright, and a Chromium (``/usr/bin/chromium``, or ``METACTL_CHROMIUM``).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

WEB = Path(__file__).resolve().parents[1] / "examples" / "web"
PAGE_FILES = ("index.html", "app.js")
CHROMIUM = Path(os.environ.get("METACTL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
NEEDED_MODULES = ("onnxruntime-web/dist/ort.wasm.min.mjs", "@huggingface/tokenizers/dist/tokenizers.min.mjs")
STEP_TIMEOUT_MS = 30_000  # anything else the tests wait for
LOAD_TIMEOUT_MS = 120_000  # the model's loading (the text model's two 90 MB graphs)


class PageError(RuntimeError):
    """The page failed: its message, console errors and uncaught exceptions."""


def node_modules_missing(web: Path = WEB) -> list[str]:
    """The page's JavaScript files that ``npm ci`` has not installed yet."""
    return [m for m in NEEDED_MODULES if not (web / "node_modules" / m).is_file()]


def ensure_node_modules(web: Path = WEB) -> None:
    """Install the page's dependencies (``npm ci``) when they are missing; a RuntimeError saying what to run if it cannot."""
    if not node_modules_missing(web):
        return
    npm = shutil.which("npm")
    hint = f"run `npm ci --prefix {web}` (Node.js 18+)"
    if npm is None:
        raise RuntimeError(f"{web}/node_modules is missing and npm is not installed: {hint}")
    done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=web, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or node_modules_missing(web):
        raise RuntimeError(f"`npm ci` in {web} failed ({done.returncode}): {done.stderr[-2000:]}\n{hint}")


def make_site(root: Path, model: Path, web: Path = WEB) -> Path:
    """``root`` holding the page, its node_modules and ``model/`` (links where the OS allows, else copies): what is served."""
    root.mkdir(parents=True, exist_ok=True)

    def place(source: Path, target: Path) -> None:
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        try:
            target.symlink_to(source.resolve(), target_is_directory=source.is_dir())
        except OSError:
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)

    for name in PAGE_FILES:
        place(web / name, root / name)
    place(web / "node_modules", root / "node_modules")
    place(model, root / "model")
    return root


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map: ClassVar[dict[str, str]] = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".wasm": "application/wasm"}

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """``directory`` over HTTP on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def browser_problem() -> str | None:
    """Why the page cannot be opened here (no Chromium, no Playwright), or None."""
    if not CHROMIUM.is_file():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set METACTL_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "python Playwright is not installed (pip install playwright; the Debian chromium needs no `playwright install`)"
    return None


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (``CHROMIUM``) through python Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _plain(values: Any) -> Any:
    """numpy arrays -> nested lists (what page.evaluate passes)."""
    return np.asarray(values).tolist() if isinstance(values, np.ndarray) else values


_READY = "(ms) => Promise.race([window.metactl.ready, new Promise((r) => setTimeout(() => r({ loaded: false, error: `not loaded after ${ms} ms` }), ms))])"
_CALL = "async ([m, args]) => { try { return {ok: await window.metactl[m](...args)} } catch (e) { return {error: String(e.message ?? e)} } }"


@dataclass
class WebPage:
    """One tab of the page at ``url`` with its model loaded; ``errors`` collects console errors and uncaught exceptions."""

    page: Any
    url: str
    errors: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, browser: Any, url: str) -> WebPage:
        page = browser.new_page()
        self = cls(page, url)
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.set_default_timeout(STEP_TIMEOUT_MS)
        page.goto(url)
        page.wait_for_function("window.metactl !== undefined")
        self.info = page.evaluate(_READY, LOAD_TIMEOUT_MS)
        if not self.info.get("loaded"):
            raise PageError(f"{url}: the model did not load: {self.info.get('error')} {self.errors}")
        return self

    def call(self, method: str, *args: Any) -> Any:
        """``await window.metactl[method](...args)``; a rejection becomes a PageError with the page's message."""
        out = self.page.evaluate(_CALL, [method, [_plain(a) for a in args]])
        if "error" in out:
            raise PageError(out["error"])
        return out["ok"]

    def adapt(self, labels: Sequence[int], *, pixels: Any = None, texts: Sequence[str] | None = None, names: Sequence[str] | None = None) -> dict[str, Any]:
        support: dict[str, Any] = {"labels": [int(v) for v in labels]}
        if names is not None:
            support["names"] = list(names)
        if pixels is not None:
            support["pixels"] = np.asarray(pixels, np.float32).reshape(-1).tolist()
        if texts is not None:
            support["texts"] = list(texts)
        return self.call("adapt", support)

    def classify(self, *, pixels: Any = None, texts: Sequence[str] | None = None) -> dict[str, Any]:
        query = {"pixels": np.asarray(pixels, np.float32).reshape(-1).tolist()} if pixels is not None else {"texts": list(texts or [])}
        return self.call("classify", query)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return self.call("tokenize", list(texts))

    def message(self) -> str:
        return str(self.page.text_content("#message") or "")

    def status(self) -> dict[str, Any]:
        return self.page.evaluate("window.metactl.info()")


@contextmanager
def open_page(model: Path, browser: Any | None = None) -> Iterator[WebPage]:
    """The page serving ``model`` (an adaptable folder), loaded; a fresh Chromium unless ``browser`` is given."""
    ensure_node_modules()
    with tempfile.TemporaryDirectory(prefix="metactl-web-") as tmp:
        root = make_site(Path(tmp), model)
        with serve(root) as base:
            if browser is None:
                with chromium() as own:
                    yield WebPage.open(own, f"{base}index.html?model=./model/")
            else:
                page = WebPage.open(browser, f"{base}index.html?model=./model/")
                try:
                    yield page
                finally:
                    page.page.close()


@dataclass(frozen=True)
class PageTiming:
    """The page's milliseconds (onnxruntime-web, wasm, one thread): median over the warm repeats, and the first (cold) call."""

    embed_ms: float
    adapt_ms: float
    total_ms: float  # embed + adapt (text: + tokenize)
    first_total_ms: float
    load_ms: float  # fetching metactl.json, the graphs (sha256-checked) and creating the sessions
    repeats: int
    examples: int
    runs: list[dict[str, float]] = field(default_factory=list)


def page_adapt_ms(
    folder: Path, labels: Sequence[int], *, pixels: Any = None, texts: Sequence[str] | None = None, repeats: int = 5, browser: Any | None = None
) -> PageTiming:
    """The page's embed + adapt milliseconds for the support ``labels`` with ``pixels`` (raw 0-255, [N, C, S, S] or [N, S, S])
    or ``texts``, in headless Chromium: one cold call, then ``repeats`` warm ones (their median)."""
    if (pixels is None) == (texts is None):
        raise ValueError("give pixels (image models) or texts (text models)")
    with open_page(folder, browser) as page:
        runs = [page.adapt(labels, pixels=pixels, texts=texts)["timings"] for _ in range(repeats + 1)]
    totals = [t.get("tokenize", 0.0) + t["embed"] + t["adapt"] for t in runs]
    warm = runs[1:] or runs
    return PageTiming(
        embed_ms=statistics.median(t["embed"] for t in warm),
        adapt_ms=statistics.median(t["adapt"] for t in warm),
        total_ms=statistics.median(totals[1:] or totals),
        first_total_ms=totals[0],
        load_ms=float(page.info["timings"]["load"]),
        repeats=len(warm),
        examples=len(labels),
        runs=runs,
    )


__all__ = [
    "CHROMIUM",
    "WEB",
    "PageError",
    "PageTiming",
    "WebPage",
    "browser_problem",
    "chromium",
    "ensure_node_modules",
    "make_site",
    "node_modules_missing",
    "open_page",
    "page_adapt_ms",
    "serve",
]
