"""The fuzz corpus of the image front end, and a runner that survives what it finds.

Shared by ``tests/test_fuzz.py`` (a small seeded slice, in ``make test``) and
``benchmarks/fuzz.py`` (the full corpus, a table of outcomes). It imports no pytest, so that
the benchmark can import it too (it puts ``tests/`` on ``sys.path``, as load_test.py does).

Every input is a pure function of ``(seed, index)``: ``make_case(seed, index)`` draws what
it is (cheaply: a family, a kind, a name) and ``case.build(tmp)`` makes it, so a worker
process rebuilds any input from two numbers and a failure is reproduced by its index. The
families:

- ``png``, ``jpeg``, ``gif``, ``bmp``, ``webp``, ``tiff``, ``ppm``: files that Pillow wrote
  from MNIST test digits and random images (in the modes each format stores, with random
  encoder options, EXIF orientations, animations, pages), then mutated: bit flips,
  truncation, overwritten and spliced bytes, chunk and header edits (dimensions, bit
  depths, colour types, tags) including huge and zero declared sizes. Given as bytes, or as
  a file path.
- ``modes``: Pillow images in every mode (1, L, LA, La, P with and without transparency, PA,
  RGB, RGBA, RGBa, RGBX, CMYK, YCbCr, LAB, HSV, I, I;16 and its byte orders, F) holding
  digits, noise or extreme values (NaN, inf, negative), given as images or saved as files.
- ``numpy``: arrays of every dtype (bool, signed and unsigned integers, float16 to
  longdouble, complex, object, strings, dates, records), 0 to 5 dimensions, NaN, inf,
  negative and huge values, non-contiguous, negative-stride, zero-stride, read-only,
  big-endian, Fortran-order, matrix and masked arrays.
- ``shapes``: 1x1, 1x100000, 100000x1 and other extreme or empty shapes, as arrays, images
  and files.
- ``paths``: missing files, folders, FIFOs, devices, sockets, NUL characters, very long and
  non-UTF-8 names, broken and looping links.
- ``bombs``: small files that decode to tens of millions of pixels, under and over the cap.

An outcome is a ``prediction`` (a sane ``Prediction``, or ``Located`` from ``prepare``), a
``documented error`` (an ``ImageError``; for a path, also the ``OSError`` that ``load_image``
documents for a path that cannot be read) or an ``unexpected`` exception (anything else, a
result that is not sane, or the worker process dying). ``run`` gives each input to a worker
process with a watchdog: an input slower than the time limit is a ``hang``, and one still
running at the kill limit has its worker killed and replaced. Each input's peak memory is
the growth of the worker's peak resident set over the call (Linux: ``/proc/self/status``,
its high-water mark reset before each input).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import json
import math
import os
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

FORMATS = ("png", "jpeg", "gif", "bmp", "webp", "tiff", "ppm")
FAMILIES = (*FORMATS, "modes", "numpy", "shapes", "paths", "bombs")
# Out of every 100 inputs: mutated files most (where decoders break), bombs least (each
# costs a second or two to decode).
WEIGHTS = {**{f: 10 for f in FORMATS}, "modes": 9, "numpy": 9, "shapes": 5, "paths": 5, "bombs": 2}

PREDICTION = "prediction"
DOCUMENTED = "documented error"
UNEXPECTED = "unexpected"
HANG = "hang"
OUTCOMES = (PREDICTION, DOCUMENTED, UNEXPECTED, HANG)

# Declared sizes that break arithmetic: zero, one, around the 40 MP cap (6324^2), the
# limits of 16- and 32-bit fields.
SIZES = (
    0, 1, 2, 3, 255, 256, 6324, 6325, 16383, 16384, 65535, 65536, 100_000, 2**31 - 1, 2**32 - 1,
)  # fmt: skip


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """One fuzz input: what it is, and how to make it (in a scratch folder, for paths)."""

    index: int
    family: str
    kind: str  # what was done, e.g. "bit flips" or "fifo": the table's finer grain
    entry: str  # "predict" (Predictor.predict) or "prepare" (mnist_cnn.preprocess.prepare)
    build: Callable[[Path], Any]

    @property
    def name(self) -> str:
        return f"{self.family}/{self.kind}#{self.index}"


# The families' order in each block of 100 inputs: interleaved, so that any slice of the
# corpus (the tests take the first few hundred) holds every family.
_SCHEDULE = [
    family
    for _, family in sorted(
        ((i + 0.5) / weight, family) for family, weight in WEIGHTS.items() for i in range(weight)
    )
]


def family_of(index: int) -> str:
    """The family of input ``index`` (the same for every seed)."""
    return _SCHEDULE[index % len(_SCHEDULE)]


def make_case(seed: int, index: int) -> Case:
    """Input ``index`` of the corpus of ``seed``: cheap to make, ``build`` does the work."""
    rng = np.random.default_rng([seed, index])
    family = family_of(index)
    entry = "prepare" if rng.random() < 0.25 else "predict"
    if family in FORMATS:
        kind, build = _mutated_file(family, rng)
    else:
        kind, build = {
            "modes": _pillow_mode,
            "numpy": _numpy_array,
            "shapes": _extreme_shape,
            "paths": _path,
            "bombs": _bomb,
        }[family](rng)
    return Case(index, family, kind, entry, build)


def corpus(seed: int, count: int, families: Iterable[str] = FAMILIES) -> list[Case]:
    """The first ``count`` inputs of ``seed`` that belong to ``families``."""
    wanted = set(families)
    out: list[Case] = []
    index = 0
    while len(out) < count:
        if family_of(index) in wanted:
            out.append(make_case(seed, index))
        index += 1
    return out


# --------------------------------------------------------------------------- seed images


@functools.lru_cache(maxsize=1)
def _mnist() -> np.ndarray:
    """The first 1,000 MNIST test digits, uint8 (1000, 28, 28). (Read here, not with
    mnist_cnn.data, which imports PyTorch: a worker that does not need it starts faster.)"""
    import gzip

    from _web_fixtures import DATA_DIR

    with gzip.open(DATA_DIR / "t10k-images-idx3-ubyte.gz") as f:
        header = struct.unpack(">4I", f.read(16))
        assert header == (0x803, 10_000, 28, 28), header
        return np.frombuffer(f.read(1000 * 28 * 28), np.uint8).reshape(1000, 28, 28)


def _choice(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _digit_image(rng: np.random.Generator) -> Image.Image:
    """An MNIST test digit as people send it: as is, enlarged, on paper, or in noise."""
    digit = _mnist()[int(rng.integers(1000))]
    style = int(rng.integers(4))
    if style == 0:
        return Image.fromarray(digit)
    scale = int(rng.integers(2, 12))
    big = Image.fromarray(digit).resize((28 * scale, 28 * scale), Image.BILINEAR)
    if style == 1:
        return big
    a = np.asarray(big, np.float32)
    if style == 2:  # dark ink on paper, a margin around it
        paper = 235 - a * 0.8
        pad = int(rng.integers(0, 60))
        return Image.fromarray(np.pad(paper, pad, constant_values=235).astype(np.uint8))
    noisy = a + rng.normal(0, float(rng.uniform(1, 60)), a.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _random_image(rng: np.random.Generator) -> Image.Image:
    """Noise, flat colour or a few random shapes, of a random (sometimes degenerate) size."""
    w, h = (int(v) for v in rng.integers(1, 160, size=2))
    style = int(rng.integers(3))
    if style == 0:
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
    if style == 2:
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 6))):
            x0, x1 = sorted(int(v) for v in rng.integers(0, w, 2))
            y0, y1 = sorted(int(v) for v in rng.integers(0, h, 2))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            draw.ellipse((x0, y0, x1, y1), fill=fill, width=int(rng.integers(1, 8)))
    return img


def _seed_image(rng: np.random.Generator) -> Image.Image:
    return _digit_image(rng) if rng.random() < 0.7 else _random_image(rng)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


# The modes each format stores (what Pillow writes), and random encoder options.
_FORMAT_MODES = {
    "png": ("L", "RGB", "RGBA", "LA", "P", "1", "I;16", "I"),
    "jpeg": ("L", "RGB", "CMYK"),
    "gif": ("L", "P", "RGB"),
    "bmp": ("1", "L", "P", "RGB", "RGBA"),
    "webp": ("RGB", "RGBA", "L"),
    "tiff": ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "LAB", "YCbCr", "I;16", "I", "F"),
    "ppm": ("1", "L", "RGB", "I;16", "F"),
}


def _in_mode(img: Image.Image, mode: str, rng: np.random.Generator) -> Image.Image:
    """``img`` converted to ``mode`` (with transparency, sometimes, where it can have it)."""
    if mode in ("I;16", "I", "F"):
        a = np.asarray(img.convert("L"), np.float32) / 255.0
        if mode == "I;16":
            return Image.fromarray((a * 65535).astype(np.uint16))
        if mode == "I":
            return Image.fromarray((a * float(_choice(rng, (255, 65535, 2**20)))).astype(np.int32))
        return Image.fromarray(a * float(_choice(rng, (1.0, 255.0, 1e6))))
    if mode in ("LA", "RGBA"):
        out = img.convert(mode)
        alpha = np.asarray(img.convert("L"))
        if rng.random() < 0.5:
            alpha = 255 - alpha
        out.putalpha(
            Image.fromarray(
                alpha if rng.random() < 0.7 else rng.integers(0, 256, alpha.shape, dtype=np.uint8)
            )
        )
        return out
    if mode in ("LAB", "YCbCr"):
        return img.convert("RGB").convert(mode) if mode == "YCbCr" else _reinterpret(img, "LAB")
    out = img.convert(mode)
    if mode == "P" and rng.random() < 0.4:
        out.info["transparency"] = int(rng.integers(256))
    return out


def _reinterpret(img: Image.Image, mode: str) -> Image.Image:
    """The bytes of an RGB image read as ``mode`` (for modes Pillow does not convert to)."""
    return Image.frombytes(mode, img.size, img.convert("RGB").tobytes())


def _save(img: Image.Image, fmt: str, rng: np.random.Generator) -> bytes:
    """``img`` written by Pillow as ``fmt``, with random options."""
    options: dict[str, Any] = {}
    frames: list[Image.Image] = []
    if fmt == "png":
        options["compress_level"] = int(rng.integers(10))
        if rng.random() < 0.2:
            options["exif"] = _exif(int(rng.integers(0, 10)))
        if rng.random() < 0.1 and img.mode in ("L", "RGB", "RGBA", "P"):
            frames = [img.rotate(90), img.transpose(Image.FLIP_LEFT_RIGHT)]  # an APNG
    elif fmt == "jpeg":
        options.update(
            quality=int(rng.integers(1, 101)),
            progressive=bool(rng.random() < 0.3),
            subsampling=int(rng.integers(0, 3)),
        )
        if rng.random() < 0.3:
            options["exif"] = _exif(int(rng.integers(0, 10)))
    elif fmt == "gif":
        if rng.random() < 0.3:
            options["transparency"] = int(rng.integers(256))
        if rng.random() < 0.2:
            frames = [img.rotate(45), img.point(lambda v: 255 - v)]
            options["duration"] = 40
    elif fmt == "webp":
        options.update(lossless=bool(rng.random() < 0.4), quality=int(rng.integers(0, 101)))
        if rng.random() < 0.2:
            options["exif"] = _exif(int(rng.integers(0, 10)))
        if rng.random() < 0.1:
            frames = [img.rotate(90)]
    elif fmt == "tiff":
        compressions = [None, "tiff_lzw", "tiff_deflate", "packbits", "tiff_adobe_deflate"]
        if img.mode == "1":
            compressions += ["group3", "group4"]
        if img.mode in ("L", "RGB", "YCbCr") and max(img.size) <= 65_500:
            # (JPEG's limit: past it, Pillow 12.3's TIFF encoder corrupts the heap and the
            # process aborts, "malloc(): unsorted double linked list corrupted")
            compressions.append("jpeg")
        options["compression"] = _choice(rng, compressions)
        if rng.random() < 0.15:
            frames = [img.rotate(180)]
        if rng.random() < 0.2:
            options["exif"] = _exif(int(rng.integers(0, 10)))
    buffer = io.BytesIO()
    pillow_format = {"jpeg": "JPEG"}.get(fmt, fmt.upper())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Pillow 13 drops I-mode PNGs
        if frames:
            img.save(buffer, pillow_format, save_all=True, append_images=frames, **options)
        else:
            img.save(buffer, pillow_format, **options)
    return buffer.getvalue()


def _plain_ppm(img: Image.Image, rng: np.random.Generator) -> bytes:
    """A plain (ASCII) PBM, PGM or PPM, which Pillow reads but does not write."""
    kind = int(rng.integers(3))
    if kind == 0:
        a = np.asarray(img.convert("1"), np.uint8)
        magic, top, values = b"P1", None, 1 - a
    elif kind == 1:
        magic, top, values = b"P2", 255, np.asarray(img.convert("L"))
    else:
        magic, top, values = b"P3", 255, np.asarray(img.convert("RGB"))
    h, w = values.shape[:2]
    head = magic + f"\n# fuzz\n{w} {h}\n".encode() + (f"{top}\n".encode() if top else b"")
    return head + b" ".join(str(int(v)).encode() for v in values.ravel()) + b"\n"


def _encoded(fmt: str, rng: np.random.Generator) -> bytes:
    """A seed image written as ``fmt`` in one of the modes the format stores."""
    img = _seed_image(rng)
    if fmt == "ppm" and rng.random() < 0.2:
        img.thumbnail((64, 64))  # a number per sample in text: kept small
        return _plain_ppm(img, rng)
    mode = _choice(rng, _FORMAT_MODES[fmt])
    try:
        return _save(_in_mode(img, mode, rng), fmt, rng)
    except Exception:  # an option this mode does not take: the plain encoding
        buffer = io.BytesIO()
        img.convert("RGB").save(buffer, {"jpeg": "JPEG"}.get(fmt, fmt.upper()))
        return buffer.getvalue()


# --------------------------------------------------------------------------- mutations


def _flip_bits(data: bytes, rng: np.random.Generator) -> bytes:
    if not data:  # (a mutation before this one may have left nothing)
        return data
    out = bytearray(data)
    # Half the time in the first 100 bytes, where the headers are.
    span = min(len(out), 100) if rng.random() < 0.5 else len(out)
    for _ in range(int(rng.integers(1, 33))):
        at = int(rng.integers(span))
        out[at] ^= 1 << int(rng.integers(8))
    return bytes(out)


def _truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(0, len(data)))] if data else data


def _overwrite(data: bytes, rng: np.random.Generator) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        at = int(rng.integers(len(out)))
        value = _choice(rng, (b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\xff", b"\x00" * 4))
        out[at : at + len(value)] = value
    return bytes(out)


def _splice(data: bytes, rng: np.random.Generator) -> bytes:
    """Cut, repeat, insert or swap runs of bytes."""
    n = len(data)
    a, b = sorted(int(v) for v in rng.integers(0, n + 1, 2))
    how = int(rng.integers(4))
    if how == 0:  # a run removed
        return data[:a] + data[b:]
    if how == 1:  # a run repeated many times
        return data[:b] + data[a:b] * int(rng.integers(2, 50)) + data[b:]
    if how == 2:  # random bytes inserted
        return data[:a] + rng.bytes(int(rng.integers(1, 200))) + data[a:]
    return data[a:b] + data[:a] + data[b:]  # runs swapped


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]] | None:
    """A PNG's chunks as (type, body), or None when it does not parse."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    chunks, at = [], 8
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        chunks.append((kind, data[at + 8 : at + 8 + length]))
        at += 12 + length
    return chunks


