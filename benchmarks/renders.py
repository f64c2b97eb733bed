"""Renderers of realistic uploads: MNIST digits drawn the way people really send digits,
and things that are not one digit, each encoded to the bytes of a real file (PNG or JPEG).

Used by ``benchmarks/realistic_uploads.py`` and by calibration tools, which import it with
``sys.path.insert(0, "benchmarks")``. Importing it has no side effects: data and fonts are
read only when a function asks for them.

Every digit renderer has the signature ``(digit, rng) -> bytes``: ``digit`` is an MNIST
digit (uint8 28x28, white on black), ``rng`` a ``np.random.Generator``; the bytes are a
JPEG or PNG file as a phone, a scanner or a web canvas would write it.

- ``EXISTING_KINDS``: the kinds of issue 3 (paper photo, thin ballpoint, off-centre,
  rotated, noisy JPEG, transparent canvas, white on black, 16-bit scan, EXIF-rotated, the
  MNIST PNG). Their code is unchanged so that their figures stay comparable.
- ``new_kinds(pool)``: the kinds of issue 9: paper on a dark or wooden desk, a hard
  shadow, ruled and squared paper, pencil, coloured ink, sticky notes, thick marker,
  neighbouring digits (taken from ``pool``), big phone photos up to 12 MP with perspective
  and EXIF rotation, drawing-pad strokes and a small digit in the corner of a large pad.
- ``uci_digits`` and ``uci_scan``: handwriting MNIST never saw (scikit-learn's copy of the
  UCI optical digits, 43 writers, 8x8), shown as scans.
- ``font_files``, ``font_digit``: digits in Debian's handwriting-style fonts.
- ``nondigit_sets(part, seed)``: letters, shapes, scribbles, Fashion-MNIST and two digits
  side by side, in two disjoint parts: "calibration" (for choosing thresholds; built from
  the MNIST validation split, Fashion-MNIST's train file, half of the fonts and its own
  seeds) and "test" (for the benchmark; MNIST test, Fashion-MNIST t10k, the other fonts).

Drawing-pad strokes are MNIST digits turned into a path: the digit is thinned to a
one-pixel skeleton (Zhang-Suen thinning, in NumPy here: no scikit-image needed) and redrawn
with a round brush of uniform width (the distance transform of the skeleton, which gives
the anti-aliased edge of an HTML canvas stroke).
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

Rng = np.random.Generator
Renderer = Callable[[np.ndarray, Rng], bytes]

FONT_DIRS = (Path("/usr/share/fonts/truetype"), Path("/usr/share/fonts/opentype"))
FONT_FAMILIES = (
    "comic-neue",
    "fifthhorseman",
    "breip",
    "bwht",
    "femkeklaver",
    "humor-sans",
    "dancingscript",
)
# Debian packages of the fonts above and of Fashion-MNIST (``make benchmark-data``).
FONT_PACKAGES = (
    "fonts-comic-neue fonts-dkg-handwriting fonts-breip fonts-bwht fonts-femkeklaver "
    "fonts-humor-sans fonts-dancingscript"
)
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

# Shown in the tables, not counted: not what a pen writes (outline lettering: each glyph a
# hollow double contour).
OUTLINE_FONTS = frozenset({"femkeklaver"})

PARTS = ("calibration", "test")
# Which MNIST digits each part of the non-digit sets may use (two digits side by side).
PART_SPLIT = {"calibration": "validation", "test": "test"}


# =========================================================================== the kinds of issue 3
# Unchanged: the README's figures for these kinds come from this code.


def pen_mask(digit: np.ndarray, height: int, rng: Rng, thin: bool = False) -> np.ndarray:
    """An MNIST digit enlarged so its 20-pixel box is ``height`` pixels, with pen-like edges:
    float (h, w) ink coverage in [0, 1]. The threshold varies the stroke thickness; ``thin``
    erodes the strokes to a ballpoint's width, well below MNIST's."""
    side = max(28, round(height * 28 / 20))
    up = Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC)
    if thin:
        up = up.filter(ImageFilter.MinFilter(2 * round(side / 60) + 1))
    soft = np.asarray(up, dtype=np.float32) / 255.0
    t = rng.uniform(0.3, 0.55)
    mask = np.clip((soft - t) / 0.2 + 0.5, 0.0, 1.0)
    ys, xs = np.nonzero(mask > 0.02)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def rotate(mask: np.ndarray, degrees: float) -> np.ndarray:
    """``mask`` rotated by ``degrees`` (counter-clockwise), the canvas grown to hold it."""
    img = Image.fromarray(mask, mode="F")
    return np.asarray(img.rotate(degrees, Image.Resampling.BILINEAR, expand=True), np.float32)


def place(mask: np.ndarray, shape: tuple[int, int], rng: Rng, margin: float = 0.05) -> np.ndarray:
    """Coverage of a full canvas with ``mask`` at a random position inside the margins."""
    h, w = shape
    canvas = np.zeros(shape, np.float32)
    m = int(margin * min(h, w))
    top = rng.integers(m, max(m + 1, h - mask.shape[0] - m))
    left = rng.integers(m, max(m + 1, w - mask.shape[1] - m))
    part = mask[: h - top, : w - left]
    canvas[top : top + part.shape[0], left : left + part.shape[1]] = part
    return canvas


def lighting(shape: tuple[int, int], rng: Rng) -> np.ndarray:
    """Uneven light on paper: a linear gradient in a random direction times a vignette."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h - 0.5, xx / w - 0.5
    angle = rng.uniform(0, 2 * math.pi)
    gradient = 1.0 + rng.uniform(0.2, 0.45) * (np.cos(angle) * xx + np.sin(angle) * yy)
    vignette = 1.0 - rng.uniform(0.1, 0.3) * (xx**2 + yy**2) * 2
    return gradient * vignette


def uneven_light(shape: tuple[int, int], rng: Rng) -> np.ndarray:
    """``lighting`` as float32 (h, w, 1), to multiply an RGB image (float32 is twice as
    fast as NumPy's default float64 on these frames)."""
    return lighting(shape, rng).astype(np.float32)[..., None]


def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    """The bytes of ``img`` saved in ``fmt`` ("PNG", "JPEG") with Pillow's ``options``."""
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def to_rgb8(rgb: np.ndarray) -> Image.Image:
    """A float image in [0, 1] (gray or RGB) as an 8-bit Pillow image."""
    return Image.fromarray(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8))


def paper_rgb(coverage: np.ndarray, rng: Rng, light: bool = True) -> np.ndarray:
    """Ink (a dark blue-black pen) on white-ish paper, under uneven light."""
    paper = np.array([0.93, 0.91, 0.86]) * rng.uniform(0.85, 1.05)
    ink = np.array([0.12, 0.12, 0.2]) * rng.uniform(0.6, 1.4)
    rgb = paper * (1 - coverage[..., None]) + ink * coverage[..., None]
    if light:
        rgb = rgb * lighting(coverage.shape, rng)[..., None]
    return rgb


def photo(digit: np.ndarray, rng: Rng) -> bytes:
    """A phone photo of a digit on paper: 640x480, uneven light, blur, noise, JPEG."""
    shape = (480, 640)
    mask = rotate(pen_mask(digit, int(rng.uniform(0.25, 0.6) * shape[0]), rng), rng.uniform(-8, 8))
    rgb = paper_rgb(place(mask, shape, rng, 0.1), rng)
    img = to_rgb8(rgb).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    noisy = np.asarray(img, np.float32) / 255 + rng.normal(0, 0.025, (*shape, 3))
    return encode(to_rgb8(noisy), "JPEG", quality=int(rng.integers(70, 92)))


def thin_pen(digit: np.ndarray, rng: Rng) -> bytes:
    """A ballpoint digit on a large photo: strokes far thinner than MNIST's, JPEG."""
    shape = (480, 640)
    mask = pen_mask(digit, int(rng.uniform(0.4, 0.7) * shape[0]), rng, thin=True)
    rgb = paper_rgb(place(rotate(mask, rng.uniform(-5, 5)), shape, rng, 0.05), rng)
    noisy = rgb + rng.normal(0, 0.02, rgb.shape)
    return encode(to_rgb8(noisy), "JPEG", quality=int(rng.integers(75, 92)))


def off_centre(digit: np.ndarray, rng: Rng) -> bytes:
    """A small digit somewhere on a large white page (PNG)."""
    shape = (600, 800)
    mask = pen_mask(digit, int(rng.uniform(0.12, 0.25) * shape[0]), rng)
    cov = place(mask, shape, rng, 0.02)
    return encode(to_rgb8(paper_rgb(cov, rng, light=False)), "PNG")


def rotated(digit: np.ndarray, rng: Rng) -> bytes:
    """A digit rotated by up to 15 degrees either way, dark on white (PNG)."""
    mask = rotate(pen_mask(digit, int(rng.uniform(120, 200)), rng), rng.uniform(-15, 15))
    cov = place(mask, (300, 300), rng, 0.03)
    return encode(to_rgb8(paper_rgb(cov, rng, light=False)), "PNG")


def noisy_jpeg(digit: np.ndarray, rng: Rng) -> bytes:
    """Heavy sensor noise and a low JPEG quality on gray paper."""
    shape = (320, 320)
    cov = place(pen_mask(digit, int(rng.uniform(120, 220)), rng), shape, rng, 0.05)
    gray = 0.8 - 0.6 * cov + rng.normal(0, 0.07, shape)
    return encode(
        Image.fromarray(np.clip(gray * 255, 0, 255).astype(np.uint8)),
        "JPEG",
        quality=int(rng.integers(30, 50)),
    )


