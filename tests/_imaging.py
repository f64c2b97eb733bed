"""Hand-made test images: a digit drawn with Pillow, then dressed as the uploads people make
(modes, polarities, encodings, lighting, EXIF tags), and malformed files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

# DejaVu Sans ships inside matplotlib (a dependency), so these tests need no system fonts.
DEJAVU = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def seven(width: int = 160, height: int = 200, stroke: int = 14) -> np.ndarray:
    """Ink coverage in [0, 1] of a hand-drawn-looking 7 (asymmetric, so rotations show)."""
    img = Image.new("L", (width, height), 0)
    d = ImageDraw.Draw(img)
    x0, x1 = int(0.2 * width), int(0.8 * width)
    y0, y1 = int(0.15 * height), int(0.85 * height)
    d.line([(x0, y0), (x1, y0), (int(0.42 * width), y1)], fill=255, width=stroke, joint="curve")
    d.line(
        [(int(0.35 * width), int(0.5 * height)), (int(0.7 * width), int(0.5 * height))],
        fill=255,
        width=stroke,
    )
    return np.asarray(img, np.float32) / 255.0


def font_digit(digit: int, size: int = 160, canvas: int = 240) -> np.ndarray:
    """Ink coverage of a digit in DejaVu Sans, centred on a square canvas."""
    img = Image.new("L", (canvas, canvas), 0)
    font = ImageFont.truetype(str(DEJAVU), size)
    ImageDraw.Draw(img).text(
        (canvas // 2, canvas // 2), str(digit), fill=255, font=font, anchor="mm"
    )
    return np.asarray(img, np.float32) / 255.0


def on_paper(coverage: np.ndarray, paper: float = 0.92, ink: float = 0.1) -> np.ndarray:
    """Gray levels in [0, 1]: dark ink on light paper."""
    return paper * (1 - coverage) + ink * coverage


def gray8(gray: np.ndarray) -> Image.Image:
    """A float [0, 1] array as an 8-bit grayscale Pillow image."""
    return Image.fromarray(np.clip(np.round(gray * 255), 0, 255).astype(np.uint8), "L")


def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    """The bytes of ``img`` saved in ``fmt``."""
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, data and CRC."""
    return (
        struct.pack(">I", len(body))
        + kind
        + body
        + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header claims ``width`` x ``height`` pixels: the
    shape of a decompression bomb (the real ones carry a few kB of zlib'd zeros)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    rows = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", rows)
        + png_chunk(b"IEND", b"")
    )


def with_exif_orientation(upright: Image.Image, orientation: int) -> bytes:
    """A JPEG storing ``upright`` the way a camera does: pixels turned against the EXIF
    orientation tag that turns them back (3: 180 degrees, 6 and 8: quarter turns)."""
    stored = {
        1: upright,
        3: upright.rotate(180),
        6: upright.rotate(90, expand=True),
        8: upright.rotate(-90, expand=True),
    }[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored.convert("RGB"), "JPEG", quality=95, exif=exif.tobytes())


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """(row, column) centre of mass of a 2-D intensity image."""
    a = np.asarray(image, np.float64)
    total = a.sum()
    rows, cols = np.arange(a.shape[0]), np.arange(a.shape[1])
    return float(a.sum(1) @ rows / total), float(a.sum(0) @ cols / total)


def bbox(image: np.ndarray, threshold: int = 0) -> tuple[int, int]:
    """(height, width) of the box around pixels above ``threshold``."""
    ys, xs = np.nonzero(np.asarray(image) > threshold)
    return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of the ink (> 127) of two 28x28 model inputs."""
    ma, mb = np.asarray(a) > 127, np.asarray(b) > 127
    return float((ma & mb).sum() / max(1, (ma | mb).sum()))


# --------------------------------------------------------------------------- scenes
#
# The pieces of the photos and drawings that tests/test_locate.py composes: digits drawn as
# pen strokes or with a round brush, pages (plain, ruled, squared), desks, a sheet
# photographed on a desk, hard shadows. Images are float RGB (H, W, 3) in [0, 1]; ink
# layers are coverage (H, W) in [0, 1]. Boxes are (x0, y0, x1, y1), end exclusive.

# Hand-drawn-looking digits on a unit square (x right, y down): polylines, and elliptic arcs
# (centre, half-axes, start and end angles in degrees, clockwise from +x as in OpenCV).
STROKES: dict[int, list[tuple]] = {
    0: [("arc", (0.5, 0.5), (0.24, 0.34), 0, 360)],
    1: [("line", [(0.40, 0.27), (0.54, 0.15), (0.54, 0.85)])],
    2: [
        ("arc", (0.5, 0.36), (0.22, 0.2), 180, 390),
        ("line", [(0.69, 0.46), (0.27, 0.85), (0.77, 0.85)]),
    ],
    3: [
        ("arc", (0.48, 0.33), (0.21, 0.17), 200, 450),
        ("arc", (0.48, 0.66), (0.24, 0.19), -90, 160),
    ],
    4: [
        ("line", [(0.60, 0.15), (0.24, 0.62), (0.80, 0.62)]),
        ("line", [(0.63, 0.38), (0.63, 0.87)]),
    ],
    5: [
        ("line", [(0.72, 0.15), (0.36, 0.15), (0.33, 0.47)]),
        ("arc", (0.48, 0.64), (0.23, 0.21), -140, 140),
    ],
    7: [("line", [(0.24, 0.17), (0.76, 0.17), (0.42, 0.85)])],
}


def stroke_digit(digit: int, size: int = 200, stroke: int = 14, smooth: bool = True) -> np.ndarray:
    """Ink coverage (size, size) of a digit from ``STROKES`` drawn with a round pen ``stroke``
    pixels wide. ``smooth``: anti-aliased (drawn at 4x, area-averaged down), as a pen on a
    photo; otherwise hard-edged, as a drawing pad's brush."""
    up = 4 if smooth else 1
    side = size * up
    canvas = np.zeros((side, side), np.uint8)
    width = max(1, round(stroke * up))

    def pt(x: float, y: float) -> tuple[int, int]:
        return round(x * side), round(y * side)

    for kind, *spec in STROKES[digit]:
        if kind == "line":
            points = np.int32([pt(x, y) for x, y in spec[0]])
            cv2.polylines(canvas, [points], False, 255, width, cv2.LINE_8)
        else:
            (cx, cy), (ax, ay), start, end = spec
            centre, axes = pt(cx, cy), pt(ax, ay)
            cv2.ellipse(canvas, centre, axes, 0, start, end, 255, width, cv2.LINE_8)
    if up > 1:
        canvas = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    return canvas.astype(np.float32) / 255.0


def ink_box(coverage: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), end exclusive, around the coverage above ``threshold``."""
    ys, xs = np.nonzero(np.asarray(coverage) > threshold)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def place(coverage: np.ndarray, shape: tuple[int, int], x: int, y: int) -> np.ndarray:
    """``coverage`` on an empty (H, W) layer with its top-left corner at (x, y), clipped."""
    layer = np.zeros(shape, np.float32)
    h, w = coverage.shape
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, shape[0]), min(x + w, shape[1])
    layer[y0:y1, x0:x1] = coverage[y0 - y : y1 - y, x0 - x : x1 - x]
    return layer


def paint(image: np.ndarray, coverage: np.ndarray, colour: float | tuple[float, ...]) -> np.ndarray:
    """``image`` (gray or RGB) with ink of ``colour`` laid on where ``coverage`` says."""
    c = coverage[..., None] if image.ndim == 3 else coverage
    return (image * (1.0 - c) + np.asarray(colour, np.float32) * c).astype(np.float32)


def page(
    height: int, width: int, colour: tuple[float, float, float] = (0.94, 0.93, 0.9)
) -> np.ndarray:
    """A plain sheet of paper, lit a little unevenly (brighter towards the top left)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 1.0 - 0.06 * (yy / height + xx / width) / 2
    return np.asarray(colour, np.float32) * light[..., None]


def ruled(
    image: np.ndarray,
    spacing: int,
    margin_x: int | None = None,
    colour: tuple[float, float, float] = (0.62, 0.76, 0.93),
) -> np.ndarray:
    """Ruled paper: light blue lines every ``spacing`` pixels across the whole page, and a
    red margin line at column ``margin_x``. The default blue has a luma of 0.74; printed
    more heavily, or in a dim photo, lines are darker."""
    out = image.copy()
    h, w = out.shape[:2]
    for y in range(spacing, h, spacing):
        cv2.line(out, (0, y), (w - 1, y), colour, 2, cv2.LINE_AA)
    if margin_x is not None:
        cv2.line(out, (margin_x, 0), (margin_x, h - 1), (0.85, 0.25, 0.25), 2, cv2.LINE_AA)
    return out


def squared(image: np.ndarray, spacing: int) -> np.ndarray:
    """Squared (grid) paper: thin gray-blue lines every ``spacing`` pixels both ways."""
    out = image.copy()
    h, w = out.shape[:2]
    for y in range(spacing // 2, h, spacing):
        cv2.line(out, (0, y), (w - 1, y), (0.6, 0.68, 0.8), 1, cv2.LINE_AA)
    for x in range(spacing // 2, w, spacing):
        cv2.line(out, (x, 0), (x, h - 1), (0.6, 0.68, 0.8), 1, cv2.LINE_AA)
    return out


def desk(height: int, width: int, seed: int = 0, wood: bool = False) -> np.ndarray:
    """A desk: dark and slightly mottled, or a textured wooden one (wavy grain, knots of
    darker and lighter streaks)."""
    rng = np.random.default_rng(seed)
    if not wood:
        blotches = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), 8)
        base = 0.22 + 0.04 * blotches / max(1e-6, float(np.abs(blotches).max()))
        return np.repeat(base[..., None], 3, 2) * np.float32([1.0, 0.97, 0.92])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    wobble = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), 25)
    wobble *= 40.0 / max(1e-6, float(np.abs(wobble).max()))
    grain = np.sin((yy + wobble + 0.05 * xx) * 2 * np.pi / 9.0)
    streaks = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), 1.5)
    streaks = cv2.blur(streaks, (31, 1))  # fibres run along the grain
    level = 0.42 + 0.07 * grain + 0.05 * streaks / max(1e-6, float(np.abs(streaks).max()))
    return np.clip(level[..., None] * np.float32([1.0, 0.68, 0.42]), 0, 1)


