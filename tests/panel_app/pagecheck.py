"""Looking at a dashboard page the way a user would: at a phone's and a laptop's width, in light and dark.

``look_at(browser, dashboard_url, Look(...), folder)`` opens the page in four fresh browser contexts (390 and
1280 px wide, the OS in light and in dark mode), waits until ``ready`` shows, and checks what every page must:

- the page follows the OS's colour scheme (``<html data-theme>``, the page's background, and in the dark mode its
  tables' rows and headers);
- at 390 px nothing scrolls sideways: the document is no wider than the window (a wide table scrolls inside
  its card instead);
- the browser logged no console error, no uncaught exception, no failed request and no HTTP error;
- every framed preview (an executed notebook, an HTML artifact) has loaded its document and shows something in the
  screenshot, not a blank box;

and saves a full-page screenshot of each as ``<folder>/<name>-<390|1280>-<light|dark>.png``. It returns the
problems found (an empty list when all is well), so a test asserts ``== []`` and sees every problem at once.

To check a page of your own, add a ``Look`` to a test module's list (see ``test_pages_look.py``):

    Look("batch", "/run?id={batch}", ready="text=children finished")

``path`` may name ids the module's seeded workspace made (``{batch}``), filled in with ``str.format``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .conftest import PageProblems

__all__ = ["Look", "VIEWPORTS", "SCHEMES", "is_dark", "look_at", "screenshot_folder"]

#: (label, width, height): a phone (an iPhone 12-15's CSS width) and a laptop
VIEWPORTS = [("390", 390, 844), ("1280", 1280, 900)]
SCHEMES = ["light", "dark"]
_PHONE_WIDTH = 390
#: the phone is a phone: it honours <meta name=viewport> (without it a page renders 980 px wide and shrinks) and
#: says so in its user agent, as Chrome on Android does
_PHONE = {"is_mobile": True, "has_touch": True,
          "user_agent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile Safari/537.36"}
_TALLEST_SHOT = 5000  # px: a screenshot shows the whole page up to this height

# the document's width and height (the page scrolls as a document; a frame that scrolled an inner area itself would
# hide a sideways overflow from the document's width, so a ".main-content" area is measured too if there is one)
_MAIN_AREA = """() => {
  const find = (root) => {
    const hit = root.querySelector('.main-content');
    if (hit) return hit;
    for (const e of root.querySelectorAll('*')) { if (e.shadowRoot) { const f = find(e.shadowRoot); if (f) return f } }
    return null };
  const main = find(document);
  return {document: document.documentElement.scrollWidth, overflow: main ? main.scrollWidth - main.clientWidth : 0,
          height: Math.max(document.documentElement.scrollHeight, main ? main.getBoundingClientRect().top + main.scrollHeight : 0)} }"""


@dataclass(frozen=True)
class Look:
    name: str  # the screenshots' file name prefix
    path: str  # "/runs?status=failed"; may hold "{name}" fields filled from the seeded ids
    ready: str  # a Playwright selector that shows once the page's content is in ("text=No runs yet", ".tabulator-row")


def screenshot_folder(tmp_path_factory) -> Path:
    """Where the screenshots go: ``$DSAGENT_SCREENSHOTS`` if set (kept after the run), else a pytest tmp folder."""
    chosen = os.environ.get("DSAGENT_SCREENSHOTS")
    if chosen:
        folder = Path(chosen)
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path_factory.mktemp("screenshots")


def is_dark(colour: str) -> bool:
    """Whether a computed CSS colour is dark: "rgb(18, 18, 18)", "rgba(...)" or "color(srgb 0.15 0.15 0.15 / 1)"."""
    inside = colour[colour.index("(") + 1:colour.index(")")].split("/")[0]
    if colour.startswith("color("):
        return sum(float(v) for v in inside.split()[1:4]) / 3 < 0.4
    return sum(float(part) for part in inside.split(",")[:3]) / 3 < 100


def _background_is_dark(page) -> bool:
    """Whether the page is painted dark (the body's computed background colour's lightness)."""
    return is_dark(page.evaluate("getComputedStyle(document.body).backgroundColor"))


def _light_tables(page) -> int:
    """How many table rows and headers are painted light (in dark mode they must not be: light text on white)."""
    cells = page.locator(".tabulator-row, .tabulator-header")
    colours = [cells.nth(i).evaluate("e => getComputedStyle(e).backgroundColor") for i in range(min(cells.count(), 6))]
    return sum(1 for c in colours if not c.startswith("rgba(0, 0, 0, 0)") and not is_dark(c))


def _shown_frames(page) -> list:
    """The page's visible preview frames (``<iframe src=...>``, not a hidden card's about:blank), once each has loaded
    its document and shows text or an image."""
    frames = []
    for handle in page.locator("iframe:visible").element_handles():
        if (handle.get_attribute("src") or "about:blank") == "about:blank":
            continue
        frame = handle.content_frame()
        frame.wait_for_load_state()
        frame.wait_for_function("() => document.body && (document.body.innerText.trim() !== '' || document.images.length > 0)")
        frames.append(handle)
    return frames


def _blank_frames(screenshot: Path, frames: list) -> list[str]:
    """The frames that show one flat colour in the screenshot (a blank box: the frame's content was not painted)."""
    from PIL import Image

    blank = []
    with Image.open(screenshot) as shot:
        for handle in frames:
            box = handle.bounding_box()
            inside = (int(box["x"]) + 4, int(box["y"]) + 4, int(box["x"] + box["width"]) - 4, int(box["y"] + box["height"]) - 4)
            if all(high - low <= 8 for low, high in shot.convert("RGB").crop(inside).getextrema()):
                blank.append(handle.get_attribute("src"))
    return blank


def look_at(browser, base_url: str, look: Look, folder: Path, ids: dict | None = None) -> list[str]:
    """Open ``look`` at every viewport and scheme; screenshots into ``folder``; the problems seen (see module doc)."""
    path = look.path.format(**(ids or {}))
    problems: list[str] = []
    for scheme in SCHEMES:
        for label, width, height in VIEWPORTS:
            where = f"{look.name} at {label} px, {scheme}"
            device = _PHONE if width == _PHONE_WIDTH else {}
            context = browser.new_context(viewport={"width": width, "height": height}, color_scheme=scheme, base_url=base_url, **device)
            try:
                page = context.new_page()
                page.set_default_timeout(45_000)  # a fail-safe for a loaded machine, not a speed check
                seen = PageProblems(page)
                page.goto(path)
                page.locator(look.ready).first.wait_for()
                page.wait_for_timeout(400)  # what fills in after the first paint (a table's rows, the frame's styles)
                problems += [f"{where}: {item}" for item in seen.items]
                theme = page.evaluate("document.documentElement.dataset.theme")
                if theme != scheme or _background_is_dark(page) != (scheme == "dark"):
                    problems.append(f"{where}: the page is not in the OS's {scheme} mode (data-theme={theme!r})")
                if scheme == "dark" and _light_tables(page):
                    problems.append(f"{where}: a table is painted light in the dark theme")
                area = page.evaluate(_MAIN_AREA)
                if width == _PHONE_WIDTH and (area["document"] > width or area["overflow"] > 0):
                    problems.append(f"{where}: the page scrolls sideways (document {area['document']} px in a {width} px window, "
                                    f"main area {area['overflow']} px wider than its box)")
                # the whole page in one picture: the window as tall as the frame's main area
                page.set_viewport_size({"width": width, "height": min(_TALLEST_SHOT, max(height, int(area["height"])))})
                page.wait_for_timeout(150)
                frames = _shown_frames(page)
                shot = folder / f"{look.name}-{label}-{scheme}.png"
                page.screenshot(path=str(shot))
                problems += [f"{where}: the frame of {src} is a blank box in the screenshot" for src in _blank_frames(shot, frames)]
            finally:
                context.close()
    return problems