def _png_join(chunks: list[tuple[bytes, bytes]], crc_ok: bool = True) -> bytes:
    out = [b"\x89PNG\r\n\x1a\n"]
    for kind, body in chunks:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF if crc_ok else 0xDEADBEEF
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc))
    return b"".join(out)


def _png_edit(data: bytes, rng: np.random.Generator) -> bytes:
    """Header fields and chunks edited, with the CRCs made right again (so that the edit,
    not a bad checksum, is what the decoder meets)."""
    chunks = _png_chunks(data)
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        return _flip_bits(data, rng)
    w, h, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    what = int(rng.integers(7))
    if what == 0:
        w, h = int(_choice(rng, SIZES)), int(_choice(rng, SIZES))
    elif what == 1:
        depth = int(_choice(rng, (0, 1, 2, 4, 8, 16, 3, 32, 255)))
        colour = int(_choice(rng, (0, 2, 3, 4, 6, 1, 5, 7, 255)))
    elif what == 2:
        interlace, comp, filt = int(rng.integers(3)), int(rng.integers(2)), int(rng.integers(2))
    elif what == 3:  # a chunk dropped or repeated
        at = int(rng.integers(len(chunks)))
        chunks = (
            chunks[:at] + chunks[at + 1 :] if rng.random() < 0.5 else chunks[: at + 1] + chunks[at:]
        )
    elif what == 4:  # an ancillary chunk with a random or hostile body
        kind = _choice(
            rng,
            (
                b"tRNS",
                b"PLTE",
                b"eXIf",
                b"iCCP",
                b"zTXt",
                b"iTXt",
                b"acTL",
                b"fcTL",
                b"sBIT",
                b"gAMA",
                b"pHYs",
            ),
        )
        if kind == b"eXIf":
            body = _exif(int(_choice(rng, (0, 1, 3, 5, 6, 7, 8, 9, 255, 65535))))
        elif kind in (b"zTXt", b"iCCP"):  # a small zlib stream of a large text
            body = b"fuzz\x00\x00" + zlib.compress(b"A" * int(_choice(rng, (10, 10**6, 10**7))))
        else:
            body = rng.bytes(int(_choice(rng, (0, 1, 3, 8, 26, 768, 1000))))
        chunks.insert(int(rng.integers(1, len(chunks) + 1)), (kind, body))
    elif what == 5:  # the image data recompressed after mangling
        idat = b"".join(body for kind, body in chunks if kind == b"IDAT")
        with contextlib.suppress(zlib.error):
            raw = bytearray(zlib.decompress(idat))
            for _ in range(int(rng.integers(1, 20))):
                if raw:
                    raw[int(rng.integers(len(raw)))] = int(rng.integers(256))  # filter bytes too
            chunks = [c for c in chunks if c[0] != b"IDAT"]
            chunks.insert(-1, (b"IDAT", zlib.compress(bytes(raw))))
    else:  # IDAT split into many tiny chunks
        idat = b"".join(body for kind, body in chunks if kind == b"IDAT")
        pieces = [(b"IDAT", idat[i : i + 7]) for i in range(0, len(idat), 7)]
        others = [c for c in chunks[1:] if c[0] != b"IDAT"][:-1]  # without IEND
        chunks = [chunks[0], *others, *pieces, (b"IEND", b"")]
    chunks[0] = (
        b"IHDR",
        struct.pack(
            ">IIBBBBB", w & 0xFFFFFFFF, h & 0xFFFFFFFF, depth, colour, comp, filt, interlace
        ),
    )
    return _png_join(chunks, crc_ok=rng.random() < 0.9)