def canvas_rgba(digit: np.ndarray, rng: Rng) -> bytes:
    """A transparent web canvas with black strokes (alpha = coverage), 280x280 PNG."""
    cov = place(pen_mask(digit, int(rng.uniform(120, 220)), rng), (280, 280), rng, 0.03)
    rgba = np.zeros((280, 280, 4), np.uint8)
    rgba[..., 3] = np.round(cov * 255).astype(np.uint8)
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


def white_on_black(digit: np.ndarray, rng: Rng) -> bytes:
    """A drawing app's white strokes on black, 280x280 RGB PNG."""
    cov = place(pen_mask(digit, int(rng.uniform(120, 220)), rng), (280, 280), rng, 0.03)
    level = rng.uniform(0.8, 1.0)
    return encode(to_rgb8(np.repeat((cov * level)[..., None], 3, axis=2)), "PNG")


def scan_16bit(digit: np.ndarray, rng: Rng) -> bytes:
    """A 16-bit grayscale scan (PNG, mode I;16): paper and ink far above 8-bit values."""
    shape = (500, 400)
    cov = place(pen_mask(digit, int(rng.uniform(150, 300)), rng), shape, rng, 0.05)
    paper, ink = rng.uniform(48000, 60000), rng.uniform(4000, 14000)
    scan = paper * (1 - cov) + ink * cov + rng.normal(0, 500, shape)
    img = Image.fromarray(np.clip(scan, 0, 65535).astype(np.uint16))
    return encode(img, "PNG")


def exif_rotated(digit: np.ndarray, rng: Rng) -> bytes:
    """A camera JPEG stored sideways (or upside down) with the EXIF tag that fixes it."""
    shape = (480, 640)
    mask = pen_mask(digit, int(rng.uniform(0.3, 0.6) * shape[0]), rng)
    upright = to_rgb8(paper_rgb(place(mask, shape, rng, 0.1), rng))
    orientation = int(rng.choice([3, 6, 8]))
    # Store the pixels as the camera would: rotated against the tag's correction.
    stored = {
        3: upright.rotate(180),
        6: upright.rotate(90, expand=True),
        8: upright.rotate(-90, expand=True),
    }[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=90, exif=exif.tobytes())


def as_mnist_png(digit: np.ndarray, rng: Rng) -> bytes:
    """The original 28x28 MNIST digit saved as a PNG: preprocessing must not hurt it."""
    return encode(Image.fromarray(digit), "PNG")


EXISTING_KINDS: dict[str, Renderer] = {
    "paper photo (JPEG, uneven light)": photo,
    "thin ballpoint strokes (JPEG)": thin_pen,
    "off-centre on a large page": off_centre,
    "rotated up to 15 degrees": rotated,
    "noisy low-quality JPEG": noisy_jpeg,
    "transparent canvas (RGBA PNG)": canvas_rgba,
    "white on black": white_on_black,
    "16-bit grayscale scan": scan_16bit,
    "EXIF-rotated JPEG": exif_rotated,
    "MNIST digit as a PNG": as_mnist_png,
}


# =========================================================================== building blocks

# Inks as RGB in [0, 1]: what a pen of that colour looks like on white paper in a photo.
BLUE_BLACK = (0.12, 0.12, 0.2)
INKS = {
    "blue": (0.1, 0.22, 0.68),
    "red": (0.8, 0.12, 0.15),
    "green": (0.08, 0.48, 0.22),
}
MARKERS = ((0.06, 0.06, 0.07), (0.08, 0.14, 0.45), (0.1, 0.1, 0.12))
GRAPHITE = (0.3, 0.3, 0.33)
STICKY_NOTES = ((1.0, 0.92, 0.42), (0.99, 0.95, 0.58), (1.0, 0.88, 0.35))


def jitter(colour: Sequence[float], rng: Rng, amount: float = 0.1) -> np.ndarray:
    """``colour`` with each channel scaled by up to ``amount`` either way (no two pens,
    sheets or lamps are the same)."""
    scaled = np.asarray(colour) * rng.uniform(1 - amount, 1 + amount, 3)
    return np.clip(scaled, 0, 1).astype(np.float32)  # float32 keeps the images float32


def paper_colour(rng: Rng) -> np.ndarray:
    """White-ish paper as a camera sees it: brightness varies, and the white balance
    mostly along the warm-cool axis (lamp against daylight), a little along green-magenta."""
    warm = rng.uniform(-1, 1)
    rgb = np.array([0.93, 0.91, 0.87]) + warm * np.array([0.03, 0.0, -0.05])
    rgb[1] += rng.uniform(-0.012, 0.012)
    return np.clip(rgb * rng.uniform(0.85, 1.04), 0, 1).astype(np.float32)


def ink_over(base: np.ndarray, coverage: np.ndarray, ink: Sequence[float]) -> np.ndarray:
    """Opaque ink of colour ``ink`` laid over the RGB image ``base`` with ``coverage``."""
    c = coverage[..., None]
    return base * (1 - c) + np.asarray(ink, np.float32) * c


def smooth_noise(shape: tuple[int, int], cells: tuple[int, int], rng: Rng) -> np.ndarray:
    """A smooth random field of standard deviation about 1: normal values on a coarse grid of
    ``cells`` (rows, columns), upscaled with cubic interpolation."""
    coarse = rng.standard_normal((max(2, cells[0]), max(2, cells[1]))).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def unit_grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates scaled to [-0.5, 0.5): (yy, xx)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy / h - 0.5, xx / w - 0.5


def paste(canvas: np.ndarray, mask: np.ndarray, top: int, left: int) -> None:
    """Draw ``mask`` into ``canvas`` (in place, keeping the darker ink where they overlap)
    at (top, left), clipped at the canvas edges; either may be negative."""
    h, w = canvas.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + mask.shape[0], h), min(left + mask.shape[1], w)
    if y1 <= y0 or x1 <= x0:
        return
    part = mask[y0 - top : y1 - top, x0 - left : x1 - left]
    np.maximum(canvas[y0:y1, x0:x1], part, out=canvas[y0:y1, x0:x1])


