"""The page in a real browser: Debian's Chromium driven by Playwright against the production
server on a free loopback port.

A person uploads a photo and sees the right digit, drops a file, draws a digit with the
mouse (and a finger) and sees the prediction update while drawing, clears the pad, gets a
clear message for an empty drawing and for a file that is not an image, and uses the tabs
with the keyboard. The page must load nothing from another origin and log no script errors,
and it must fit a phone's screen.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _web_fixtures import Server, as_scan, png_bytes, running_server, sample_digits

from mnist_cnn.data import Split

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Debian's Chromium, never a downloaded one (`playwright install` is not used anywhere).
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
TIMEOUT_MS = 20_000  # generous: the CI machine's two cores are shared

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running_server() as running:  # the production defaults
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        message = "Chromium is missing: apt-get install -y chromium (.ci/run does this)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class PageWatch:
    """Everything a page requested, and every script error it logged."""

    def __init__(self, page: object, origin: str) -> None:
        self.origin = origin
        self.requests: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("pageerror", lambda e: self.errors.append(str(e)))

        def console(message: object) -> None:
            # The browser logs every 4xx answer of fetch() as an error; those are expected.
            if message.type == "error" and "Failed to load resource" not in message.text:
                self.errors.append(message.text)

        page.on("console", console)

    def check(self) -> None:
        foreign = [u for u in self.requests if not u.startswith((self.origin, "data:", "blob:"))]
        assert not foreign, f"requests to other origins: {foreign}"
        assert not self.errors, f"script errors: {self.errors}"


@pytest.fixture
def page(browser: object, server: Server) -> Iterator[tuple[object, PageWatch]]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    watch = PageWatch(page, server.url)
    page.goto(server.url)
    # The script marks the page ready once its listeners are installed.
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    yield page, watch
    context.close()
    watch.check()


@pytest.fixture(scope="module")
def digits(test_split: Split) -> list[tuple[np.ndarray, int]]:
    images = np.asarray(test_split.images)
    return [(images[i], label) for i, label in sample_digits(images, test_split.labels, 1)]


def draw(page: object, strokes: list[list[tuple[float, float]]], steps: int = 8) -> None:
    """Draw strokes on the pad with the mouse; points are fractions of the pad's size."""
    box = page.locator("#pad").bounding_box()

    def at(point: tuple[float, float]) -> tuple[float, float]:
        return box["x"] + point[0] * box["width"], box["y"] + point[1] * box["height"]

    for stroke in strokes:
        page.mouse.move(*at(stroke[0]))
        page.mouse.down()
        for point in stroke[1:]:
            page.mouse.move(*at(point), steps=steps)
        page.mouse.up()


SEVEN = [[(0.28, 0.22), (0.72, 0.22), (0.45, 0.82)]]
ONE = [[(0.5, 0.15), (0.5, 0.85)]]


def test_upload_a_photo_and_see_the_right_digit(
    page: tuple[object, PageWatch], digits: list[tuple[np.ndarray, int]], tmp_path: Path
) -> None:
    p, _ = page
    p.get_by_role("tab", name="Upload").click()
    for image, label in digits[:4]:
        photo = tmp_path / f"digit-{label}.jpg"
        photo.write_bytes(as_scan(image))  # dark ink on light paper, as a photo
        p.set_input_files("#file", str(photo))
        expect(p.locator("#digit")).to_have_text(str(label))
        expect(p.locator("#confidence")).to_contain_text("% sure")
        expect(p.locator(f'#bars .bar[data-digit="{label}"]')).to_have_class("bar top")
        expect(p.locator("#model-input")).to_be_visible()
        assert p.locator("#model-input").get_attribute("src").startswith("data:image/png;base64,")
        expect(p.locator("#preview")).to_be_visible()
    expect(p.locator("#announce")).to_contain_text("The model thinks this is a")