def _put(data: bytes, at: int, fmt: str, value: int) -> bytes:
    """``data`` with the struct field ``fmt`` at ``at`` set to ``value`` (wrapped to fit)."""
    size = struct.calcsize(fmt)
    if at < 0 or at + size > len(data):
        return data
    bits = 8 * size
    value &= (1 << bits) - 1
    if fmt[-1].islower() and value >= 1 << (bits - 1):  # signed field
        value -= 1 << bits
    return data[:at] + struct.pack(fmt, value) + data[at + size :]


def _size(rng: np.random.Generator) -> int:
    return int(_choice(rng, SIZES)) if rng.random() < 0.8 else -int(_choice(rng, SIZES))


def _jpeg_edit(data: bytes, rng: np.random.Generator) -> bytes:
    at = next(
        (i for i in range(2, len(data) - 9) if data[i] == 0xFF and 0xC0 <= data[i + 1] <= 0xC3), -1
    )
    what = int(rng.integers(4))
    if at < 0 or what == 3:  # an EXIF block with a hostile orientation, or a broken one
        exif = _exif(int(_choice(rng, (0, 3, 6, 8, 9, 255, 65535))))
        if rng.random() < 0.3:
            exif = exif[: int(rng.integers(len(exif)))]
        app1 = b"Exif\x00\x00" + exif
        return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]
    if what == 0:
        return _put(_put(data, at + 5, ">H", _size(rng)), at + 7, ">H", _size(rng))
    if what == 1:  # precision and component count
        out = _put(data, at + 4, ">B", int(_choice(rng, (0, 1, 8, 12, 16, 255))))
        return _put(out, at + 9, ">B", int(_choice(rng, (0, 1, 2, 3, 4, 5, 255))))
    return _put(data, at + 2, ">H", int(_choice(rng, (0, 2, 8, 11, 65535))))  # segment length