def bbox(coverage: np.ndarray, level: float = 0.5) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the pixels above ``level``, bottom/right exclusive."""
    ys, xs = np.nonzero(coverage > level)
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


def finish(rgb: np.ndarray, rng: Rng, blur: float = 1.0, noise: float = 0.025) -> np.ndarray:
    """A camera's last steps on a float RGB scene: a little defocus (Gaussian blur of up to
    ``blur`` pixels) and sensor noise (standard deviation up to ``noise``)."""
    sigma = rng.uniform(0.3, max(0.31, blur))
    out = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), sigma)
    return out + gaussian_noise(out.shape, rng.uniform(0.4, 1.0) * noise, rng)


def gaussian_noise(shape: tuple[int, ...], sigma: float, rng: Rng) -> np.ndarray:
    """float32 normal noise of standard deviation ``sigma``, drawn by OpenCV (several times
    faster than NumPy on whole frames) from a seed drawn from ``rng``: reproducible."""
    out = np.empty(shape, np.float32)
    cv2.setRNGSeed(int(rng.integers(2**31)))
    # One channel: on a multi-channel array OpenCV takes sigma for the first channel only.
    cv2.randn(out.reshape(shape[0], -1), 0.0, float(sigma))
    return out


def jpeg(rgb: np.ndarray, rng: Rng, quality: tuple[int, int] = (70, 93)) -> bytes:
    """A float RGB image in [0, 1] as a JPEG of a random quality in ``quality``."""
    return encode(to_rgb8(rgb), "JPEG", quality=int(rng.integers(*quality)))


# --------------------------------------------------------------------------- desks


def dark_desk(shape: tuple[int, int], rng: Rng) -> np.ndarray:
    """A dark desk top (black, charcoal, dark blue or brown laminate): blotchy, fine grain,
    and the broad glare of a lamp or window that dark desks reflect."""
    tint = jitter([(1.0, 1.0, 1.0), (0.8, 0.9, 1.1), (1.1, 0.95, 0.8)][rng.integers(3)], rng, 0.05)
    level = rng.uniform(0.05, 0.22)
    blotches = 1 + 0.25 * smooth_noise(shape, (3, 4), rng)
    grain = 1 + 0.08 * cv2.GaussianBlur(rng.standard_normal(shape, np.float32), (0, 0), 0.8)
    yy, xx = unit_grid(shape)
    cy, cx, r = rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(0.2, 0.5)
    glare = 1 + rng.uniform(0.2, 1.2) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return np.clip(level * (blotches * grain * glare)[..., None] * tint, 0, 1)


def wood_desk(shape: tuple[int, int], rng: Rng) -> np.ndarray:
    """A wooden desk: warped growth rings and fine streaks along the grain, in a random
    direction, in light (oak, pine) to dark (walnut) browns."""
    h, w = shape
    side = int(math.hypot(h, w)) + 4
    yy = np.arange(side, dtype=np.float32)[:, None] / side
    # Fine streaks: noise that changes fast across the grain and slowly along it.
    streaks = smooth_noise((side, side), (side // 3, 3), rng)
    warp = smooth_noise((side, side), (3, 4), rng)
    rings = np.sin(2 * np.pi * (yy / rng.uniform(0.05, 0.14) + 0.7 * warp))
    t = np.clip(0.55 + 0.22 * rings + 0.12 * streaks, 0, 1)
    woods = [
        ((0.78, 0.6, 0.4), (0.55, 0.36, 0.2)),  # oak
        ((0.85, 0.7, 0.48), (0.68, 0.5, 0.3)),  # pine
        ((0.42, 0.28, 0.18), (0.22, 0.13, 0.08)),  # walnut
        ((0.62, 0.36, 0.22), (0.4, 0.2, 0.12)),  # cherry
    ]
    light, dark = woods[rng.integers(len(woods))]
    tex = (
        np.asarray(dark, np.float32)
        + (np.asarray(light, np.float32) - np.asarray(dark, np.float32)) * t[..., None]
    )
    m = cv2.getRotationMatrix2D((side / 2, side / 2), rng.uniform(0, 180), 1.0)
    m[0, 2] += w / 2 - side / 2
    m[1, 2] += h / 2 - side / 2
    tex = cv2.warpAffine(tex, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return tex * jitter((1, 1, 1), rng, 0.08)


def light_table(shape: tuple[int, int], rng: Rng) -> np.ndarray:
    """A light gray or beige table: the hardest background for finding a sheet of paper."""
    base = jitter((0.7, 0.7, 0.68), rng, 0.08)
    return np.clip(base * (1 + 0.06 * smooth_noise(shape, (3, 3), rng))[..., None], 0, 1)


DESKS: dict[str, Callable[[tuple[int, int], Rng], np.ndarray]] = {
    "dark": dark_desk,
    "wood": wood_desk,
    "light": light_table,
}


def photograph(
    sheet: np.ndarray,
    desk: np.ndarray,
    rng: Rng,
    keep: tuple[int, int, int, int],
    cover: tuple[float, float] = (0.5, 0.85),
    tilt: float = 10.0,
    perspective: float = 0.05,
) -> np.ndarray:
    """A sheet (float RGB) lying on a desk (float RGB, the frame's size), as a camera sees
    it: the sheet covers a ``cover`` share of the frame, turned by up to ``tilt`` degrees,
    its corners moved by up to ``perspective`` of the frame (a camera not quite parallel),
    with a soft contact shadow on the desk. The box ``keep`` of the sheet (top, left,
    bottom, right: the digit) always ends inside the frame."""
    big_h, big_w = desk.shape[:2]
    h, w = sheet.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    top, left, bottom, right = keep
    keep_pts = np.float32([[left, top], [right, top], [right, bottom], [left, bottom]])
    for _ in range(50):  # redraw the geometry until the digit is in the picture
        s = math.sqrt(rng.uniform(*cover) * big_h * big_w / (h * w))
        half = np.float32([[-w, -h], [w, -h], [w, h], [-w, h]]) * (s / 2)
        a = math.radians(rng.uniform(-tilt, tilt))
        rot = np.float32([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        centre = np.float32([big_w / 2, big_h / 2]) * (1 + rng.uniform(-0.12, 0.12, 2))
        corners = (
            half @ rot.T + centre + rng.uniform(-1, 1, (4, 2)) * perspective * min(big_h, big_w)
        )
        m = cv2.getPerspectiveTransform(src, corners.astype(np.float32))
        pts = cv2.perspectiveTransform(keep_pts[None], m)[0]
        inside = (pts[:, 0].min() > 2) & (pts[:, 1].min() > 2)
        if inside and pts[:, 0].max() < big_w - 2 and pts[:, 1].max() < big_h - 2:
            break
    warped = cv2.warpPerspective(
        sheet.astype(np.float32), m, (big_w, big_h), flags=cv2.INTER_LINEAR
    )
    mask = cv2.warpPerspective(
        np.ones((h, w), np.float32), m, (big_w, big_h), flags=cv2.INTER_LINEAR
    )
    # The sheet's contact shadow: a blurred copy of its outline, shifted away from the light.
    shift = np.float32([[1, 0, rng.uniform(-6, 6)], [0, 1, rng.uniform(2, 8)]])
    shadow = cv2.warpAffine(mask, shift, (big_w, big_h))
    shadow = cv2.GaussianBlur(shadow, (0, 0), rng.uniform(3, 9))
    ground = desk * (1 - rng.uniform(0.2, 0.45) * shadow)[..., None]
    return ground * (1 - mask[..., None]) + warped * mask[..., None]


def sheet_with_digit(
    digit: np.ndarray,
    rng: Rng,
    shape: tuple[int, int],
    height: tuple[float, float] = (0.25, 0.5),
    paper: np.ndarray | None = None,
    ink: Sequence[float] = BLUE_BLACK,
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A flat sheet (float RGB of ``shape``) with the digit written on it, ``height`` of the
    sheet's height tall, slightly slanted, away from the edges; and the digit's box."""
    mask = pen_mask(digit, int(rng.uniform(*height) * shape[0]), rng)
    cov = place(rotate(mask, rng.uniform(-6, 6)), shape, rng, 0.12)
    base = np.ones((*shape, 3), np.float32) * (paper if paper is not None else paper_colour(rng))
    fibres = 1 + 0.01 * smooth_noise(shape, (shape[0] // 2, shape[1] // 2), rng)
    rgb = ink_over(base * fibres[..., None], cov, jitter(ink, rng, 0.3))
    return rgb, bbox(cov, 0.3)


# Phone photos as uploaded (height, width): landscape 640x480 twice as often as the others.
FRAMES = ((480, 640), (600, 800), (640, 480), (480, 640))


def desk_photo(digit: np.ndarray, rng: Rng, desk: str) -> bytes:
    """A phone photo of a sheet of paper with the digit on it lying on a desk: the sheet
    covers 50-85% of the frame, slightly turned and in perspective, under uneven light."""
    frame = FRAMES[rng.integers(len(FRAMES))]
    aspect = frame[1] / frame[0] * rng.uniform(0.8, 1.25)
    sheet_shape = (frame[0], int(frame[0] * aspect))
    sheet, keep = sheet_with_digit(digit, rng, sheet_shape)
    rgb = photograph(sheet, DESKS[desk](frame, rng), rng, keep)
    rgb = rgb * uneven_light(frame, rng)
    return jpeg(finish(rgb, rng, blur=1.2, noise=0.025), rng)


def dark_desk_photo(digit: np.ndarray, rng: Rng) -> bytes:
    """Paper on a dark desk (JPEG)."""
    return desk_photo(digit, rng, "dark")


def wood_desk_photo(digit: np.ndarray, rng: Rng) -> bytes:
    """Paper on a wooden desk (JPEG)."""
    return desk_photo(digit, rng, "wood")


# --------------------------------------------------------------------------- kinds of issue 9


def hard_shadow(digit: np.ndarray, rng: Rng) -> bytes:
    """A hard shadow (a hand's or a phone's) whose edge crosses the digit: the region is
    30-60% darker, a little bluer (lit by the sky only), its edge slightly blurred and
    sometimes bent; sometimes a corner, as a phone's shadow has (640x480 JPEG)."""
    shape = (480, 640)
    mask = rotate(pen_mask(digit, int(rng.uniform(0.3, 0.6) * shape[0]), rng), rng.uniform(-6, 6))
    cov = place(mask, shape, rng, 0.1)
    top, left, bottom, right = bbox(cov)
    # The edge passes through the middle half of the digit's box: it crosses the digit.
    anchor = np.array(
        [
            rng.uniform(left + 0.25 * (right - left), right - 0.25 * (right - left)),
            rng.uniform(top + 0.25 * (bottom - top), bottom - 0.25 * (bottom - top)),
        ]
    )
    bend = rng.uniform(-0.2, 0.2) * (bottom - top)
    region = half_plane(shape, anchor, rng.uniform(0, 2 * math.pi), bend)
    if rng.random() < 0.4:  # a corner: the second edge of a phone's or a finger's shadow
        a2 = rng.uniform(0, 2 * math.pi)
        far = anchor + rng.uniform(0.3, 1.2) * (bottom - top) * np.array(
            [math.cos(a2), math.sin(a2)]
        )
        region &= half_plane(shape, far, a2 + math.pi / 2 + rng.uniform(-0.3, 0.3), 0.0)
    soft = cv2.GaussianBlur(region.astype(np.float32), (0, 0), rng.uniform(1.5, 5.0))
    rgb = paper_rgb(cov, rng)
    darker = rng.uniform(0.3, 0.6)
    rgb = rgb * (1 - darker * soft[..., None] * np.float32([1.0, 0.97, 0.88]))
    return jpeg(finish(rgb, rng, blur=1.0, noise=0.025), rng)


def half_plane(shape: tuple[int, int], point: np.ndarray, angle: float, bend: float) -> np.ndarray:
    """A boolean mask of the pixels on one side of a line through ``point`` at ``angle``
    (radians); the line bows smoothly by ``bend`` pixels over ~200 pixels around the point
    (a hand's edge is not straight)."""
    d = np.array([math.cos(angle), math.sin(angle)])
    n = np.array([-d[1], d[0]])
    reach = 4 * max(shape)
    ts = np.linspace(-1, 1, 801)  # points ~13 pixels apart: the bow is a curve, not a kink
    edge = [point + t * reach * d + bend * math.exp(-((t * reach / 200) ** 2)) * n for t in ts]
    poly = [*edge, point + reach * d + reach * n, point - reach * d + reach * n]
    out = np.zeros(shape, np.uint8)
    cv2.fillPoly(out, [np.round(np.array(poly)).astype(np.int32)], 1)
    return out.astype(bool)


def rules(length: int, size: int, spacing: float, width: float, rng: Rng) -> np.ndarray:
    """Coverage (size, length) of printed lines every ``spacing`` pixels along the first
    axis, ``width`` pixels wide, anti-aliased, starting at a random phase."""
    pos = np.arange(size, dtype=np.float32)[:, None] + rng.uniform(0, spacing)
    dist = np.abs((pos % spacing) - spacing / 2)  # distance to the nearest line
    return np.broadcast_to(np.clip(width / 2 + 0.5 - dist, 0, 1), (size, length))


def print_lines(
    rgb: np.ndarray, coverage: np.ndarray, colour: np.ndarray, strength: float
) -> np.ndarray:
    """Printed (translucent) lines of ``colour``: they tint the paper, the way printer ink
    does, rather than cover it."""
    return rgb * (1 - strength * coverage[..., None] * (1 - colour))


def ruled_paper(digit: np.ndarray, rng: Rng) -> bytes:
    """A digit on ruled paper: blue or gray rules every 0.25-0.5 of the digit's height (it
    is written across several), a red or pink margin line (sometimes double) at the left;
    a phone photo (JPEG)."""
    shape = FRAMES[rng.integers(2)] if rng.random() < 0.7 else (640, 480)
    h, w = shape
    height = rng.uniform(0.3, 0.55) * min(shape)
    mask = rotate(pen_mask(digit, int(height), rng), rng.uniform(-6, 6))
    margin_x = rng.uniform(0.05, 0.2) * w
    cov = np.zeros(shape, np.float32)
    start = int(margin_x + 0.04 * w)
    cov[:, start:] = place(mask, (h, w - start), rng, 0.05)
    rgb = np.ones((*shape, 3), np.float32) * paper_colour(rng)
    rule_colour = jitter([(0.45, 0.62, 0.9), (0.55, 0.57, 0.62)][rng.integers(2)], rng, 0.06)
    lines = rules(w, h, rng.uniform(0.25, 0.5) * height, rng.uniform(1.0, 2.5), rng)
    rgb = print_lines(rgb, lines, rule_colour, rng.uniform(0.5, 0.9))
    margin_colour = jitter([(0.92, 0.4, 0.48), (0.85, 0.2, 0.25)][rng.integers(2)], rng, 0.05)
    xs = [margin_x] + ([margin_x + rng.uniform(4, 8)] if rng.random() < 0.3 else [])
    xx = np.arange(w, dtype=np.float32)[None, :]
    mwidth = rng.uniform(1.5, 3.0)
    margin = np.max([np.clip(mwidth / 2 + 0.5 - np.abs(xx - x), 0, 1) for x in xs], axis=0)
    rgb = print_lines(rgb, np.broadcast_to(margin, shape), margin_colour, rng.uniform(0.6, 0.95))
    rgb = ink_over(rgb, cov, jitter(BLUE_BLACK, rng, 0.3)) * uneven_light(shape, rng)
    return jpeg(finish(rgb, rng), rng)


def grid_paper(digit: np.ndarray, rng: Rng) -> bytes:
    """A digit on squared paper: thin light-blue or gray lines both ways, squares of
    0.3-0.7 of the digit's height, sometimes every fifth line bolder; a phone photo (JPEG)."""
    shape = FRAMES[rng.integers(len(FRAMES))]
    h, w = shape
    height = rng.uniform(0.3, 0.55) * min(shape)
    cov = place(rotate(pen_mask(digit, int(height), rng), rng.uniform(-6, 6)), shape, rng, 0.05)
    spacing, width = rng.uniform(0.3, 0.7) * height, rng.uniform(0.8, 1.8)
    grid = np.maximum(rules(w, h, spacing, width, rng), rules(h, w, spacing, width, rng).T)
    if rng.random() < 0.3:  # engineering paper: every fifth line bolder
        grid = np.maximum(
            grid,
            np.maximum(
                rules(w, h, 5 * spacing, 2 * width, rng), rules(h, w, 5 * spacing, 2 * width, rng).T
            ),
        )
    colour = jitter(
        [(0.5, 0.68, 0.9), (0.6, 0.62, 0.66), (0.45, 0.75, 0.7)][rng.integers(3)], rng, 0.06
    )
    rgb = np.ones((*shape, 3), np.float32) * paper_colour(rng)
    rgb = print_lines(rgb, grid, colour, rng.uniform(0.4, 0.85))
    rgb = ink_over(rgb, cov, jitter(BLUE_BLACK, rng, 0.3)) * uneven_light(shape, rng)
    return jpeg(finish(rgb, rng), rng)


def pencil(digit: np.ndarray, rng: Rng) -> bytes:
    """A pencil digit: gray graphite that catches only the tops of the paper's grain
    (grainy, broken strokes), uneven pressure, low contrast; often thin (JPEG)."""
    shape = (480, 640)
    mask = pen_mask(digit, int(rng.uniform(0.3, 0.65) * shape[0]), rng, thin=rng.random() < 0.5)
    cov = place(rotate(mask, rng.uniform(-6, 6)), shape, rng, 0.08)
    tooth = cv2.GaussianBlur(rng.standard_normal(shape, np.float32), (0, 0), 0.7)
    tooth /= tooth.std()
    grain = np.clip(0.65 + 0.3 * tooth, 0, 1)
    pressure = np.clip(0.8 + 0.15 * smooth_noise(shape, (5, 6), rng), 0.4, 1.0)
    strength = rng.uniform(0.6, 1.0)
    rgb = np.ones((*shape, 3), np.float32) * paper_colour(rng)
    rgb = ink_over(rgb, cov * grain * pressure * strength, jitter(GRAPHITE, rng, 0.15))
    rgb = rgb * uneven_light(shape, rng)
    return jpeg(finish(rgb, rng, blur=0.9, noise=0.02), rng)


def coloured_ink(digit: np.ndarray, rng: Rng) -> bytes:
    """Blue, red or green ink on white paper, sometimes a thin pen; a phone photo (JPEG)."""
    shape = (480, 640)
    ink = INKS[("blue", "red", "green")[rng.integers(3)]]
    mask = pen_mask(digit, int(rng.uniform(0.25, 0.6) * shape[0]), rng, thin=rng.random() < 0.3)
    cov = place(rotate(mask, rng.uniform(-8, 8)), shape, rng, 0.1)
    rgb = np.ones((*shape, 3), np.float32) * paper_colour(rng)
    rgb = ink_over(rgb, cov, jitter(ink, rng, 0.15)) * uneven_light(shape, rng)
    return jpeg(finish(rgb, rng, blur=1.2), rng)


def thicken(mask: np.ndarray, radius: float) -> np.ndarray:
    """``mask`` with its strokes grown by ``radius`` pixels on each side (a felt tip)."""
    r = max(1, round(radius))
    padded = np.pad(mask, r + 1)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(padded, disk)


def sticky_note(digit: np.ndarray, rng: Rng) -> bytes:
    """A digit on a yellow sticky note (pen or marker): the note shaded where it curls
    away from the desk; either filling the frame or lying on a desk (JPEG)."""
    side = int(rng.uniform(400, 560))
    note = np.ones((side, side, 3), np.float32) * jitter(STICKY_NOTES[rng.integers(3)], rng, 0.04)
    yy, _ = unit_grid((side, side))
    curl = 1 - rng.uniform(0.0, 0.12) * np.clip(yy + 0.1, 0, None) ** 1.5 * 2
    note *= curl[..., None]
    height = int(rng.uniform(0.4, 0.7) * side)
    mask = pen_mask(digit, height, rng)
    if rng.random() < 0.5:
        mask = thicken(mask, rng.uniform(0.02, 0.05) * height)
    cov = place(rotate(mask, rng.uniform(-8, 8)), (side, side), rng, 0.08)
    ink = MARKERS[rng.integers(len(MARKERS))] if rng.random() < 0.6 else BLUE_BLACK
    note = ink_over(note, cov, jitter(ink, rng, 0.2))
    if rng.random() < 0.6:
        frame = FRAMES[rng.integers(len(FRAMES))]
        desk = DESKS[("dark", "wood", "light")[rng.integers(3)]](frame, rng)
        rgb = photograph(note, desk, rng, bbox(cov, 0.3), cover=(0.3, 0.7), tilt=15)
    else:  # a close-up: the note fills the frame
        frame = (480, 480)
        rgb = cv2.resize(note, frame, interpolation=cv2.INTER_AREA)
    rgb = rgb * uneven_light(frame, rng)
    return jpeg(finish(rgb, rng), rng)


def thick_marker(digit: np.ndarray, rng: Rng) -> bytes:
    """A felt-tip marker: strokes about twice as thick as MNIST's (a quarter to a third of
    the digit's height), black, blue or red, on paper (JPEG)."""
    shape = (480, 640)
    height = rng.uniform(0.35, 0.65) * shape[0]
    mask = thicken(pen_mask(digit, int(height), rng), rng.uniform(0.04, 0.08) * height)
    cov = place(rotate(mask, rng.uniform(-6, 6)), shape, rng, 0.05)
    ink = (*MARKERS, INKS["red"])[rng.integers(len(MARKERS) + 1)]
    rgb = np.ones((*shape, 3), np.float32) * paper_colour(rng)
    rgb = ink_over(rgb, cov, jitter(ink, rng, 0.15)) * uneven_light(shape, rng)
    return jpeg(finish(rgb, rng), rng)


def neighbours_renderer(pool: np.ndarray) -> Renderer:
    """A renderer of crops out of a written number: the digit with other MNIST digits of
    ``pool`` (uint8 (N, 28, 28)) written beside it, cut by the image's left and/or right
    edge (15-50% of each neighbour visible)."""

    def neighbours(digit: np.ndarray, rng: Rng) -> bytes:
        """The digit between neighbours cut by the image edges (JPEG)."""
        height = rng.uniform(110, 200)
        sides = ("left", "right", "both")[rng.choice(3, p=[0.25, 0.25, 0.5])]
        target = pen_mask(digit, int(height), rng)
        masks = {}
        for side in ("left", "right"):
            if sides in (side, "both"):
                other = pool[rng.integers(len(pool))]
                masks[side] = pen_mask(other, int(height * rng.uniform(0.85, 1.1)), rng)
        frame_h = int(target.shape[0] / rng.uniform(0.5, 0.75))
        pieces, x = [], 0
        if "left" in masks:
            m = masks["left"]
            seen = int(rng.uniform(0.15, 0.5) * m.shape[1])
            pieces.append((m, seen - m.shape[1]))
            x = seen + int(rng.uniform(0.08, 0.35) * height)
        else:
            x = int(rng.uniform(0.15, 0.5) * height)
        pieces.append((target, x))
        x += target.shape[1]
        if "right" in masks:
            m = masks["right"]
            x += int(rng.uniform(0.08, 0.35) * height)
            pieces.append((m, x))
            width = x + int(rng.uniform(0.15, 0.5) * m.shape[1])
        else:
            width = x + int(rng.uniform(0.15, 0.5) * height)
        cov = np.zeros((frame_h, width), np.float32)
        line = (frame_h - target.shape[0]) // 2 + int(rng.integers(-10, 11))
        for m, left in pieces:
            # Digits of a number share a baseline, give or take the writer's wobble.
            paste(cov, m, line + target.shape[0] - m.shape[0] + int(rng.integers(-6, 7)), left)
        rgb = paper_rgb(cov, rng)
        return jpeg(finish(rgb, rng), rng)

    return neighbours


BIG_FRAMES = ((1200, 1600), (1536, 2048), (2448, 3264), (3000, 4000))
BIG_FRAME_P = (0.45, 0.3, 0.17, 0.08)  # 12 MP: ~1 in 12 (each takes ~0.5 s to render)


def big_phone_photo(
    digit: np.ndarray,
    rng: Rng,
    frame: tuple[int, int] | None = None,
    orientation: int | None = None,
    quality: int | None = None,
) -> bytes:
    """A full-size phone photo: 1600x1200 to 4000x3000 (12 MP), a sheet on a desk (or the
    sheet filling the frame) in slight perspective, stored sideways or upside down with
    the EXIF orientation tag (3, 6, 8) a third of the time.

    The scene is composed at about 1000 pixels and upscaled (a phone's own processing
    leaves no sharper detail than that at the pixel level), then sensor noise is added at
    full size. ``frame`` (height, width), ``orientation`` (1: upright) and ``quality`` fix
    what is otherwise drawn at random."""
    if frame is None:
        frame = BIG_FRAMES[rng.choice(len(BIG_FRAMES), p=BIG_FRAME_P)]
    if orientation is None:
        orientation = int(rng.choice([1, 1, 1, 1, 1, 1, 3, 6, 8]))
    if quality is None:
        quality = int(rng.integers(85, 96))
    h, w = frame
    k = max(1, math.ceil(max(h, w) / 1024))
    small = (h // k, w // k)
    sheet_shape = (small[0], int(small[1] * rng.uniform(0.8, 1.25)))
    sheet, keep = sheet_with_digit(digit, rng, sheet_shape, height=(0.2, 0.45))
    if rng.random() < 0.25:  # the sheet fills the frame: only perspective shows
        rgb = photograph(sheet, light_table(small, rng), rng, keep, cover=(1.1, 1.3), tilt=3)
    else:
        desk = DESKS[("dark", "wood", "light")[rng.integers(3)]](small, rng)
        rgb = photograph(sheet, desk, rng, keep, cover=(0.45, 0.85), tilt=8, perspective=0.07)
    rgb = cv2.GaussianBlur(rgb * uneven_light(small, rng), (0, 0), 0.6)
    small8 = np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)
    big = cv2.resize(small8, (w, h), interpolation=cv2.INTER_CUBIC)
    # Sensor noise as a phone leaves it: luminance only (its denoiser removes the colour
    # noise) and correlated over about 2 pixels (demosaicing), so drawn at half size with
    # OpenCV's generator (the fast one, seeded from ours) and each value repeated 2x2. It
    # also gives the file a phone's size: ~2 MB at quality 90, not the ~1 MB of a clean image.
    noise = np.empty((h // 2, w // 2), np.int16)
    cv2.setRNGSeed(int(rng.integers(2**31)))
    cv2.randn(noise, 0, rng.uniform(2.5, 5.0))
    noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_NEAREST)
    noise = cv2.merge([noise, noise, noise])
    big = cv2.add(big, noise, dtype=cv2.CV_8U)
    img = Image.fromarray(big)
    # Store the pixels as the camera does: turned against the tag's correction.
    turn = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90}
    turn[8] = Image.Transpose.ROTATE_270
    stored = img.transpose(turn[orientation]) if orientation in turn else img
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=quality, exif=exif.tobytes())


# --------------------------------------------------------------------------- drawing pads


def thin(mask: np.ndarray) -> np.ndarray:
    """The one-pixel skeleton of a boolean mask (Zhang-Suen thinning): the path a pen
    would follow to draw the shape."""
    img = np.pad(mask.astype(np.uint8), 1)
    while True:
        changed = False
        for step in (0, 1):
            c = img[1:-1, 1:-1]
            # The 8 neighbours clockwise from north: P2 .. P9.
            p = [
                img[:-2, 1:-1],
                img[:-2, 2:],
                img[1:-1, 2:],
                img[2:, 2:],
                img[2:, 1:-1],
                img[2:, :-2],
                img[1:-1, :-2],
                img[:-2, :-2],
            ]
            count = sum(q.astype(np.int16) for q in p)
            transitions = sum(
                ((p[i] == 0) & (p[(i + 1) % 8] == 1)).astype(np.int16) for i in range(8)
            )
            if step == 0:
                side = (p[0] * p[2] * p[4] == 0) & (p[2] * p[4] * p[6] == 0)
            else:
                side = (p[0] * p[2] * p[6] == 0) & (p[0] * p[4] * p[6] == 0)
            remove = (c == 1) & (count >= 2) & (count <= 6) & (transitions == 1) & side
            if remove.any():
                c[remove] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


def brush(skeleton: np.ndarray, width: float) -> np.ndarray:
    """Coverage of a round brush ``width`` pixels wide dragged along ``skeleton`` (boolean),
    anti-aliased like a canvas stroke, on a canvas grown to hold it."""
    pad = math.ceil(width / 2) + 2
    src = np.pad(~skeleton, pad, constant_values=True).astype(np.uint8)
    dist = cv2.distanceTransform(src, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.clip(width / 2 + 0.5 - dist, 0, 1).astype(np.float32)


def neighbour_count(skeleton: np.ndarray) -> np.ndarray:
    """For each pixel, how many of its 8 neighbours are set in ``skeleton``."""
    k = np.ones((3, 3), np.float32)
    k[1, 1] = 0
    return cv2.filter2D(skeleton.astype(np.float32), -1, k, borderType=cv2.BORDER_CONSTANT)


def prune(skeleton: np.ndarray, length: int) -> np.ndarray:
    """``skeleton`` without its side branches shorter than ``length`` pixels (thinning
    leaves such spurs at every bump of the outline; a pen draws none). The branches are
    eaten from their ends, then the real ends grow back along the old skeleton."""
    s = skeleton.copy()
    for _ in range(length):
        ends = s & (neighbour_count(s) == 1)
        if not ends.any():
            break
        s &= ~ends
    grown, frontier = s.copy(), s & (neighbour_count(s) <= 1)
    for _ in range(length):
        frontier = cv2.dilate(frontier.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        frontier &= skeleton & ~grown
        if not frontier.any():
            break
        grown |= frontier
    return grown


def digit_strokes(digit: np.ndarray, height: float, width: float, rng: Rng) -> np.ndarray:
    """The MNIST digit redrawn with a uniform round brush: its skeleton at ``height``
    pixels (the outline smoothed first, spurs pruned), stroked ``width`` pixels wide;
    coverage cropped to the ink."""
    mask = pen_mask(digit, int(height), rng)
    mask = cv2.GaussianBlur(np.pad(mask, 4), (0, 0), max(0.5, height / 60)) > 0.5
    skeleton = prune(thin(mask), max(2, round(height / 12)))
    cov = brush(skeleton, width)
    top, left, bottom, right = bbox(cov, 0.02)
    return cov[top:bottom, left:right]


def pad_file(cov: np.ndarray, rng: Rng, transparent: bool | None = None) -> bytes:
    """A drawing pad's export of black strokes of coverage ``cov``: a transparent canvas
    (RGBA, alpha = coverage, what ``canvas.toDataURL()`` gives when nothing was painted
    under the strokes), or white paper (opaque RGBA or RGB) (PNG)."""
    if transparent is None:
        transparent = rng.random() < 0.5
    a = np.round(cov * 255).astype(np.uint8)
    if transparent:
        rgba = np.zeros((*cov.shape, 4), np.uint8)
        rgba[..., 3] = a
        return encode(Image.fromarray(rgba, "RGBA"), "PNG")
    gray = 255 - a
    if rng.random() < 0.5:
        rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
        return encode(Image.fromarray(rgba, "RGBA"), "PNG")
    return encode(Image.fromarray(np.dstack([gray, gray, gray])), "PNG")


def pad_drawing(digit: np.ndarray, rng: Rng) -> bytes:
    """A digit drawn on a 280x280 pad with a uniform round brush 10-26 pixels wide, black on
    white or on a transparent canvas (PNG)."""
    width = rng.uniform(10, 26)
    height = rng.uniform(130, 250 - width)
    cov = place(digit_strokes(digit, height, width, rng), (280, 280), rng, 0.02)
    return pad_file(cov, rng)


def pad_corner(digit: np.ndarray, rng: Rng) -> bytes:
    """A small digit (40-70 pixels tall) drawn in a corner of a large pad (280-500 pixels),
    with a brush a tenth to a fifth of its height (PNG)."""
    side = int(rng.integers(280, 501))
    height = rng.uniform(40, 70)
    cov_digit = digit_strokes(digit, height, max(3.0, height * rng.uniform(0.1, 0.2)), rng)
    dh, dw = cov_digit.shape
    gap_y, gap_x = (int(rng.uniform(0.02, 0.12) * side) for _ in range(2))
    top = gap_y if rng.random() < 0.5 else side - dh - gap_y
    left = gap_x if rng.random() < 0.5 else side - dw - gap_x
    cov = np.zeros((side, side), np.float32)
    paste(cov, cov_digit, top, left)
    return pad_file(cov, rng)


def new_kinds(pool: np.ndarray) -> dict[str, Renderer]:
    """The kinds of issue 9, by name; ``pool`` (uint8 (N, 28, 28) MNIST digits of the same
    split) supplies the neighbouring digits."""
    return {
        "paper on a dark desk": dark_desk_photo,
        "paper on a wooden desk": wood_desk_photo,
        "hard shadow across the digit": hard_shadow,
        "ruled paper, margin line": ruled_paper,
        "squared (grid) paper": grid_paper,
        "pencil": pencil,
        "coloured ink (blue, red, green)": coloured_ink,
        "yellow sticky note": sticky_note,
        "thick marker": thick_marker,
        "neighbouring digits cut at the edges": neighbours_renderer(pool),
        "big phone photo (2-12 MP, perspective, EXIF)": big_phone_photo,
        "drawing pad, round brush 10-26 px": pad_drawing,
        "small digit in a corner of a large pad": pad_corner,
    }


# =========================================================================== UCI writers


def uci_digits(part: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Half of scikit-learn's copy of the UCI optical digits (float (N, 8, 8) in 0..16,
    labels): "validation" or "test" (a fixed, seeded split of the 1,797 so that tuning
    never sees the test half). None when scikit-learn is not installed."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        return None
    bunch = load_digits()
    order = np.random.default_rng(9).permutation(len(bunch.target))
    half = order[: len(order) // 2] if part == "validation" else order[len(order) // 2 :]
    return bunch.images[half].astype(np.float32), bunch.target[half].astype(np.int64)


def uci_scan(image: np.ndarray, rng: Rng) -> bytes:
    """An 8x8 UCI digit (values 0..16: the ink count of each 4x4 block of the writer's
    32x32 bitmap) upscaled smoothly to 100-200 pixels and shown as a grayscale scan: dark
    ink on light paper with a margin, a little noise, PNG or JPEG."""
    side = int(rng.integers(100, 201))
    # Blank cells around the 8x8 first, so that strokes touching its edge fade out smoothly
    # instead of being cut square by the resize's edge replication.
    framed = np.pad(image.astype(np.float32) / 16, 2)
    up = cv2.resize(framed, (side * 12 // 8, side * 12 // 8), interpolation=cv2.INTER_CUBIC)
    # Ink is solid: the cells' partial counts become a soft edge, not a gray wash.
    cov = np.clip((up - 0.15) / 0.6, 0, 1)
    margin = int(rng.uniform(0.0, 0.3) * side)
    cov = np.pad(cov, margin)
    cov = np.roll(cov, (int(rng.integers(-5, 6)), int(rng.integers(-5, 6))), axis=(0, 1))
    paper, ink = rng.uniform(0.82, 0.97), rng.uniform(0.05, 0.3)
    noise = rng.normal(0, rng.uniform(0.005, 0.03), cov.shape)
    gray = paper * (1 - cov) + ink * cov + noise
    img = Image.fromarray(np.clip(gray * 255 + 0.5, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        return encode(img, "PNG")
    return encode(img, "JPEG", quality=int(rng.integers(80, 96)))


# =========================================================================== fonts


def font_files() -> tuple[list[Path], list[str]]:
    """Installed fonts of the handwriting-style families, and the families missing."""
    files, missing = [], []
    for family in FONT_FAMILIES:
        found = sorted(
            p for d in FONT_DIRS for p in (d / family).glob("*") if p.suffix in (".ttf", ".otf")
        )
        files.extend(found)
        if not found:
            missing.append(family)
    return files, missing


def font_family(path: Path) -> str:
    """The family folder of an installed font file ("comic-neue", "femkeklaver", ...)."""
    return path.parent.name


def has_glyphs(font: ImageFont.FreeTypeFont, chars: str) -> bool:
    """False when the font draws its 'missing glyph' box (or nothing) for any of ``chars``."""
    missing = np.asarray(font.getmask("\ue000")).tobytes()
    for ch in chars:
        mask = np.asarray(font.getmask(ch))
        if mask.size == 0 or not mask.any() or mask.tobytes() == missing:
            return False
    return True


def has_digits(font: ImageFont.FreeTypeFont) -> bool:
    """False when the font draws its 'missing glyph' box for digits."""
    return has_glyphs(font, "0123456789")


def font_digit(font: ImageFont.FreeTypeFont, digit: int | str, angle: float) -> Image.Image:
    """One character, black on white, on a 256x256 page, rotated by ``angle`` degrees."""
    page = Image.new("L", (256, 256), 255)
    ImageDraw.Draw(page).text((128, 128), str(digit), fill=0, font=font, anchor="mm")
    return page.rotate(angle, Image.Resampling.BILINEAR, fillcolor=255)


# Printed fonts that ship with matplotlib (always installed with the project): letters in
# shapes MNIST never saw.
PRINT_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf", "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmti10.ttf", "cmb10.ttf",
)  # fmt: skip


def print_font_files() -> list[Path]:
    """The printed fonts of ``PRINT_FONTS`` found in matplotlib's data directory."""
    import matplotlib

    root = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [root / name for name in PRINT_FONTS if (root / name).is_file()]


def split_fonts(files: Sequence[Path], part: str) -> list[Path]:
    """Every other font of ``files`` (sorted by family and name): the even ones for
    "calibration", the odd ones for "test", so that the two parts share no font file."""
    ordered = sorted(files, key=lambda p: (font_family(p), p.name))
    return ordered[PARTS.index(part) :: 2]


# =========================================================================== non-digits

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# The same glyph as a digit in most fonts (O/o as 0, I/l as 1): reported, not counted.
DIGIT_LIKE = "OoIl"


@dataclass(frozen=True)
class NonDigitSet:
    """Images that are not one digit, which the product should answer "unsure" (or "no
    digit"): ``what`` names each image's content; ``counted`` is False for sets reported
    beside the target (letters shaped like digits)."""

    name: str
    images: list[bytes]
    what: list[str]
    counted: bool = True


def glyph_coverage(font: ImageFont.FreeTypeFont, ch: str, angle: float) -> np.ndarray:
    """Ink coverage (float, cropped) of one character of ``font``, turned by ``angle``."""
    page = np.asarray(font_digit(font, ch, angle), np.float32)
    cov = 1 - page / 255
    top, left, bottom, right = bbox(cov, 0.1)
    return cov[top:bottom, left:right]


def letter_image(font: ImageFont.FreeTypeFont, ch: str, rng: Rng) -> bytes:
    """A letter as a page (PNG, like the font digits) or photographed on paper (JPEG)."""
    angle = rng.uniform(-8, 8)
    if rng.random() < 0.5:
        return encode(font_digit(font, ch, angle), "PNG")
    cov = glyph_coverage(font, ch, angle)
    scale = rng.uniform(0.25, 0.55) * 480 / max(cov.shape)
    cov = cv2.resize(cov, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    return paper_photo(cov, rng)


def paper_photo(mask: np.ndarray, rng: Rng) -> bytes:
    """Ink coverage ``mask`` written on paper and photographed: 640x480, uneven light,
    blur, noise (JPEG)."""
    shape = (480, 640)
    cov = place(rotate(mask, rng.uniform(-6, 6)), shape, rng, 0.08)
    rgb = ink_over(
        np.ones((*shape, 3), np.float32) * paper_colour(rng), cov, jitter(BLUE_BLACK, rng, 0.3)
    )
    return jpeg(finish(rgb * uneven_light(shape, rng), rng), rng)


LETTER_SETS = {
    "print": "letters, printed fonts",
    "hand": "letters, handwriting fonts",
    "like": "letters shaped like digits: O o I l (not counted)",
}


def letter_set(part: str, which: str, rng: Rng) -> NonDigitSet:
    """Letters in the part's fonts (each font file is in one part only): ``which`` is
    "print" (A-Z a-z but O o I l, matplotlib's printed fonts), "hand" (the same in the
    handwriting fonts) or "like" (O o I l in both: the same glyph as 0 or 1, not counted)."""
    hand_files, _ = font_files()
    groups = {"print": print_font_files(), "hand": hand_files}
    chosen = groups if which == "like" else {which: groups[which]}
    paths = [p for files in chosen.values() for p in split_fonts(files, part)]
    chars = DIGIT_LIKE if which == "like" else "".join(c for c in LETTERS if c not in DIGIT_LIKE)
    images, what = [], []
    for path in paths:
        font = ImageFont.truetype(str(path), 150)
        for ch in chars:
            if has_glyphs(font, ch):
                images.append(letter_image(font, ch, rng))
                what.append(f"{ch} ({path.stem})")
    return NonDigitSet(LETTER_SETS[which], images, what, counted=which != "like")


# --------------------------------------------------------------------------- shapes


def _circle(
    cx: float, cy: float, r: float, a0: float = 0.0, a1: float = 2 * math.pi, n: int = 60
) -> np.ndarray:
    t = np.linspace(a0, a1, n)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _polygon(n: int, r_outer: float, r_inner: float | None = None) -> np.ndarray:
    """A closed regular polygon (or a star when ``r_inner`` is given) in the unit box."""
    k = 2 * n if r_inner is not None else n
    radii = [r_outer if i % 2 == 0 or r_inner is None else r_inner for i in range(k)]
    t = -math.pi / 2 + 2 * math.pi * np.arange(k + 1) / k
    r = np.array([*radii, radii[0]])
    return np.stack([0.5 + r * np.cos(t), 0.5 + r * np.sin(t)], axis=1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 80)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([0.5 + x / 34, 0.45 - y / 34], axis=1)


def _spiral(rng: Rng) -> list[np.ndarray]:
    turns = rng.uniform(2, 3.5)
    t = np.linspace(0, 2 * math.pi * turns, 200)
    r = 0.45 * t / t[-1]
    return [np.stack([0.5 + r * np.cos(t), 0.5 + r * np.sin(t)], axis=1)]


def _points(text: str) -> np.ndarray:
    """A polyline from "x,y x,y ..." in percent of the unit box (compact to write)."""
    return np.array([[float(v) / 100 for v in p.split(",")] for p in text.split()])


def _sun(rng: Rng) -> list[np.ndarray]:
    rays = []
    for a in np.arange(8) * math.pi / 4 + rng.uniform(0, math.pi / 4):
        d = np.array([math.cos(a), math.sin(a)])
        rays.append(np.stack([0.5 + 0.28 * d, 0.5 + 0.47 * d]))
    return [_circle(0.5, 0.5, 0.2), *rays]


# Each shape: a function of the rng giving its strokes (polylines in the unit box, y down).
SHAPES: dict[str, Callable[[Rng], list[np.ndarray]]] = {
    "star": lambda rng: [_polygon(5, 0.5, rng.uniform(0.18, 0.25))],
    "pentagram": lambda rng: [_polygon(5, 0.5)[[0, 2, 4, 1, 3, 0]]],
    "triangle": lambda rng: [_polygon(3, 0.5)],
    "square": lambda rng: [np.array([[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9], [0.1, 0.1]])],
    "heart": lambda rng: [_heart()],
    "arrow": lambda rng: [
        np.array([[0.05, 0.5], [0.95, 0.5]]),
        np.array([[0.65, 0.25], [0.95, 0.5], [0.65, 0.75]]),
    ],
    "plus": lambda rng: [
        np.array([[0.5, 0.05], [0.5, 0.95]]),
        np.array([[0.05, 0.5], [0.95, 0.5]]),
    ],
    "cross": lambda rng: [np.array([[0.1, 0.1], [0.9, 0.9]]), np.array([[0.9, 0.1], [0.1, 0.9]])],
    "smiley": lambda rng: [
        _circle(0.5, 0.5, 0.45),
        _circle(0.35, 0.38, 0.04, n=12),
        _circle(0.65, 0.38, 0.04, n=12),
        _circle(0.5, 0.5, 0.27, 0.2 * math.pi, 0.8 * math.pi, 30),
    ],
    "spiral": _spiral,
    "check mark": lambda rng: [np.array([[0.1, 0.55], [0.38, 0.85], [0.9, 0.1]])],
    "house": lambda rng: [_points("15,45 15,95 85,95 85,45 15,45 50,8 85,45")],
    "sun": _sun,
    "lightning": lambda rng: [np.array([[0.6, 0.02], [0.3, 0.5], [0.6, 0.5], [0.35, 0.98]])],
}


def _smooth_curve(rng: Rng) -> list[np.ndarray]:
    """A random smooth curve through 6-10 random points (Catmull-Rom spline)."""
    pts = rng.uniform(0, 1, (int(rng.integers(6, 11)), 2))
    pts = np.vstack([pts[:1], pts, pts[-1:]])
    out = []
    for i in range(1, len(pts) - 2):
        p0, p1, p2, p3 = pts[i - 1], pts[i], pts[i + 1], pts[i + 2]
        t = np.linspace(0, 1, 20)[:, None]
        out.append(
            0.5
            * (
                2 * p1
                + (-p0 + p2) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
            )
        )
    return [np.vstack(out)]


def _zigzag(rng: Rng) -> list[np.ndarray]:
    """A zig-zag of 5-12 strokes, sometimes in a column (like a scratch-out)."""
    n = int(rng.integers(5, 13))
    xs = np.linspace(0.05, 0.95, n)
    ys = np.where(np.arange(n) % 2 == 0, rng.uniform(0.05, 0.3, n), rng.uniform(0.7, 0.95, n))
    pts = np.stack([xs, ys], axis=1)
    return [pts[:, ::-1] if rng.random() < 0.3 else pts]


def _hatching(rng: Rng) -> list[np.ndarray]:
    """4-10 parallel strokes, sometimes crossed by a second set (shading)."""
    lines = []
    for angle in [rng.uniform(0, math.pi)] + (
        [rng.uniform(0, math.pi)] if rng.random() < 0.4 else []
    ):
        d = np.array([math.cos(angle), math.sin(angle)])
        n = np.array([-d[1], d[0]])
        for off in np.linspace(-0.4, 0.4, int(rng.integers(4, 11))):
            c = 0.5 + off * n
            lines.append(np.stack([c - 0.45 * d, c + 0.45 * d]))
    return lines


SCRIBBLES: dict[str, Callable[[Rng], list[np.ndarray]]] = {
    "smooth curve": _smooth_curve,
    "zig-zag": _zigzag,
    "hatching": _hatching,
}


def hand_drawn(strokes: list[np.ndarray], size: float, rng: Rng) -> list[np.ndarray]:
    """Strokes in the unit box as a hand draws them at ``size`` pixels: turned by up to
    15 degrees, stretched by up to 20%, each point wobbling smoothly by 1-3% of the size."""
    a = math.radians(rng.uniform(-15, 15))
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    stretch = rng.uniform(0.8, 1.2, 2)
    out = []
    for s in strokes:
        # Resample densely so that the wobble bends straight segments too.
        seg = np.linalg.norm(np.diff(s, axis=0), axis=1)
        t = np.concatenate([[0], np.cumsum(seg)])
        dense_t = np.linspace(0, t[-1], max(2, int(t[-1] * 80)))
        dense = np.stack([np.interp(dense_t, t, s[:, 0]), np.interp(dense_t, t, s[:, 1])], axis=1)
        # A smooth wobble: random offsets at a few points along the stroke, interpolated.
        k = int(rng.integers(3, 8))
        knots = rng.normal(0, 1, (k, 2))
        at = np.linspace(0, 1, len(dense))
        wobble = np.stack(
            [np.interp(at, np.linspace(0, 1, k), knots[:, i]) for i in (0, 1)], axis=1
        )
        wobble *= rng.uniform(0.01, 0.03)
        out.append(((dense - 0.5 + wobble) * stretch) @ rot.T * size)
    return out


def stroke_coverage(strokes: list[np.ndarray], width: float) -> np.ndarray:
    """Coverage (cropped) of pixel-coordinate polylines drawn with a round brush."""
    pts = np.vstack(strokes)
    origin = pts.min(axis=0) - 1
    extent = np.ceil(pts.max(axis=0) - origin).astype(int) + 2
    skeleton = np.zeros((extent[1], extent[0]), np.uint8)
    for s in strokes:
        cv2.polylines(
            skeleton, [np.round((s - origin) * 16).astype(np.int32)], False, 1, 1, cv2.LINE_8, 4
        )
    cov = brush(skeleton.astype(bool), width)
    top, left, bottom, right = bbox(cov, 0.02)
    return cov[top:bottom, left:right]


def drawing_images(strokes: list[np.ndarray], rng: Rng, style: str) -> bytes:
    """Hand-drawn ``strokes`` (unit box) on a 280x280 pad with the canvas brush
    (``style`` "pad") or in pen on paper, photographed (``style`` "paper")."""
    if style == "pad":
        width = rng.uniform(10, 26)
        cov = stroke_coverage(hand_drawn(strokes, rng.uniform(120, 240 - width), rng), width)
        return pad_file(place(cov, (280, 280), rng, 0.02), rng)
    size = rng.uniform(0.3, 0.6) * 480
    cov = stroke_coverage(hand_drawn(strokes, size, rng), size * rng.uniform(0.04, 0.1))
    return paper_photo(cov, rng)


DRAWN = {"shapes": SHAPES, "scribbles": SCRIBBLES}
STYLES = {"pad": "drawing pad", "paper": "paper photo"}


def drawing_set_name(family: str, style: str) -> str:
    """The name of a set of drawn shapes or scribbles."""
    return f"{family} ({', '.join(list(DRAWN[family])[:4])}, ...), {STYLES[style]}"


def drawing_set(family: str, style: str, rng: Rng, per_set: int) -> NonDigitSet:
    """``per_set`` hand-drawn ``family`` ("shapes" or "scribbles") images, each kind in
    turn, in ``style`` ("pad" or "paper")."""
    table = DRAWN[family]
    names = list(table)
    images, what = [], []
    for i in range(per_set):
        name = names[i % len(names)]
        images.append(drawing_images(table[name](rng), rng, style))
        what.append(name)
    return NonDigitSet(drawing_set_name(family, style), images, what)


# --------------------------------------------------------------------------- Fashion-MNIST

FASHION_CLASSES = (
    "T-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip


def fashion_files(part: str) -> tuple[Path, Path] | None:
    """The (images, labels) files of Debian's dataset-fashion-mnist for ``part``: the train
    file for "calibration", t10k for "test". None when the package is not installed."""
    prefix = "train" if part == "calibration" else "t10k"
    images = FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz"
    labels = FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    return (images, labels) if images.is_file() and labels.is_file() else None


def fashion_images(part: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Fashion-MNIST images (uint8 (N, 28, 28)) and labels of ``part``'s file, or None."""
    from mnist_cnn import data

    files = fashion_files(part)
    if files is None:
        return None
    return data.read_idx(files[0]), data.read_idx(files[1])


def fashion_photo(item: np.ndarray, rng: Rng) -> bytes:
    """A Fashion-MNIST item upscaled smoothly and printed dark on paper, photographed."""
    size = rng.uniform(0.35, 0.7) * 480
    up = cv2.resize(
        item.astype(np.float32) / 255, (int(size), int(size)), interpolation=cv2.INTER_CUBIC
    )
    return paper_photo(np.clip(up, 0, 1), rng)


FASHION_SETS = {"png": "Fashion-MNIST 28x28 PNG", "photo": "Fashion-MNIST photographed on paper"}


def fashion_set(part: str, style: str, rng: Rng, per_set: int) -> NonDigitSet:
    """``per_set`` Fashion-MNIST items of the part's file, as 28x28 PNGs (white on black,
    like MNIST: ``style`` "png") or photographed on paper (``style`` "photo")."""
    loaded = fashion_images(part)
    if loaded is None:
        raise FileNotFoundError(f"Fashion-MNIST not found in {FASHION_DIR}")
    items, labels = loaded
    index = rng.choice(len(items), size=per_set, replace=False)
    if style == "png":
        images = [encode(Image.fromarray(items[i]), "PNG") for i in index]
    else:
        images = [fashion_photo(items[i], rng) for i in index]
    return NonDigitSet(FASHION_SETS[style], images, [FASHION_CLASSES[labels[i]] for i in index])


# --------------------------------------------------------------------------- two digits


def two_digits(first: np.ndarray, second: np.ndarray, rng: Rng, style: str) -> bytes:
    """Two MNIST digits side by side (a two-digit number): on a pad with the canvas brush
    (``style`` "pad") or in pen on paper, photographed (``style`` "paper")."""
    if style == "pad":
        width = rng.uniform(10, 22)
        height = rng.uniform(100, 150)
        masks = [
            digit_strokes(d, height * rng.uniform(0.9, 1.1), width, rng) for d in (first, second)
        ]
        shape = (280, 280)
    else:
        height = rng.uniform(0.25, 0.45) * 480
        masks = [pen_mask(d, int(height * rng.uniform(0.9, 1.1)), rng) for d in (first, second)]
        shape = (480, 640)
    gap = int(rng.uniform(0.05, 0.3) * height)
    h = max(m.shape[0] for m in masks)
    pair = np.zeros((h, masks[0].shape[1] + gap + masks[1].shape[1]), np.float32)
    paste(pair, masks[0], h - masks[0].shape[0], 0)
    paste(pair, masks[1], h - masks[1].shape[0], masks[0].shape[1] + gap)
    if pair.shape[1] > shape[1] - 4:  # too wide for the pad: draw it a little smaller
        scale = (shape[1] - 8) / pair.shape[1]
        pair = cv2.resize(pair, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    if style == "pad":
        return pad_file(place(pair, shape, rng, 0.01), rng)
    return paper_photo(pair, rng)


def two_digit_set(part: str, style: str, rng: Rng, per_set: int) -> NonDigitSet:
    """``per_set`` pairs of MNIST digits of the part's split side by side, in ``style``
    ("pad" or "paper")."""
    digits, _ = mnist_digits(PART_SPLIT[part])
    images, what = [], []
    for _ in range(per_set):
        i, j = rng.choice(len(digits), size=2, replace=False)
        images.append(two_digits(digits[i], digits[j], rng, style))
        what.append(f"pair {i},{j}")
    return NonDigitSet(f"two digits side by side, {STYLES[style]}", images, what)


# --------------------------------------------------------------------------- all sets


@functools.lru_cache(maxsize=2)  # read once per process: the callers only index them
def mnist_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST digits (uint8 (N, 28, 28)) and labels of "test" (the 10,000 test digits) or
    "validation" (the validation split the training holds out: ``TrainConfig``'s
    ``val_size`` and ``seed`` through ``data.stratified_split``)."""
    from mnist_cnn import data
    from mnist_cnn.train import TrainConfig

    if split == "test":
        test = data.load_split("test")
        return test.images.numpy(), test.labels.numpy()
    if split != "validation":
        raise ValueError(f"split must be 'test' or 'validation', not {split!r}")
    train = data.load_split("train")
    config = TrainConfig()
    _, val_idx = data.stratified_split(train.labels, config.val_size, config.seed)
    return train.images[val_idx].numpy(), train.labels[val_idx].numpy()


@dataclass(frozen=True)
class NonDigitSpec:
    """A non-digit set not yet rendered: its name, whether it counts toward the target, and
    the function that renders it (rendering takes seconds: filters skip it)."""

    name: str
    counted: bool
    build: Callable[[], NonDigitSet]


def nondigit_specs(
    part: str, seed: int = 0, per_set: int = 200
) -> tuple[list[NonDigitSpec], list[str]]:
    """The non-digit sets of one part ("calibration" or "test"), unrendered, and what is
    missing (a font family, Fashion-MNIST). The parts share no font file, no Fashion-MNIST
    file, no MNIST digit and no random stream; ``per_set`` images for the drawn, Fashion
    and two-digit sets (the letter sets hold every letter of the part's fonts)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, not {part!r}")
    p = PARTS.index(part)

    def rng(k: int) -> Rng:
        return np.random.default_rng([seed, p, k])

    missing = [f"font family {f}" for f in font_files()[1]]
    specs = [
        NonDigitSpec(name, which != "like", lambda w=which, k=k: letter_set(part, w, rng(k)))
        for k, (which, name) in enumerate(LETTER_SETS.items())
    ]
    for k, (family, style) in enumerate((f, s) for f in DRAWN for s in STYLES):
        specs.append(
            NonDigitSpec(
                drawing_set_name(family, style),
                True,
                lambda f=family, s=style, k=k: drawing_set(f, s, rng(10 + k), per_set),
            )
        )
    if fashion_files(part) is None:
        missing.append(f"Fashion-MNIST ({FASHION_DIR}: apt-get install dataset-fashion-mnist)")
    else:
        for k, (style, name) in enumerate(FASHION_SETS.items()):
            specs.append(
                NonDigitSpec(
                    name, True, lambda s=style, k=k: fashion_set(part, s, rng(20 + k), per_set)
                )
            )
    for k, style in enumerate(STYLES):
        specs.append(
            NonDigitSpec(
                f"two digits side by side, {STYLES[style]}",
                True,
                lambda s=style, k=k: two_digit_set(part, s, rng(30 + k), per_set),
            )
        )
    return specs, missing


def nondigit_sets(
    part: str, seed: int = 0, per_set: int = 200
) -> tuple[list[NonDigitSet], list[str]]:
    """Every non-digit set of ``part`` rendered (see ``nondigit_specs``), and what is
    missing."""
    specs, missing = nondigit_specs(part, seed, per_set)
    return [spec.build() for spec in specs], missing