def test_drop_a_file_on_the_page(
    page: tuple[object, PageWatch], digits: list[tuple[np.ndarray, int]]
) -> None:
    p, _ = page
    image, label = digits[3]
    encoded = base64.b64encode(png_bytes(image)).decode()
    transfer = p.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "digit.png", { type: "image/png" }));
            return transfer;
        }""",
        encoded,
    )
    p.dispatch_event("#dropzone", "dragenter", {"dataTransfer": transfer})
    p.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    expect(p.locator("#digit")).to_have_text(str(label))
    # Dropping switched to the upload tab, where the preview is.
    expect(p.get_by_role("tab", name="Upload")).to_have_attribute("aria-selected", "true")


def test_draw_a_digit_and_see_the_prediction_update_while_drawing(
    page: tuple[object, PageWatch],
) -> None:
    p, _ = page
    expect(p.locator("#digit")).to_have_text("?")
    box = p.locator("#pad").bounding_box()
    x, y, w, h = box["x"], box["y"], box["width"], box["height"]
    # Start a "7": the top bar, then pause with the button still down. The debounced
    # update must come while drawing, before the stroke ends.
    p.mouse.move(x + 0.28 * w, y + 0.22 * h)
    p.mouse.down()
    with p.expect_response(lambda r: r.url.endswith("/api/predict")) as first:
        p.mouse.move(x + 0.72 * w, y + 0.22 * h, steps=10)
    assert first.value.request.post_data_json["image"].startswith("data:image/png;base64,")
    p.mouse.move(x + 0.45 * w, y + 0.82 * h, steps=12)
    p.mouse.up()
    expect(p.locator("#digit")).to_have_text("7")
    expect(p.locator("#model-input")).to_be_visible()
    expect(p.locator("#undo")).to_be_enabled()


def test_inverted_colours_give_the_same_digit(page: tuple[object, PageWatch]) -> None:
    p, _ = page
    draw(p, ONE)
    expect(p.locator("#digit")).to_have_text("1")
    # Inverting redraws the drawing black on white and asks again: the model still sees a 1.
    with p.expect_response(lambda r: r.url.endswith("/api/predict")) as answer:
        p.locator("#invert").click()
    assert answer.value.status == 200
    expect(p.locator("#invert")).to_have_attribute("aria-pressed", "true")
    expect(p.locator("#digit")).to_have_text("1")
    corner = p.evaluate(
        "() => Array.from(document.getElementById('pad').getContext('2d')"
        ".getImageData(2, 2, 1, 1).data)"
    )
    assert corner[:3] == [255, 255, 255]


def test_clear_and_an_empty_drawing(page: tuple[object, PageWatch]) -> None:
    p, _ = page
    draw(p, SEVEN)
    expect(p.locator("#digit")).to_have_text("7")
    p.locator("#clear").click()
    expect(p.locator("#digit")).to_have_text("?")
    expect(p.locator("#pad-hint")).to_be_visible()
    expect(p.locator("#model-input")).to_be_hidden()
    pixels = p.evaluate(
        "() => Array.from(document.getElementById('pad').getContext('2d')"
        ".getImageData(0, 0, 280, 280).data).filter((v, i) => i % 4 === 0 && v > 0).length"
    )
    assert pixels == 0
    # Asking about the empty pad: the server finds no digit (422) and the page says so.
    with p.expect_response(lambda r: r.url.endswith("/api/predict")) as answer:
        p.locator("#predict").click()
    assert answer.value.status == 422
    assert answer.value.json()["error"]["code"] == "no_digit"
    expect(p.locator("#message")).to_be_visible()
    expect(p.locator("#message")).to_contain_text("The drawing is empty")
    expect(p.locator("#digit")).to_have_text("?")
    # Drawing again replaces the message with a prediction.
    draw(p, ONE)
    expect(p.locator("#digit")).to_have_text("1")
    expect(p.locator("#message")).to_be_hidden()


def test_a_file_that_is_not_an_image_shows_an_error(
    page: tuple[object, PageWatch], digits: list[tuple[np.ndarray, int]], tmp_path: Path
) -> None:
    p, _ = page
    p.get_by_role("tab", name="Upload").click()
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not a picture of a digit\n")
    p.set_input_files("#file", str(notes))
    message = p.locator("#message")
    expect(message).to_be_visible()
    expect(message).to_contain_text("not an image")
    expect(message).to_have_attribute("role", "alert")
    expect(p.locator("#digit")).to_have_text("?")
    # The page keeps working.
    image, label = digits[8]
    photo = tmp_path / "digit.png"
    photo.write_bytes(png_bytes(image))
    p.set_input_files("#file", str(photo))
    expect(p.locator("#digit")).to_have_text(str(label))
    expect(message).to_be_hidden()


def test_a_file_over_the_limit_is_refused_before_uploading(
    page: tuple[object, PageWatch], tmp_path: Path
) -> None:
    p, watch = page
    p.get_by_role("tab", name="Upload").click()
    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(11 * 1024 * 1024))
    p.set_input_files("#file", str(huge))
    message = p.locator("#message")
    expect(message).to_contain_text("too large")
    expect(message).to_contain_text("the limit is 10 MB")
    assert not [u for u in watch.requests if u.endswith("/api/predict")]


def test_tabs_work_with_the_keyboard(page: tuple[object, PageWatch]) -> None:
    p, _ = page
    draw_tab = p.get_by_role("tab", name="Draw")
    draw_tab.focus()
    p.keyboard.press("ArrowRight")
    expect(p.get_by_role("tab", name="Upload")).to_be_focused()
    expect(p.locator("#panel-upload")).to_be_visible()
    expect(p.locator("#panel-draw")).to_be_hidden()
    # Tab moves on to the file picker, which the keyboard can open.
    p.keyboard.press("Tab")
    expect(p.locator("#file")).to_be_focused()
    p.keyboard.press("Shift+Tab")
    p.keyboard.press("ArrowLeft")
    expect(p.locator("#panel-draw")).to_be_visible()
    # Focus is visible: the focused tab gets an outline.
    outline = p.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"


def test_phone_screen_with_a_finger(browser: object, server: Server) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    watch = PageWatch(page, server.url)
    page.goto(server.url)
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    # Nothing is wider than the screen.
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    box = page.locator("#pad").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390 and box["width"] >= 250
    # Draw a "1" with a finger: touch events become pointer events.
    cdp = context.new_cdp_session(page)
    x = box["x"] + box["width"] / 2
    top, bottom = box["y"] + 0.15 * box["height"], box["y"] + 0.85 * box["height"]
    cdp.send(
        "Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": top}]}
    )
    for i in range(1, 13):
        y = top + (bottom - top) * i / 12
        cdp.send(
            "Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]}
        )
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    expect(page.locator("#digit")).to_have_text("1")
    # The page did not scroll while the finger drew.
    assert page.evaluate("() => window.scrollY") == 0
    context.close()
    watch.check()