def photograph(
    sheet: np.ndarray,
    layers: list[np.ndarray],
    surface: np.ndarray,
    corners: list[tuple[float, float]],
) -> tuple[np.ndarray, list[np.ndarray]]:
    """A photo of ``sheet`` lying on ``surface``: the sheet's corners (top left, top right,
    bottom right, bottom left) land on ``corners`` (perspective, rotation). Returns the photo
    and the ``layers`` (coverage on the sheet, such as a digit's ink) warped the same way."""
    h, w = sheet.shape[:2]
    H, W = surface.shape[:2]
    src = np.float32([(0, 0), (w, 0), (w, h), (0, h)])
    m = cv2.getPerspectiveTransform(src, np.float32(corners))

    def warp(a: np.ndarray) -> np.ndarray:
        return cv2.warpPerspective(a, m, (W, H), flags=cv2.INTER_LINEAR, borderValue=0)

    # Outside the sheet the warp gives 0, and along its edge the sheet fades out as its
    # coverage ``alpha`` does: the warped sheet is already weighted by alpha.
    alpha = warp(np.ones((h, w), np.float32))
    photo = paint(surface, alpha, 0.0) + warp(sheet)
    return np.clip(photo, 0, 1), [warp(layer) for layer in layers]


def shadow(
    image: np.ndarray, through: tuple[float, float], angle: float, depth: float = 0.45
) -> np.ndarray:
    """A hard shadow (a hand, a phone) over the side of a line through ``through`` at
    ``angle`` degrees: that side's light falls to ``depth``, with a penumbra of ~3 pixels."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.deg2rad(angle)
    side = (xx - through[0]) * np.sin(a) - (yy - through[1]) * np.cos(a)
    light = depth + (1 - depth) / (1 + np.exp(side / 1.5))
    return (image * (light[..., None] if image.ndim == 3 else light)).astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] as uint8, as a camera or a canvas stores it."""
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