def _gif_edit(data: bytes, rng: np.random.Generator) -> bytes:
    what = int(rng.integers(3))
    if what == 0:  # the logical screen
        return _put(_put(data, 6, "<H", _size(rng)), 8, "<H", _size(rng))
    at = data.find(b"\x2c", 13)  # the first image descriptor
    if at < 0:
        return _flip_bits(data, rng)
    if what == 1:
        out = _put(data, at + 5, "<H", _size(rng))
        return _put(_put(out, at + 7, "<H", _size(rng)), at + 1, "<H", _size(rng))
    return _put(data, at + 10, "<B", int(rng.integers(256)))  # LZW minimum code size


def _bmp_edit(data: bytes, rng: np.random.Generator) -> bytes:
    field = _choice(
        rng,
        (
            (18, "<i", _size(rng)),  # width
            (22, "<i", _size(rng)),  # height (negative: top-down)
            (28, "<H", int(_choice(rng, (0, 1, 2, 4, 8, 15, 16, 24, 32, 64, 65535)))),  # bits
            (30, "<I", int(_choice(rng, (0, 1, 2, 3, 4, 5, 6, 11, 2**32 - 1)))),  # compression
            (46, "<I", int(_choice(rng, (0, 1, 256, 257, 2**31)))),  # colours used
            (10, "<I", int(_choice(rng, (0, 14, 54, 2**31)))),  # pixel data offset
            (14, "<I", int(_choice(rng, (0, 12, 40, 56, 64, 108, 124, 2**31)))),  # header size
        ),
    )
    return _put(data, field[0], field[1], field[2])


def _webp_edit(data: bytes, rng: np.random.Generator) -> bytes:
    what = int(rng.integers(3))
    if what == 0:  # the RIFF size
        return _put(data, 4, "<I", int(_choice(rng, (0, 4, len(data), 2**32 - 1))))
    vp8x = data.find(b"VP8X")
    if what == 1 and vp8x >= 0:  # the canvas, 24-bit sizes minus one
        w, h = (int(_choice(rng, SIZES)) for _ in range(2))
        out = data[: vp8x + 12] + (w & 0xFFFFFF).to_bytes(3, "little")
        return out + (h & 0xFFFFFF).to_bytes(3, "little") + data[vp8x + 18 :]
    vp8l = data.find(b"VP8L")
    if vp8l >= 0:  # 14-bit width-1 and height-1 packed after the signature byte
        packed = (int(rng.integers(1 << 14))) | (int(rng.integers(1 << 14)) << 14)
        return _put(data, vp8l + 9, "<I", packed | (int(rng.integers(16)) << 28))
    vp8 = data.find(b"VP8 ")
    if vp8 >= 0:  # 14-bit sizes after the key frame's start code
        out = _put(data, vp8 + 14, "<H", int(rng.integers(1 << 16)))
        return _put(out, vp8 + 16, "<H", int(rng.integers(1 << 16)))
    return _flip_bits(data, rng)


def _tiff_edit(data: bytes, rng: np.random.Generator) -> bytes:
    """A tag of the first IFD set to a hostile value (sizes, bit depths, strips...)."""
    if data[:2] not in (b"II", b"MM") or len(data) < 8:
        return _flip_bits(data, rng)
    order = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack(order + "I", data[4:8])[0]
    if ifd + 2 > len(data):
        return _flip_bits(data, rng)
    count = struct.unpack(order + "H", data[ifd : ifd + 2])[0]
    entries = [ifd + 2 + 12 * i for i in range(count) if ifd + 14 + 12 * i <= len(data)]
    hostile = {
        256: SIZES,  # width
        257: SIZES,  # length
        258: (0, 1, 2, 7, 8, 12, 16, 24, 32, 64, 65535),  # bits per sample
        259: (1, 2, 3, 4, 5, 6, 7, 8, 32773, 34712, 65535),  # compression
        262: (0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 32844, 65535),  # photometric
        274: (0, 1, 3, 6, 8, 9, 65535),  # orientation
        277: (0, 1, 2, 3, 4, 5, 255, 65535),  # samples per pixel
        278: (0, 1, 2**31, 2**32 - 1),  # rows per strip
        273: (0, 8, len(data), 2**32 - 1),  # strip offsets
        279: (0, 1, len(data), 2**32 - 1),  # strip byte counts
        284: (0, 1, 2, 3),  # planar configuration
        339: (0, 1, 2, 3, 4, 5),  # sample format
    }
    candidates = [
        at for at in entries if struct.unpack(order + "H", data[at : at + 2])[0] in hostile
    ]
    if not candidates:
        return _flip_bits(data, rng)
    at = _choice(rng, candidates)
    tag, kind = struct.unpack(order + "HH", data[at : at + 4])
    value = int(_choice(rng, hostile[tag]))
    if rng.random() < 0.2:  # a count that runs past the file
        return _put(data, at + 4, order + "I", int(_choice(rng, (0, 2, 1000, 2**30))))
    if kind == 3:  # SHORT, in the first two bytes of the value field
        return _put(data, at + 8, order + "H", value)
    return _put(data, at + 8, order + "I", value)


def _ppm_edit(data: bytes, rng: np.random.Generator) -> bytes:
    """The text header rewritten with hostile sizes and maximum values."""
    parts = data.split(maxsplit=4)
    if len(parts) < 4 or not parts[0].startswith(b"P"):
        return _flip_bits(data, rng)
    magic = _choice(
        rng, (parts[0], parts[0], b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"Pf", b"PF", b"P7")
    )
    w, h = _size(rng), _size(rng)
    top = _choice(
        rng,
        (
            b"0",
            b"1",
            b"255",
            b"256",
            b"65535",
            b"65536",
            b"-1.0",
            b"1e300",
            b"nan",
            b"99999999999999999999",
        ),
    )
    body = data.split(maxsplit=4 if parts[0] not in (b"P1", b"P4") else 3)[-1]
    return magic + b"\n" + f"{w} {h}\n".encode() + top + b"\n" + body


_HEADER_EDITS = {
    "png": _png_edit,
    "jpeg": _jpeg_edit,
    "gif": _gif_edit,
    "bmp": _bmp_edit,
    "webp": _webp_edit,
    "tiff": _tiff_edit,
    "ppm": _ppm_edit,
}
_MUTATIONS: dict[str, Callable[[bytes, np.random.Generator], bytes]] = {
    "bit flips": _flip_bits,
    "truncated": _truncate,
    "overwritten": _overwrite,
    "spliced": _splice,
}


