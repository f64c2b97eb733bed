"""Hand-made test images: a digit drawn with Pillow, then dressed as the uploads people make
(modes, polarities, encodings, lighting, EXIF tags), and malformed files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

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


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header claims ``width`` x ``height`` pixels: the
    shape of a decompression bomb (the real ones carry a few kB of zlib'd zeros)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    rows = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
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
