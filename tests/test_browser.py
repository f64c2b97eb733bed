"""The page in a real browser: Debian's Chromium driven by Playwright against the production
server on a free loopback port.

A person uploads a photo and sees the right digit, drops a file, draws a digit with the
mouse (and a finger) and sees the prediction update while drawing, clears the pad, gets a
clear message for an empty drawing and for a file that is not an image, and uses the tabs
with the keyboard. The page must load nothing from another origin and log no script errors.

On every common screen, from a 360x640 phone to a 1920x1080 desktop, the pad, its buttons
and the answer are on screen without scrolling; a finger's tap leaves no hover style behind.
Big photos (48 MP, or over the byte limit) are shrunk in the browser and kept upright; small
ones go as they are. "Not sure" is shown in words, as the server's status says.
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from _imaging import encode, font_digit, gray8, on_paper, png_chunk
from _web_fixtures import Server, as_scan, png_bytes, running_server, sample_digits
from PIL import Image

from mnist_cnn.data import Split
from mnist_cnn.preprocess import MAX_PIXELS
from mnist_cnn.web import MAX_UPLOAD_BYTES

pytestmark = pytest.mark.browser

TIMEOUT_MS = 20_000  # generous: the CI machine's two cores are shared

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect
PlaywrightError = playwright_api.Error


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running_server() as running:  # the production defaults
        yield running


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


# --------------------------------------------------------------------------- screens and fingers

# Common screens (CSS pixels of the viewport): phones, a tablet, laptops and a desktop.
# Up to 820 px wide the page is one column and people draw with a finger.
SCREENS = [(360, 640), (390, 844), (412, 915), (768, 1024), (1280, 720), (1366, 657), (1920, 1080)]
ONE_COLUMN = 820


@pytest.fixture
def open_page(browser: object, server: Server) -> Iterator[Callable[..., tuple[object, object]]]:
    """``open_page(width, height, touch)``: a fresh context and page on the app, ready."""
    opened: list[tuple[object, PageWatch]] = []

    def open_(width: int, height: int, touch: bool) -> tuple[object, object]:
        context = browser.new_context(
            viewport={"width": width, "height": height}, has_touch=touch, is_mobile=touch
        )
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        opened.append((context, PageWatch(page, server.url)))
        page.goto(server.url)
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        return context, page

    yield open_
    for context, watch in opened:
        context.close()
        watch.check()


STILL_MS = 80


class Finger:
    """Touches on the screen through the DevTools protocol, as a phone's touch screen sends
    them: touchStart, touchMove..., touchEnd (the page sees pointer events of type touch)."""

    def __init__(self, context: object, page: object) -> None:
        self.page = page
        self.cdp = context.new_cdp_session(page)

    def _send(self, kind: str, x: float | None = None, y: float | None = None) -> None:
        points = [] if x is None else [{"x": x, "y": y}]
        self.cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

    def on_pad(self, point: tuple[float, float]) -> tuple[float, float]:
        box = self.page.locator("#pad").bounding_box()
        return box["x"] + point[0] * box["width"], box["y"] + point[1] * box["height"]

    def down(self, point: tuple[float, float]) -> None:
        self._send("touchStart", *self.on_pad(point))

    def move(self, start: tuple[float, float], end: tuple[float, float], steps: int = 10) -> None:
        for i in range(1, steps + 1):
            f = i / steps
            x, y = start[0] + (end[0] - start[0]) * f, start[1] + (end[1] - start[1]) * f
            self._send("touchMove", *self.on_pad((x, y)))

    def up(self) -> None:
        # The finger rests a moment before it lifts, as a finger ending a stroke does. Lifted
        # at full speed, Chromium takes the stroke for a fling, and the next tap only stops
        # the fling (no click), as a tap on a scrolling page does.
        self.page.wait_for_timeout(STILL_MS)
        self._send("touchEnd")

    def draw(self, strokes: list[list[tuple[float, float]]]) -> None:
        for stroke in strokes:
            self.down(stroke[0])
            for start, end in itertools.pairwise(stroke):
                self.move(start, end)
            self.up()

    def tap(self, selector: str) -> None:
        box = self.page.locator(selector).bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        self._send("touchStart", x, y)
        self._send("touchEnd")


# Which of the page's answer elements are entirely on screen, with their text: the result
# card's big digit and confidence, and on one-column screens the answer strip above the pad.
ANSWER_IN_VIEW = """() => {
    const shown = (el) => {
        const r = el.getBoundingClientRect();
        return r.width > 0 && r.height > 0 && r.top >= 0 && r.left >= 0
            && r.bottom <= window.innerHeight && r.right <= window.innerWidth
            && getComputedStyle(el).visibility !== "hidden";
    };
    const pick = (ids) => ids.map((id) => document.getElementById(id))
        .filter(shown).map((el) => el.textContent.trim());
    return {digits: pick(["strip-digit", "digit"]), words: pick(["strip-main", "confidence"]),
            scrollY: window.scrollY};
}"""


# The page answers while a stroke is drawn, so a "7" can be on screen (as "Not sure") before
# the answer to the finished drawing arrives: wait for that one, a sure answer.
SURE_ANSWER = """() => ["strip-main", "confidence"].some((id) => {
    const el = document.getElementById(id);
    return el !== null && el.textContent.trim().endsWith("% sure");
})"""


def sure_answer_in_view(page: object) -> dict:
    """Once the finished drawing's (sure) answer is shown: what of it is on screen."""
    page.wait_for_function(SURE_ANSWER, timeout=10_000)
    return page.evaluate(ANSWER_IN_VIEW)