def _mutated_file(fmt: str, rng: np.random.Generator) -> tuple[str, Callable[[Path], Any]]:
    """A file written as ``fmt`` and mutated (a few left intact), as bytes or a path."""
    kinds = ["intact", "header edit", "header edit", "header edit", *_MUTATIONS, "two mutations"]
    kind = _choice(rng, kinds)
    as_path = rng.random() < 0.2
    state = rng.bit_generator.state

    def build(tmp: Path) -> Any:
        r = np.random.default_rng()
        r.bit_generator.state = state
        data = _encoded(fmt, r)
        if kind == "header edit":
            data = _HEADER_EDITS[fmt](data, r)
        elif kind == "two mutations":
            for name in r.choice([*sorted(_MUTATIONS), "header"], 2):
                data = (
                    _HEADER_EDITS[fmt](data, r) if name == "header" else _MUTATIONS[name](data, r)
                )
        elif kind != "intact":
            data = _MUTATIONS[kind](data, r)
        if as_path:
            path = tmp / f"input.{fmt}"
            path.write_bytes(data)
            return path
        return data

    return kind + (" (path)" if as_path else ""), build


# --------------------------------------------------------------------------- Pillow modes


def _mode_image(
    mode: str, content: str, size: tuple[int, int], rng: np.random.Generator
) -> Image.Image:
    w, h = size
    digit = np.asarray(Image.fromarray(_mnist()[int(rng.integers(1000))]).resize((w, h)))
    if content == "noise":
        length = len(Image.new(mode, (w, h)).tobytes())
        return Image.frombytes(mode, (w, h), rng.bytes(length))
    if mode.startswith("I;16"):
        values = digit.astype(np.uint16) * (257 if content == "digit" else 65535 // 255)
        order = {"I;16B": ">u2", "I;16L": "<u2"}.get(mode, "=u2")
        return Image.frombytes(mode, (w, h), values.astype(order).tobytes())
    if mode == "I":
        scale = {"digit": 257, "extreme": -(2**23)}.get(content, 1)
        return Image.fromarray(digit.astype(np.int32) * scale)
    if mode == "F":
        a = digit.astype(np.float32) / 255.0
        if content == "extreme":
            specials = np.array([np.nan, np.inf, -np.inf, -1.0, 1e30, 0.0], np.float32)
            mask = rng.random(a.shape) < 0.3
            a[mask] = rng.choice(specials, int(mask.sum()))
        return Image.fromarray(a)
    base = Image.fromarray(digit if content == "digit" else 255 - digit)
    if mode in ("La", "RGBa", "PA", "HSV", "LAB", "RGBX"):
        source = {
            "La": "LA",
            "RGBa": "RGBA",
            "PA": "LA",
            "HSV": "RGB",
            "LAB": "RGB",
            "RGBX": "RGB",
        }[mode]
        img = _in_mode(base, source, rng) if source in ("LA", "RGBA") else base.convert(source)
        out = Image.frombytes(mode, img.size, img.tobytes())
        if mode == "PA":
            out.putpalette(list(range(256)) * 3)
        return out
    return _in_mode(base, mode, rng)


def _pillow_mode(rng: np.random.Generator) -> tuple[str, Callable[[Path], Any]]:
    """A Pillow image in any mode, given as the image or as a file in a format storing it."""
    mode = _choice(rng, sorted(Image.MODES))
    content = _choice(rng, ("digit", "inverted", "noise", "extreme"))
    size = (int(rng.integers(1, 120)), int(rng.integers(1, 120)))
    if rng.random() < 0.7:
        size = (max(size[0], 28), max(size[1], 28))
    fmt = _choice(rng, (None, None, *FORMATS))
    state = rng.bit_generator.state

    def build(tmp: Path) -> Any:
        r = np.random.default_rng()
        r.bit_generator.state = state
        try:
            img = _mode_image(mode, content, size, r)
        except ValueError:  # a conversion Pillow does not make: the mode's bytes, random
            img = Image.frombytes(mode, size, r.bytes(len(Image.new(mode, size).tobytes())))
        if mode == "P" and r.random() < 0.5:
            img.info["transparency"] = bytes(r.integers(0, 256, 256, dtype=np.uint8))
        if fmt is None:
            return img
        try:
            return _save(img, fmt, r)
        except Exception:  # a mode this format cannot store: the image itself
            return img

    return f"{mode} {content}" + (f" as {fmt}" if fmt else ""), build


# --------------------------------------------------------------------------- NumPy arrays

_DTYPES = (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "longdouble", "complex64", "complex128", "object",
    "U3", "S3", "datetime64[s]", "timedelta64[ms]", "u1,u1", "V4", ">u2", ">f4", "<i2",
)  # fmt: skip
_SHAPES = (
    (28, 28), (28, 28), (28, 28), (28, 28), (28, 28, 1), (28, 28, 2), (28, 28, 3),
    (28, 28, 3), (28, 28, 4), (28, 28, 5), (), (28,), (1, 28, 28), (1, 28, 28, 1),
    (2, 2, 2, 2, 2), (0, 28), (28, 0), (0, 0, 3), (3, 28, 28), (56, 40, 3), (120, 90),
)  # fmt: skip
_CONTENTS = (
    "digit", "digit", "digit", "noise", "zeros", "ones", "nan", "inf", "-inf", "negative",
    "max", "min", "huge", "tiny",
)  # fmt: skip
_LAYOUTS = (
    "C", "C", "fortran", "transposed", "strided", "reversed", "broadcast", "read-only",
    "byteswapped", "matrix", "masked", "subclass",
)  # fmt: skip


def _array(
    dtype: str, shape: tuple[int, ...], content: str, rng: np.random.Generator
) -> np.ndarray:
    """An array of ``dtype`` and ``shape`` (or near it) holding ``content``."""
    digit = _mnist()[int(rng.integers(1000))].astype(np.float64) / 255.0
    if len(shape) >= 2 and 0 not in shape:
        import cv2

        base = cv2.resize(digit, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
        base = np.broadcast_to(base.reshape(shape[:2] + (1,) * (len(shape) - 2)), shape)
    else:
        base = np.resize(digit, shape) if 0 not in shape else np.zeros(shape)
    values = {
        "digit": base,
        "noise": rng.random(shape),
        "zeros": np.zeros(shape),
        "ones": np.ones(shape),
        "negative": -base,
        "huge": base * 1e30,
        "tiny": base * 1e-40,
    }.get(content)
    kind = np.dtype(dtype).kind
    if values is None:  # specials: sprinkled into a digit
        if kind in "fc" and content in ("nan", "inf", "-inf"):
            special = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[content]
            values = np.where(rng.random(shape) < 0.1, special, base)
        elif kind in "iub":
            info = np.iinfo(dtype) if kind in "iu" else None
            top = info.max if info else 1
            bottom = info.min if info else 0
            return np.full(shape, top if content in ("max", "inf") else bottom, dtype=dtype)
        elif kind in "fc":
            info = np.finfo(dtype)
            return np.full(shape, info.max if content in ("max", "inf") else info.min, dtype=dtype)
        else:
            values = base
    if kind in "iu":
        scale = 255 if np.dtype(dtype).itemsize == 1 or rng.random() < 0.6 else 65535
        with np.errstate(all="ignore"):
            return np.nan_to_num(values * scale).astype(dtype)
    if kind == "b":
        return values > 0.5
    if kind == "O":
        out = np.empty(shape, dtype=object)
        out.ravel()[:] = list(values.ravel()) if content != "ones" else ["1"] * out.size
        return out
    try:
        with np.errstate(all="ignore"):
            return np.asarray(values).astype(dtype)
    except (TypeError, ValueError):  # no cast from floats (dates, raw bytes): from integers
        try:
            return (np.asarray(values) * 255).astype(np.int64).astype(dtype)
        except (TypeError, ValueError):
            return np.zeros(shape, dtype)


def _laid_out(a: np.ndarray, layout: str) -> np.ndarray:
    """``a`` with the same values in another memory layout or array type."""
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "transposed" and a.ndim >= 2:
        return np.swapaxes(np.ascontiguousarray(np.swapaxes(a, 0, 1)), 0, 1)
    if layout == "strided" and a.ndim >= 1:
        wide = np.repeat(a, 3, axis=0)
        return wide[::3]
    if layout == "reversed" and a.ndim >= 2:
        return np.ascontiguousarray(a[::-1, ::-1])[::-1, ::-1]
    if layout == "broadcast" and a.ndim >= 1 and a.size:
        return np.broadcast_to(a[:1], a.shape)  # zero-stride first axis, read-only
    if layout == "read-only":
        b = a.copy()
        b.flags.writeable = False
        return b
    if layout == "byteswapped" and a.dtype.kind in "iuf" and a.dtype.itemsize > 1:
        return a.astype(a.dtype.newbyteorder())
    if layout == "matrix" and a.ndim == 2 and a.dtype != object:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            return np.asmatrix(a)
    if layout == "masked":
        return np.ma.masked_array(a, mask=np.zeros(a.shape, bool))
    if layout == "subclass":

        class Pixels(np.ndarray):
            pass

        return a.view(Pixels)
    return a


def _numpy_array(rng: np.random.Generator) -> tuple[str, Callable[[Path], Any]]:
    dtype = _choice(rng, _DTYPES)
    shape = _choice(rng, _SHAPES)
    content = _choice(rng, _CONTENTS)
    layout = _choice(rng, _LAYOUTS)
    state = rng.bit_generator.state

    def build(tmp: Path) -> Any:
        r = np.random.default_rng()
        r.bit_generator.state = state
        # (np.asarray: a 0-d result is an array, never a NumPy scalar, which is no image)
        return _laid_out(np.asarray(_array(dtype, shape, content, r)), layout)

    shown = "x".join(map(str, shape)) or "0-d"
    return f"{dtype} {shown} {content} {layout}", build


# --------------------------------------------------------------------------- extreme shapes

_EXTREME = (
    (1, 1), (1, 2), (2, 1), (2, 2), (1, 100_000), (100_000, 1), (3, 100_000), (100_000, 3),
    (1, 28), (28, 1), (0, 0), (0, 100), (100, 0), (2, 65_535), (7, 40_000),
)  # fmt: skip


def _extreme_shape(rng: np.random.Generator) -> tuple[str, Callable[[Path], Any]]:
    h, w = _choice(rng, _EXTREME)
    content = _choice(rng, ("noise", "flat", "stroke", "dot"))
    given = _choice(
        rng,
        (
            "uint8 array",
            "float32 array",
            "bool array",
            "image",
            "png",
            "tiff",
            "bmp",
            "ppm",
            "gif",
            "webp",
            "jpeg",
        ),
    )
    state = rng.bit_generator.state

    def build(tmp: Path) -> Any:
        r = np.random.default_rng()
        r.bit_generator.state = state
        a = np.full((h, w), 255, np.uint8)
        if content == "noise":
            a = r.integers(0, 256, (h, w), dtype=np.uint8)
        elif content == "stroke" and a.size:
            a[h // 3 : max(h // 3 + 1, 2 * h // 3), :] = 0
            a[:, w // 3 : max(w // 3 + 1, 2 * w // 3)] = 0
        elif content == "dot" and a.size:
            a[h // 2, w // 2] = 0
        if given.endswith("array"):
            return {"uint8 array": a, "float32 array": a / np.float32(255), "bool array": a > 127}[
                given
            ]
        img = Image.fromarray(a) if a.size else Image.new("L", (w, h))
        if given == "image":
            return img
        try:
            return _save(img, given, r)
        except Exception:  # a size the format cannot store: the image itself
            return img

    return f"{h}x{w} {content} {given}", build


# --------------------------------------------------------------------------- paths

_PATHS = (
    "missing file", "missing folder", "folder", "fifo", "nul", "very long name",
    "long component", "empty string", "dangling link", "link loop", "device", "socket",
    "not a folder", "trailing slash", "non-utf8 name", "good file", "good file as Path",
    "text named png",
)  # fmt: skip


def _path(rng: np.random.Generator) -> tuple[str, Callable[[Path], Any]]:
    kind = _choice(rng, _PATHS)
    digit = int(rng.integers(1000))

    def build(tmp: Path) -> Any:
        good = tmp / "digit.png"
        Image.fromarray(_mnist()[digit]).save(good)
        if kind == "missing file":
            return str(tmp / "missing.png")
        if kind == "missing folder":
            return str(tmp / "missing" / "digit.png")
        if kind == "folder":
            return str(tmp)
        if kind == "fifo":
            os.mkfifo(tmp / "pipe.png")
            return str(tmp / "pipe.png")
        if kind == "nul":
            return str(good) + "\0.png"
        if kind == "very long name":
            return str(tmp) + "/a" * 3000 + ".png"
        if kind == "long component":
            return str(tmp / ("x" * 300 + ".png"))
        if kind == "empty string":
            return ""
        if kind == "dangling link":
            (tmp / "dangling.png").symlink_to(tmp / "nowhere.png")
            return str(tmp / "dangling.png")
        if kind == "link loop":
            (tmp / "loop.png").symlink_to(tmp / "loop.png")
            return str(tmp / "loop.png")
        if kind == "device":
            return os.devnull
        if kind == "socket":
            server = socket.socket(socket.AF_UNIX)
            server.bind(str(tmp / "sock.png"))
            return str(tmp / "sock.png")
        if kind == "not a folder":
            return str(good / "inside.png")
        if kind == "trailing slash":
            return str(good) + "/"
        if kind == "non-utf8 name":
            odd = tmp / os.fsdecode(b"caf\xe9\xff.png")
            odd.write_bytes(good.read_bytes())
            return str(odd)
        if kind == "good file as Path":
            return good
        if kind == "text named png":
            good.write_text("not an image\n")
        return str(good)

    return kind, build


# --------------------------------------------------------------------------- bombs

# name: (format, mode, width, height). Pillow writes each; 6300x6300 is just under the cap
# of 40 MP, 6400x6400 just over it.
_BOMBS: dict[str, tuple[str, str, int, int]] = {
    "png L 6300x6300": ("png", "L", 6300, 6300),
    "png RGBA 6300x6300": ("png", "RGBA", 6300, 6300),
    "png P 6300x6300": ("png", "P", 6300, 6300),
    "png 1 6300x6300": ("png", "1", 6300, 6300),
    "png I;16 6300x6300": ("png", "I;16", 6300, 6300),
    "png L 1x39000000": ("png", "L", 1, 39_000_000),
    "png L 39000000x1": ("png", "L", 39_000_000, 1),
    "png L 6400x6400 (over the cap)": ("png", "L", 6400, 6400),
    "gif 6300x6300": ("gif", "L", 6300, 6300),
    "tiff deflate L 6300x6300": ("tiff", "L", 6300, 6300),
    "tiff deflate F 4000x4000": ("tiff", "F", 4000, 4000),
    "webp lossless 6300x6300": ("webp", "RGB", 6300, 6300),
    "jpeg 6300x6300": ("jpeg", "L", 6300, 6300),
    "bmp 1 6300x6300": ("bmp", "1", 6300, 6300),
    "ppm P4 6300x6300": ("ppm", "1", 6300, 6300),
    "tiff claiming 100000x100000": ("tiff", "claim", 100_000, 100_000),
    "jpeg claiming 65500x65500": ("jpeg", "claim", 65_500, 65_500),
}


def _tiff_tag(data: bytes, tag: int, value: int) -> bytes:
    """A little-endian TIFF with the value of ``tag`` in its first IFD set to ``value``."""
    ifd = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[ifd : ifd + 2])[0]):
        at = ifd + 2 + 12 * i
        if struct.unpack("<H", data[at : at + 2])[0] == tag:
            kind = struct.unpack("<H", data[at + 2 : at + 4])[0]
            return _put(data, at + 8, "<H" if kind == 3 else "<I", value)
    return data


@functools.cache
def _bomb_bytes(name: str) -> bytes:
    """A file of a few kB to a few MB that decodes to millions of pixels (cached: each costs
    a second or so to encode)."""
    fmt, mode, w, h = _BOMBS[name]
    buffer = io.BytesIO()
    pillow_format = fmt.upper()
    if mode == "claim":  # a small image whose header claims a huge one
        Image.new("L", (8, 8), 200).save(buffer, pillow_format)
        small = buffer.getvalue()
        if fmt == "tiff":
            return _tiff_tag(_tiff_tag(small, 256, w), 257, h)
        at = small.find(b"\xff\xc0")
        return _put(_put(small, at + 5, ">H", h), at + 7, ">H", w)
    img = Image.new("L", (w, h), 255)
    draw = ImageDraw.Draw(img)
    draw.line((w * 0.4, h * 0.2, w * 0.6, h * 0.8), fill=0, width=max(1, min(w, h) // 20))
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img).astype(np.uint16) * 257)
    elif mode == "F":
        img = Image.fromarray(np.asarray(img, np.float32) / 255.0)
    elif mode != "L":
        img = img.convert(mode)
    options = {
        "png": {"compress_level": 9},
        "tiff": {"compression": "tiff_deflate"},
        "webp": {"lossless": True},
        "jpeg": {"quality": 50},
    }.get(fmt, {})
    img.save(buffer, pillow_format, **options)
    return buffer.getvalue()


def _bomb(rng: np.random.Generator) -> tuple[str, Callable[[Path], Any]]:
    name = _choice(rng, sorted(_BOMBS))
    as_path = rng.random() < 0.3

    def build(tmp: Path) -> Any:
        data = _bomb_bytes(name)
        if as_path:
            (tmp / "bomb").write_bytes(data)
            return tmp / "bomb"
        return data

    return name + (" (path)" if as_path else ""), build


# --------------------------------------------------------------------------- outcomes


def _sane(result: Any) -> str | None:
    """What is wrong with a returned ``Prediction`` or ``Located``, or None."""
    from mnist_cnn.locate import Located

    if isinstance(result, Located):
        image = result.image
    else:
        from mnist_cnn.predict import Prediction  # (imports PyTorch: only when needed)

        if not isinstance(result, Prediction):
            return f"returned a {type(result).__name__}"
        p = np.asarray(result.probabilities, np.float64)
        if p.shape != (10,) or not np.isfinite(p).all() or abs(p.sum() - 1) > 1e-3:
            return f"the probabilities are not a distribution: {result.probabilities}"
        if not 0 <= result.digit <= 9 or not math.isfinite(result.confidence):
            return f"digit {result.digit}, confidence {result.confidence}"
        image = result.model_input
    if not isinstance(image, np.ndarray) or image.shape != (28, 28) or image.dtype != np.uint8:
        return "the model input is not a uint8 28x28 image"
    return None


def classify(source: Any, call: Callable[[Any], Any]) -> tuple[str, str]:
    """(outcome, detail) of ``call(source)``: a prediction, a documented error, or an
    unexpected exception (with its traceback's last lines)."""
    from mnist_cnn.decode import ImageError  # (mnist_cnn.preprocess's, without PyTorch)

    try:
        result = call(source)
    except ImageError as exc:
        return DOCUMENTED, f"{type(exc).__name__}: {exc}"
    except OSError as exc:
        # load_image documents OSError for a path that cannot be read; from anything else
        # (bytes, an image, an array) it is a failure of ours.
        if isinstance(source, (str, os.PathLike)):
            return DOCUMENTED, f"{type(exc).__name__}: {exc.strerror or exc}"
        return UNEXPECTED, _traceback(exc)
    except Exception as exc:  # anything else is what the fuzzer looks for
        return UNEXPECTED, _traceback(exc)
    problem = _sane(result)
    if problem:
        return UNEXPECTED, f"bad result: {problem}"
    return PREDICTION, f"digit {result.digit}" if hasattr(result, "digit") else "located"


def _traceback(exc: BaseException) -> str:
    lines = traceback.format_exception(exc)
    return f"{type(exc).__name__}: {exc}"[:300] + "\n" + "".join(lines[-6:])


# --------------------------------------------------------------------------- the worker


def _memory_kb() -> dict[str, int]:
    """VmRSS and VmHWM (the peak since the last reset) of this process, in kB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line[:5]] = int(line.split()[1])
    return out


def _reset_peak() -> bool:
    """Reset this process's peak resident set to its current one (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _target(name: str) -> Callable[[Case], Callable[[Any], Any]]:
    """For each case, the function under test: the library's entry point that the case
    names, or (``module:function``, for the harness's own tests) what that function gives."""
    if name != "library":
        module, function = name.split(":")
        return getattr(__import__(module), function)
    import cv2
    import torch

    from mnist_cnn.paths import SHIPPED_MODEL
    from mnist_cnn.predict import Predictor
    from mnist_cnn.preprocess import prepare

    # One thread each: the timings do not depend on what else the machine runs, and a
    # worker per core is the parallelism.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    predictor = Predictor.from_checkpoint(SHIPPED_MODEL)
    predictor.predict(_mnist()[0])  # warm up: the first call initialises PyTorch
    return lambda case: predictor.predict if case.entry == "predict" else prepare


def worker(seed: int, tmp: str, target: str) -> None:
    """Serve cases to the parent: read an index per line on stdin; answer "go" when the
    input is built and the call starts, then one JSON line with its outcome."""
    warnings.simplefilter("ignore")  # a fuzzed file makes Pillow warn; outcomes are what count
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the libraries' prints go to stderr, never into the protocol
    call_for = _target(target)
    # What ``classify`` imports, imported now: not in the first input's time.
    for module in ("mnist_cnn.decode", "mnist_cnn.locate"):
        importlib.import_module(module)
    measured = _reset_peak()
    out.write("ready\n")
    for line in sys.stdin:
        index = int(line)
        case = make_case(seed, index)
        scratch = Path(tmp) / f"case{index}"
        scratch.mkdir(exist_ok=True)
        source = case.build(scratch)
        call = call_for(case)
        before = _memory_kb()["VmRSS"] if measured and _reset_peak() else None
        out.write("go\n")
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outcome, detail = classify(source, call)
        seconds = time.perf_counter() - start
        peak = (_memory_kb()["VmHWM"] - before) / 1024 if before is not None else None
        del source
        answer = {"outcome": outcome, "detail": detail, "seconds": seconds, "peak_mb": peak}
        answer["warnings"] = _our_warnings(caught)
        out.write(json.dumps(answer) + "\n")


def _our_warnings(caught: Sequence[warnings.WarningMessage]) -> list[str]:
    """The warnings that our own code issued (a NumPy overflow in locate.py, say): a log
    line per request on a server. Pillow's about the fuzzed files themselves are expected."""
    ours = {
        f"{Path(w.filename).name}:{w.lineno}: {w.category.__name__}: {w.message}"
        for w in caught
        if f"{os.sep}mnist_cnn{os.sep}" in w.filename
    }
    return sorted(ours)


# --------------------------------------------------------------------------- the runner


@dataclass
class Result:
    """What one input did."""

    case: Case
    outcome: str  # PREDICTION, DOCUMENTED, UNEXPECTED or HANG
    detail: str
    seconds: float
    peak_mb: float | None
    warnings: tuple[str, ...] = ()  # what our code warned (file:line: category: message)


class _Worker:
    """A worker process and the pipe protocol to it."""

    def __init__(self, seed: int, tmp: Path, target: str, log: Path) -> None:
        env = dict(os.environ)
        # Freed blocks over 128 kB go back to the system at once, so that each input's peak
        # is its own and not the reuse of a previous input's memory.
        env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
        env.setdefault("MALLOC_TRIM_THRESHOLD_", "131072")
        self.log = log
        self.stderr = log.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                str(seed),
                str(tmp),
                target,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
        )
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)
        self.pending = b""  # read but not yet a whole line
        self.ended = False  # its output closed: it exited
        if self.line(120.0) != "ready":
            self.kill()
            raise RuntimeError(f"the fuzz worker did not start; its log: {log}\n{self.tail()}")

    def send(self, index: int) -> bool:
        """Ask for input ``index``; False when the worker is gone."""
        try:
            self.proc.stdin.write(f"{index}\n".encode())
            self.proc.stdin.flush()
            return True
        except OSError:
            return False

    def line(self, timeout: float) -> str | None:
        """The worker's next line, or None if none came within ``timeout`` or it died.
        (Read from the pipe itself: a buffered reader could hold a line the selector
        does not see.)"""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not self.selector.select(left):
                return None
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                self.ended = True
                return None
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode()

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-2000:]
        return ""

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.selector.close()
        for stream in (self.proc.stdin, self.proc.stdout, self.stderr):
            with contextlib.suppress(OSError):
                stream.close()


def _run_one(
    worker: _Worker, case: Case, time_limit: float, kill_after: float
) -> tuple[Result, bool]:
    """(the result of ``case``, whether the worker is still usable)."""
    if not worker.send(case.index):
        return Result(case, UNEXPECTED, f"the worker died\n{worker.tail()}", 0.0, None), False
    if worker.line(120.0) != "go":  # building the input failed: the harness's own bug
        return Result(
            case, UNEXPECTED, f"could not build the input:\n{worker.tail()}", 0.0, None
        ), False
    start = time.perf_counter()
    line = worker.line(kill_after)
    if line is None:
        seconds = time.perf_counter() - start
        code = worker.proc.wait(5.0) if worker.ended else worker.proc.poll()
        if code is None:
            return Result(
                case, HANG, f"still running after {seconds:.1f} s: killed", seconds, None
            ), False
        return Result(
            case, UNEXPECTED, f"the worker died (status {code})\n{worker.tail()}", seconds, None
        ), False
    answer = json.loads(line)
    outcome = answer["outcome"]
    if answer["seconds"] > time_limit:
        answer["detail"] = f"took {answer['seconds']:.2f} s ({outcome}: {answer['detail']})"
        outcome = HANG
    result = Result(case, outcome, answer["detail"], answer["seconds"], answer["peak_mb"])
    result.warnings = tuple(answer["warnings"])
    return result, True