def in_view(page: object, selector: str) -> bool:
    """Whether the element is entirely inside the viewport, as it is now."""
    box = page.locator(selector).bounding_box()
    viewport = page.viewport_size
    return (
        box is not None
        and box["x"] >= 0
        and box["y"] >= 0
        and box["x"] + box["width"] <= viewport["width"]
        and box["y"] + box["height"] <= viewport["height"]
    )


@pytest.mark.parametrize("size", [(390, 844), (360, 640)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_a_finger_draws_on_a_phone_and_sees_the_answer_without_scrolling(
    open_page: Callable[..., tuple[object, object]], size: tuple[int, int]
) -> None:
    context, page = open_page(*size, touch=True)
    width, _ = size
    assert page.evaluate("() => document.documentElement.scrollWidth") <= width
    for selector in ("#pad", "#undo", "#invert", "#clear", "#predict"):
        assert in_view(page, selector), f"{selector} is not on screen"
    assert page.locator("#pad").bounding_box()["width"] >= 250
    finger = Finger(context, page)
    # A "7" with a finger: the top bar, then a pause with the finger still down. The answer
    # arrives while drawing, and it is on screen.
    finger.down((0.28, 0.22))
    with page.expect_response(lambda r: r.url.endswith("/api/predict")) as first:
        finger.move((0.28, 0.22), (0.72, 0.22))
    assert first.value.status == 200
    expect(page.locator("#strip-digit")).not_to_have_text("?")
    answer = page.evaluate(ANSWER_IN_VIEW)
    assert answer["digits"] and answer["digits"][0].isdigit(), answer
    finger.move((0.72, 0.22), (0.45, 0.82))
    finger.up()
    expect(page.locator("#digit")).to_have_text("7")
    expect(page.locator("#strip-digit")).to_have_text("7")
    answer = sure_answer_in_view(page)
    assert "7" in answer["digits"], f"the answer is off screen: {answer}"
    assert any(w.endswith("% sure") for w in answer["words"]), answer
    # The page did not scroll while the finger drew.
    assert answer["scrollY"] == 0
    # Clear with a tap: the pad and the answer are empty again.
    finger.tap("#clear")
    expect(page.locator("#digit")).to_have_text("?")
    expect(page.locator("#strip-digit")).to_have_text("?")
    expect(page.locator("#pad-hint")).to_be_visible()
    assert page.evaluate("() => window.scrollY") == 0


@pytest.mark.parametrize("size", SCREENS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_pad_buttons_and_answer_fit_every_common_screen(
    open_page: Callable[..., tuple[object, object]], size: tuple[int, int]
) -> None:
    touch = size[0] <= ONE_COLUMN
    context, page = open_page(*size, touch=touch)
    for selector in ("#pad", "#undo", "#invert", "#clear", "#predict"):
        assert in_view(page, selector), f"{selector} is below the fold at {size}"
    if touch:
        Finger(context, page).draw(SEVEN)
    else:
        draw(page, SEVEN)
    expect(page.locator("#digit")).to_have_text("7")
    answer = sure_answer_in_view(page)
    assert "7" in answer["digits"], f"the digit is off screen at {size}: {answer}"
    assert any(w.endswith("% sure") for w in answer["words"]), answer
    assert answer["scrollY"] == 0
    assert page.evaluate("() => document.documentElement.scrollWidth") <= size[0]


BACKGROUND = "() => getComputedStyle(document.getElementById('clear')).backgroundColor"


def test_hover_style_does_not_stick_after_a_tap(
    open_page: Callable[..., tuple[object, object]],
) -> None:
    context, page = open_page(390, 844, touch=True)
    before = page.evaluate(BACKGROUND)
    Finger(context, page).tap("#clear")
    # The browser does consider the tapped button hovered: only the CSS can keep it plain.
    assert page.evaluate("() => document.getElementById('clear').matches(':hover')")
    assert page.evaluate(BACKGROUND) == before


def test_hover_style_with_a_mouse(page: tuple[object, PageWatch]) -> None:
    p, _ = page
    before = p.evaluate(BACKGROUND)
    p.locator("#clear").hover()
    assert p.evaluate(BACKGROUND) != before


def test_keyboard_help_is_for_keyboards(
    open_page: Callable[..., tuple[object, object]], page: tuple[object, PageWatch]
) -> None:
    desktop, _ = page
    expect(desktop.locator(".keys-help")).to_be_visible()
    expect(desktop.locator("#pad-help")).to_contain_text("Delete")
    _, phone = open_page(360, 640, touch=True)
    expect(phone.locator(".keys-help")).to_be_hidden()
    help_box = phone.locator("#pad-help").bounding_box()
    line = phone.evaluate(
        "() => parseFloat(getComputedStyle(document.getElementById('pad-help')).lineHeight)"
    )
    assert help_box["height"] <= 1.5 * line, f"the help takes {help_box['height'] / line:.1f} lines"


# --------------------------------------------------------------------------- big photos


# The browser does not hand a multipart body that holds a file to the DevTools protocol, so
# the test reads what the page sends where the page sends it: a wrapper around fetch keeps
# the "image" field of each FormData (its type and bytes, as a data URL).
FETCH_SPY = """() => {
    if (window.sentImages) return;
    window.sentImages = [];
    const send = window.fetch;
    window.fetch = function (url, options) {
        const image = options && options.body instanceof FormData && options.body.get("image");
        if (image instanceof Blob) {
            window.sentImages.push(new Promise((resolve) => {
                const reader = new FileReader();
                reader.onload = () => resolve({type: image.type, dataUrl: reader.result});
                reader.readAsDataURL(image);
            }));
        }
        return send.apply(this, arguments);
    };
}"""


def photo_of(digit: int, width: int, height: int, digit_side: int) -> Image.Image:
    """An upright grayscale photo: ``digit`` in dark ink, ``digit_side`` pixels tall, in the
    middle of light paper of ``width`` x ``height``."""
    ink = gray8(on_paper(font_digit(digit))).resize(
        (digit_side, digit_side), Image.Resampling.BICUBIC
    )
    paper = Image.new("L", (width, height), 235)
    paper.paste(ink, ((width - digit_side) // 2, (height - digit_side) // 2))
    return paper


def sideways_jpeg(upright: Image.Image, quality: int = 90) -> bytes:
    """``upright`` stored as a phone stores a portrait photo: pixels turned a quarter turn,
    and EXIF orientation 6 to turn them back."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(upright.rotate(90, expand=True), "JPEG", quality=quality, exif=exif.tobytes())


def upload_and_capture(
    page: object, path: Path, timeout: float = TIMEOUT_MS
) -> tuple[tuple[str, bytes], object]:
    """Choose ``path`` in the file picker: ((type, bytes) of the file the page sent, the
    server's response)."""
    page.get_by_role("tab", name="Upload").click()
    page.evaluate(FETCH_SPY)
    with page.expect_response(lambda r: r.url.endswith("/api/predict"), timeout=timeout) as answer:
        page.set_input_files("#file", str(path))
    sent = page.evaluate("() => Promise.all(window.sentImages)")[-1]
    data = base64.b64decode(sent["dataUrl"].split(",", 1)[1])
    return (sent["type"], data), answer.value


def test_a_48_megapixel_photo_is_shrunk_in_the_browser_and_kept_upright(
    page: tuple[object, PageWatch], server: Server, tmp_path: Path
) -> None:
    p, _ = page
    # A 48 MP portrait photo of a 7 (6000 x 8000 upright), stored sideways as phones do.
    upright = photo_of(7, 6000, 8000, digit_side=3200)
    photo = tmp_path / "IMG_0048.jpg"
    photo.write_bytes(sideways_jpeg(upright))
    with Image.open(photo) as stored:
        assert stored.size == (8000, 6000) and stored.width * stored.height > MAX_PIXELS
    # As it is, the server refuses it: too many pixels.
    status, _, body = server.request(
        "POST", "/api/predict", photo.read_bytes(), {"Content-Type": "image/jpeg"}
    )
    assert status == 422 and json.loads(body)["error"]["code"] == "image_too_large"

    (content_type, sent), response = upload_and_capture(p, photo, timeout=90_000)
    assert response.status == 200, response.text()
    assert content_type == "image/jpeg"
    with Image.open(io.BytesIO(sent)) as shrunk:
        # Upright (portrait, from the EXIF orientation), the long side 3000 pixels.
        assert shrunk.size == (2250, 3000), shrunk.size
        assert shrunk.getexif().get(0x0112, 1) == 1  # nothing left to turn
    # A sideways 7 is not read as a 7: the right answer means the model saw it upright.
    assert response.json()["digit"] == 7
    expect(p.locator("#digit")).to_have_text("7")
    expect(p.locator("#message")).to_be_hidden()


def png_with_padding(image: Image.Image, padding: int) -> bytes:
    """A PNG of ``image`` carrying ``padding`` bytes in a private ancillary chunk, which every
    decoder skips: a file over the upload limit whose picture is small."""
    png = encode(image, "PNG")
    chunk = png_chunk(b"zeRo", bytes(padding))  # ancillary, private, safe to copy
    iend = png.rindex(b"IEND") - 4
    return png[:iend] + chunk + png[iend:]


def test_a_file_over_the_byte_limit_is_shrunk_when_the_browser_can_read_it(
    page: tuple[object, PageWatch], tmp_path: Path
) -> None:
    p, _ = page
    photo = tmp_path / "scan.png"
    photo.write_bytes(png_with_padding(photo_of(3, 1200, 1600, digit_side=900), 11 * 2**20))
    assert photo.stat().st_size > MAX_UPLOAD_BYTES
    (content_type, sent), response = upload_and_capture(p, photo)
    assert response.status == 200, response.text()
    assert content_type == "image/jpeg" and len(sent) < MAX_UPLOAD_BYTES // 10
    with Image.open(io.BytesIO(sent)) as shrunk:
        assert shrunk.size == (1200, 1600)  # small enough already: re-encoded, not scaled
    assert response.json()["digit"] == 3
    expect(p.locator("#digit")).to_have_text("3")


def test_small_photos_and_tiffs_are_sent_untouched(
    page: tuple[object, PageWatch], tmp_path: Path
) -> None:
    p, _ = page
    # A small sideways JPEG: sent as it is, and the server applies its EXIF orientation.
    photo = tmp_path / "small.jpg"
    photo.write_bytes(sideways_jpeg(photo_of(7, 300, 400, digit_side=240)))
    sent, response = upload_and_capture(p, photo)
    assert sent == ("image/jpeg", photo.read_bytes())
    assert response.json()["digit"] == 7
    # A TIFF, which Chromium cannot decode: sent as it is, the server reads it.
    tiff = tmp_path / "scan.tif"
    tiff.write_bytes(encode(photo_of(4, 300, 400, digit_side=240), "TIFF"))
    sent, response = upload_and_capture(p, tiff)
    assert sent[1] == tiff.read_bytes()
    assert response.status == 200 and response.json()["digit"] == 4
    expect(p.locator("#digit")).to_have_text("4")


# --------------------------------------------------------------------------- not sure


def answer_with(status: str, reason: dict | None, top: list[tuple[int, float]]) -> Callable:
    """A route handler: the server's real answer to the page's request, with the status,
    reason and probabilities replaced (the rest, such as the 28x28 image, stays real)."""

    def handle(route: object) -> None:
        try:
            response = route.fetch()
            body = response.json()
        except PlaywrightError:
            # The test is over and its page closed while this request was in flight (the
            # pad asks while a stroke is drawn): nobody is waiting for the answer any more.
            return
        probabilities = [0.0] * 10
        for digit, probability in top:
            probabilities[digit] = probability
        body.update(
            digit=top[0][0],
            confidence=top[0][1],
            status=status,
            reason=reason,
            probabilities=probabilities,
            top3=[{"digit": d, "probability": q} for d, q in top[:3]],
        )
        with contextlib.suppress(PlaywrightError):  # the page may have closed meanwhile
            route.fulfill(response=response, json=body)

    return handle


AMBIGUOUS = {"code": "ambiguous", "message": "the model hesitates between two digits"}


def test_not_sure_is_shown_in_words_not_as_an_answer(page: tuple[object, PageWatch]) -> None:
    p, _ = page
    p.route("**/api/predict", answer_with("unsure", AMBIGUOUS, [(4, 0.52), (9, 0.41), (7, 0.03)]))
    draw(p, ONE)
    expect(p.locator("#confidence")).to_have_text("Not sure")
    message = p.locator("#message")
    expect(message).to_be_visible()
    expect(message).to_contain_text("Not sure: this looks most like a 4, or a 9.")
    expect(message).to_contain_text("The model hesitates between two digits.")
    # The digit it looks most like, marked as a guess; its bar in the warning colour.
    digit = p.locator("#digit")
    expect(digit).to_have_text("4")
    expect(digit).to_have_class(re.compile(r"\bunsure\b"))
    mark = p.evaluate("() => getComputedStyle(document.getElementById('digit'), '::after').content")
    assert "?" in mark
    colours = p.evaluate(
        """() => ['#digit', '.bar.top .bar-fill'].map(
            (s) => getComputedStyle(document.querySelector(s)).backgroundColor)"""
    )
    p.unroute("**/api/predict")
    draw(p, SEVEN)
    expect(p.locator("#confidence")).to_contain_text("% sure")
    expect(digit).not_to_have_class(re.compile(r"\bunsure\b"))
    sure = p.evaluate(
        """() => ['#digit', '.bar.top .bar-fill'].map(
            (s) => getComputedStyle(document.querySelector(s)).backgroundColor)"""
    )
    assert colours[0] != sure[0] and colours[1] != sure[1]
    expect(message).to_be_hidden()


def test_not_sure_is_announced_and_names_only_real_contenders(
    page: tuple[object, PageWatch],
) -> None:
    p, _ = page
    reason = {"code": "not_a_digit", "message": "this does not look like a digit"}
    # The runner-up has 2%: not worth naming.
    p.route("**/api/predict", answer_with("unsure", reason, [(8, 0.61), (3, 0.02), (5, 0.01)]))
    draw(p, ONE)
    message = p.locator("#message")
    expect(message).to_contain_text("This does not look like a digit.")
    # The message's first line names the digits; its detail (the reason, advice) follows.
    words = p.evaluate("() => document.getElementById('message').firstChild.textContent")
    assert words == "Not sure: this looks most like an 8."
    expect(p.locator("#runner-up")).to_have_text("Top: 8 (61.0%), 3 (2.0%)")
    # Screen readers hear the words once the stroke ends.
    announce = p.locator("#announce")
    expect(announce).to_contain_text("Not sure. This looks most like an 8.")
    expect(announce).to_contain_text("This does not look like a digit.")


def test_a_low_confidence_answer_the_server_is_sure_of_is_not_called_unsure(
    page: tuple[object, PageWatch],
) -> None:
    p, _ = page
    # The page follows the server's status, not a threshold of its own.
    p.route("**/api/predict", answer_with("ok", None, [(1, 0.45), (7, 0.40), (4, 0.10)]))
    draw(p, ONE)
    expect(p.locator("#confidence")).to_have_text("45.0% sure")
    expect(p.locator("#message")).to_be_hidden()
    expect(p.locator("#announce")).to_have_text("The model thinks this is a 1, 45.0% sure.")


def test_not_sure_in_the_strip_on_a_phone(open_page: Callable[..., tuple[object, object]]) -> None:
    context, page = open_page(390, 844, touch=True)
    page.route(
        "**/api/predict", answer_with("unsure", AMBIGUOUS, [(4, 0.52), (9, 0.41), (7, 0.03)])
    )
    Finger(context, page).draw(ONE)
    expect(page.locator("#strip-main")).to_have_text("Not sure")
    expect(page.locator("#strip-detail")).to_have_text("Most like a 4, or a 9")
    expect(page.locator("#strip-digit")).to_have_class(re.compile(r"\bunsure\b"))
    assert in_view(page, "#strip")


# A scrawl that is no digit: a tight zigzag across the whole pad, as when scratching out.
SCRIBBLE = [[(0.1 + 0.8 * (i % 2), 0.1 + 0.8 * i / 14) for i in range(15)]]


def test_a_scribble_gets_not_sure_from_the_real_model(page: tuple[object, PageWatch]) -> None:
    p, _ = page
    draw(p, SCRIBBLE, steps=4)
    with p.expect_response(lambda r: r.url.endswith("/api/predict")) as answer:
        p.locator("#predict").click()
    assert answer.value.status == 200, answer.value.text()
    body = answer.value.json()
    assert body["status"] == "unsure" and body["reason"]["code"], body
    expect(p.locator("#confidence")).to_have_text("Not sure")
    expect(p.locator("#message")).to_contain_text("Not sure: this looks most like")


def test_a_heavily_inked_pad_still_gets_an_answer(page: tuple[object, PageWatch]) -> None:
    p, _ = page
    # Strokes 20 px wide, 17 px apart, over the left half: about half the pad is ink.
    strokes = [[(0.04, y / 16), (0.5, y / 16)] for y in range(1, 16)]
    draw(p, strokes, steps=3)
    with p.expect_response(lambda r: r.url.endswith("/api/predict")) as answer:
        p.locator("#predict").click()
    inked = p.evaluate(
        "() => Array.from(document.getElementById('pad').getContext('2d')"
        ".getImageData(0, 0, 280, 280).data).filter((v, i) => i % 4 === 0 && v > 127).length"
    )
    assert 0.4 < inked / 280**2 < 0.6, inked / 280**2
    assert answer.value.status == 200, answer.value.text()
    expect(p.locator("#digit")).not_to_have_text("?")
    expect(p.locator("#message")).not_to_contain_text("empty")


# --------------------------------------------------------------------------- look inside

# The pictures of the "Look inside" panel once they have all loaded: (naturalWidth, alt) of
# each, or null while one is still loading.
INSIDE_IMAGES = """() => {
    const images = Array.from(document.querySelectorAll("#inside-content img"));
    if (!images.every((img) => img.complete && img.naturalWidth > 0)) return null;
    return images.map((img) => ({id: img.id, width: img.naturalWidth, alt: img.alt,
                                 src: img.src.slice(0, 22)}));
}"""
# Seven stages (the image and six steps), the input and its saliency, conv1 and conv2.
INSIDE_PICTURES = 11


def inside_images(page: object) -> list[dict]:
    """The panel's pictures, once every one has loaded."""
    return page.wait_for_function(INSIDE_IMAGES, timeout=TIMEOUT_MS).json_value()


def explain_requests(watch: PageWatch) -> list[str]:
    return [u for u in watch.requests if u.endswith("/api/explain")]


def test_look_inside_shows_how_the_model_read_the_drawing(
    page: tuple[object, PageWatch], digits: list[tuple[np.ndarray, int]], tmp_path: Path
) -> None:
    p, watch = page
    draw(p, SEVEN)
    expect(p.locator("#digit")).to_have_text("7")
    # Closed, the panel asks the server nothing: predictions cost what they did.
    assert not explain_requests(watch)
    summary = p.locator("#inside summary")
    expect(summary).to_have_text("Look inside the model")
    # A <details>: the keyboard opens it.
    summary.focus()
    with p.expect_response(lambda r: r.url.endswith("/api/explain")) as answer:
        p.keyboard.press("Enter")
    assert answer.value.status == 200
    assert answer.value.request.post_data_json["image"].startswith("data:image/png;base64,")
    expect(p.locator("#inside")).to_have_attribute("open", "")
    images = inside_images(p)
    assert len(images) == INSIDE_PICTURES, images
    assert all(i["src"] == "data:image/png;base64," for i in images)
    # Every picture says what it shows, in words of its own.
    alts = [i["alt"] for i in images]
    assert all(len(alt) > 20 for alt in alts), alts
    assert len(set(alts)) == len(alts), alts
    assert "Your image" in alts[0] and "28 by 28" in alts[6]
    assert any("conv1" in alt for alt in alts) and any("conv2" in alt for alt in alts)
    saliency = p.locator("#inside-saliency")
    expect(saliency).to_have_attribute("alt", re.compile(r"^Occlusion saliency for the answer 7"))
    expect(p.locator("#inside-stages figcaption")).to_have_count(7)
    expect(p.locator("#inside-legend")).to_contain_text("Red: evidence for 7")
    expect(p.locator("#inside-status")).to_have_text("")
    # The saliency is beside the 28x28 input, on the same row.
    boxes = [p.locator(s).bounding_box() for s in ("#inside-input", "#inside-saliency")]
    assert abs(boxes[0]["y"] - boxes[1]["y"]) < 2 and boxes[1]["x"] > boxes[0]["x"]

    # A new answer while it is open: the panel follows it.
    p.locator("#clear").click()
    expect(p.locator("#inside-content")).to_be_hidden()
    expect(p.locator("#inside-status")).to_contain_text("Draw or upload a digit")
    with p.expect_response(lambda r: r.url.endswith("/api/explain")) as answer:
        draw(p, ONE)
    assert answer.value.status == 200 and answer.value.json()["digit"] == 1
    expect(p.locator("#inside-legend")).to_contain_text("Red: evidence for 1")
    assert len(inside_images(p)) == INSIDE_PICTURES
    # While a stroke goes on, the panel waits for the finished drawing: one explanation.
    assert len(explain_requests(watch)) == 2, explain_requests(watch)

    # An upload is explained too, sent as it was to /api/predict.
    image, label = digits[4]
    photo = tmp_path / "digit.jpg"
    photo.write_bytes(as_scan(image))
    p.get_by_role("tab", name="Upload").click()
    with p.expect_response(lambda r: r.url.endswith("/api/explain")) as answer:
        p.set_input_files("#file", str(photo))
    assert answer.value.status == 200 and answer.value.json()["digit"] == label
    expect(p.locator("#inside-legend")).to_contain_text(f"Red: evidence for {label}")
    images = inside_images(p)
    assert images[0]["width"] == 112  # the photo as sent, in colour, not the pad
    # Closing and opening again shows the same answer without asking again.
    summary.click()
    summary.click()
    expect(p.locator("#inside-content")).to_be_visible()
    assert len(explain_requests(watch)) == 3


def test_look_inside_says_when_it_fails_and_tries_again(page: tuple[object, PageWatch]) -> None:
    p, _ = page
    busy = {"error": {"code": "busy", "message": "the server is decoding other large images"}}
    p.route("**/api/explain", lambda route: route.fulfill(status=503, json=busy))
    draw(p, SEVEN)
    expect(p.locator("#digit")).to_have_text("7")
    p.locator("#inside summary").click()
    error = p.locator("#inside-error")
    expect(error).to_be_visible()
    expect(error).to_have_attribute("role", "alert")
    expect(error).to_contain_text("Could not look inside the model.")
    expect(error).to_contain_text("The server is decoding other large images.")
    expect(p.locator("#inside-content")).to_be_hidden()
    # The answer itself is untouched.
    expect(p.locator("#digit")).to_have_text("7")
    expect(p.locator("#message")).to_be_hidden()
    p.unroute("**/api/explain")
    with p.expect_response(lambda r: r.url.endswith("/api/explain")) as answer:
        p.get_by_role("button", name="Try again").click()
    assert answer.value.status == 200
    expect(error).to_be_hidden()
    assert len(inside_images(p)) == INSIDE_PICTURES


def test_look_inside_fits_a_phone(open_page: Callable[..., tuple[object, object]]) -> None:
    context, page = open_page(390, 844, touch=True)
    finger = Finger(context, page)
    finger.draw(SEVEN)
    expect(page.locator("#digit")).to_have_text("7")
    page.locator("#inside summary").scroll_into_view_if_needed()
    with page.expect_response(lambda r: r.url.endswith("/api/explain")):
        finger.tap("#inside summary")
    images = inside_images(page)
    assert len(images) == INSIDE_PICTURES
    # Nothing overflows sideways: the page does not scroll, every picture is within the width.
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    for img in page.locator("#inside-content img").all():
        box = img.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (img.get_attribute("alt"), box)
        assert box["width"] > 20 and box["height"] > 20  # shown, not squeezed away
    # The stages wrap onto several rows rather than run off the side.
    tops = {round(li.bounding_box()["y"]) for li in page.locator("#inside-stages li").all()}
    assert len(tops) > 1


# --------------------------------------------------------------------------- numbers

# A "4" and a "2" written side by side on the wide number pad (fractions of its size), as a
# hand writes them: each about as wide as a digit is, with a gap between.
NUMBER_FOUR = [[(0.30, 0.85), (0.30, 0.15), (0.19, 0.6), (0.34, 0.6)]]
NUMBER_TWO = [[(0.50, 0.3), (0.53, 0.18), (0.58, 0.15), (0.63, 0.2), (0.64, 0.33), (0.50, 0.85),
               (0.66, 0.85)]]  # fmt: skip
PAD_SIZE = "() => [document.getElementById('pad').width, document.getElementById('pad').height]"


def written_number(text: str, path: Path) -> Path:
    """A photo-like PNG of ``text`` in OpenCV's stroke font, dark on light paper."""
    import cv2

    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 4.0, 12
    (width, height), _ = cv2.getTextSize(text, font, scale, thickness)
    image = np.full((240, width + 80), 235, np.uint8)
    cv2.putText(image, text, (40, (240 + height) // 2), font, scale, 30, thickness)
    path.write_bytes(png_bytes(image))
    return path


def number_requests(watch: PageWatch) -> list[str]:
    return [u for u in watch.requests if u.endswith("/api/predict")]


def test_number_mode_reads_42_drawn_with_the_mouse(page: tuple[object, PageWatch]) -> None:
    p, _ = page
    # The switch is a radio group: the keyboard moves to "Number" with an arrow key.
    digit_radio, number_radio = (p.get_by_role("radio", name=n) for n in ("Digit", "Number"))
    expect(digit_radio).to_be_checked()
    square = p.locator("#pad").bounding_box()
    digit_radio.focus()
    p.keyboard.press("ArrowRight")
    expect(number_radio).to_be_checked()
    expect(number_radio).to_be_focused()
    # The pad is three times as wide as it is tall, and wider than the digit pad.
    assert p.evaluate(PAD_SIZE) == [840, 280]
    wide = p.locator("#pad").bounding_box()
    assert wide["width"] == pytest.approx(3 * wide["height"], rel=0.02), wide
    assert wide["width"] > 1.5 * square["width"]
    expect(p.locator("#pad-hint")).to_have_text("Write a number here")
    # Look inside explains one digit: it gives way to a note.
    expect(p.locator("#inside")).to_be_hidden()
    expect(p.locator("#inside-note")).to_be_visible()

    with p.expect_request(
        lambda r: r.url.endswith("/api/predict") and r.post_data_json.get("mode") == "number"
    ):
        draw(p, NUMBER_FOUR + NUMBER_TWO)
    expect(p.locator("#number")).to_have_text("42")
    expect(p.locator("#number-confidence")).to_contain_text("% sure")
    expect(p.locator("#digit-result")).to_be_hidden()
    expect(p.locator("#bars")).to_be_hidden()
    # One tile per digit: its 28x28 input, the digit and its confidence.
    tiles = p.locator("#tiles .tile")
    expect(tiles).to_have_count(2)
    for i, digit in enumerate("42"):
        expect(tiles.nth(i).locator(".tile-digit")).to_have_text(digit)
        expect(tiles.nth(i).locator(".tile-confidence")).to_have_text(re.compile(r"^[\d.]+%$"))
    p.wait_for_function(
        "() => Array.from(document.querySelectorAll('#tiles img'))"
        ".every((img) => img.complete && img.naturalWidth === 28)"
    )
    # Each digit's box over the pad, around the strokes of that digit.
    boxes = p.locator("#pad-boxes .box")
    expect(boxes).to_have_count(2)
    pad = p.locator("#pad").bounding_box()
    for i, strokes in enumerate((NUMBER_FOUR, NUMBER_TWO)):
        box = boxes.nth(i).bounding_box()
        for x, y in strokes[0]:
            px, py = pad["x"] + x * pad["width"], pad["y"] + y * pad["height"]
            assert box["x"] - 2 <= px <= box["x"] + box["width"] + 2, (i, x, box)
            assert box["y"] - 2 <= py <= box["y"] + box["height"] + 2, (i, y, box)
    expect(boxes.nth(0).locator(".box-label")).to_have_text("4")
    expect(p.locator("#announce")).to_have_text(re.compile(r"^The model reads the number 42, "))

    # Back to one digit: the square pad, the digit's answer and Look inside, as before.
    digit_radio.check()
    assert p.evaluate(PAD_SIZE) == [280, 280]
    expect(p.locator("#pad-boxes .box")).to_have_count(0)
    expect(p.locator("#number-result")).to_be_hidden()
    expect(p.locator("#inside")).to_be_visible()
    with p.expect_request(lambda r: r.url.endswith("/api/predict")) as request:
        draw(p, SEVEN)
    assert "mode" not in request.value.post_data_json
    expect(p.locator("#digit")).to_have_text("7")


def test_number_mode_reads_an_upload_and_boxes_its_digits(
    page: tuple[object, PageWatch], tmp_path: Path
) -> None:
    p, _ = page
    photo = written_number("2026", tmp_path / "year.png")
    p.get_by_role("tab", name="Upload").click()
    # Read as one digit, four digits are not sure; switching to Number reads them again.
    p.set_input_files("#file", str(photo))
    expect(p.locator("#confidence")).to_have_text("Not sure")
    with p.expect_response(lambda r: r.url.endswith("/api/predict")) as answer:
        p.get_by_role("radio", name="Number").check()
    assert answer.value.json()["number"] == "2026"
    expect(p.locator("#number")).to_have_text("2026")
    expect(p.locator("#tiles .tile")).to_have_count(4)
    boxes = p.locator("#preview-boxes .box")
    expect(boxes).to_have_count(4)
    preview = p.locator("#preview").bounding_box()
    lefts = []
    for box in (boxes.nth(i).bounding_box() for i in range(4)):
        assert (
            preview["x"] <= box["x"]
            and box["x"] + box["width"] <= preview["x"] + preview["width"] + 1
        )
        assert (
            preview["y"] <= box["y"]
            and box["y"] + box["height"] <= preview["y"] + preview["height"] + 1
        )
        lefts.append(box["x"])
    assert lefts == sorted(lefts) and lefts[-1] - lefts[0] > 0.5 * preview["width"]
    expect(p.locator("#message")).to_be_hidden()


def unsure_second_digit(route: object) -> None:
    """The server's real answer to a number, with its last digit made "not sure"."""
    try:
        response = route.fetch()
        body = response.json()
    except PlaywrightError:
        return  # the page closed while this request was in flight
    reason = {"code": "ambiguous", "message": "the model hesitates between two digits"}
    if body.get("digits"):
        body["digits"][-1].update(status="unsure", reason=reason)
        body.update(
            status="unsure", reason={**reason, "message": "Digit 2 of 2: " + reason["message"]}
        )
    with contextlib.suppress(PlaywrightError):
        route.fulfill(response=response, json=body)


def test_a_number_not_sure_is_said_in_words_and_its_digit_marked(
    page: tuple[object, PageWatch],
) -> None:
    p, _ = page
    p.get_by_role("radio", name="Number").check()
    p.route("**/api/predict", unsure_second_digit)
    draw(p, NUMBER_FOUR + NUMBER_TWO)
    expect(p.locator("#number-confidence")).to_have_text("Not sure")
    expect(p.locator("#number")).to_have_class(re.compile(r"\bunsure\b"))
    message = p.locator("#message")
    expect(message).to_contain_text("Not sure: this looks most like 42.")
    expect(message).to_contain_text("Digit 2 of 2: the model hesitates between two digits.")
    tiles = p.locator("#tiles .tile")
    expect(tiles.nth(1)).to_have_class(re.compile(r"\bunsure\b"))
    expect(tiles.nth(1).locator(".tile-confidence")).to_have_text("Not sure")
    expect(tiles.nth(0)).not_to_have_class(re.compile(r"\bunsure\b"))
    expect(p.locator("#pad-boxes .box").nth(1)).to_have_class(re.compile(r"\bunsure\b"))
    expect(p.locator("#announce")).to_contain_text("Not sure. This looks most like 42.")


def test_number_mode_on_a_phone_with_a_finger(
    open_page: Callable[..., tuple[object, object]],
) -> None:
    context, page = open_page(390, 844, touch=True)
    finger = Finger(context, page)
    finger.tap("#mode-number")
    expect(page.get_by_role("radio", name="Number")).to_be_checked()
    # The pad fits the phone's width (two digits wide there), the page does not scroll sideways.
    assert page.evaluate(PAD_SIZE) == [560, 280]
    pad = page.locator("#pad").bounding_box()
    assert pad["x"] >= 0 and pad["x"] + pad["width"] <= 390 and pad["width"] >= 300, pad
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    for selector in ("#mode-switch", "#pad", "#undo", "#clear", "#predict"):
        assert in_view(page, selector), f"{selector} is not on screen"
    # The same 4 and 2, squeezed onto the narrower pad: x from the 840-wide layout.
    squeeze = [[(0.1 + (x - 0.15) * 1.5, y) for x, y in s] for s in NUMBER_FOUR + NUMBER_TWO]
    finger.draw(squeeze)
    expect(page.locator("#strip-digit")).to_have_text("42")
    expect(page.locator("#number")).to_have_text("42")
    assert in_view(page, "#strip") and page.evaluate("() => window.scrollY") == 0
    expect(page.locator("#strip-main")).to_contain_text("% sure")