def run(
    seed: int,
    cases: Sequence[Case],
    target: str = "library",
    time_limit: float = 2.0,
    kill_after: float = 10.0,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> list[Result]:
    """Run ``cases`` (from ``make_case(seed, ...)``) in ``workers`` worker processes, each
    input with a watchdog; the results in the order of ``cases``.

    ``target`` is "library" (``Predictor.predict`` of the shipped model, and ``prepare``) or
    a ``module:function`` importable from tests/ that maps an entry name to a stand-in.
    """
    results: list[Result | None] = [None] * len(cases)
    done = [0]
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="mnist-fuzz-") as tmp:

        def drive(slot: int) -> None:
            log = Path(tmp) / f"worker{slot}.log"
            current: _Worker | None = None
            try:
                for position in range(slot, len(cases), workers):
                    if current is None:
                        current = _Worker(seed, Path(tmp), target, log)
                    result, usable = _run_one(current, cases[position], time_limit, kill_after)
                    results[position] = result
                    if not usable:
                        current.kill()
                        current = None
                    with lock:
                        done[0] += 1
                        if progress:
                            progress(done[0], len(cases))
            finally:
                if current is not None:
                    current.kill()

        threads = [threading.Thread(target=drive, args=(slot,)) for slot in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    missing = [cases[i].name for i, r in enumerate(results) if r is None]
    if missing:
        raise RuntimeError(f"the fuzz run stopped before {missing[0]}")
    return [r for r in results if r is not None]


def reproduce(seed: int, index: int) -> str:
    """The command that rebuilds and runs one input, printing what it did."""
    return f"python benchmarks/fuzz.py --seed {seed} --case {index}"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(int(sys.argv[2]), sys.argv[3], sys.argv[4])
