"""Things that are not one digit, drawn for training: letters, shapes, scribbles, pairs.

A network trained on ten digits only has no way to say "none of them": a letter or a
smiley gets whichever digit it resembles most, often at 99%. Outlier Exposure (Hendrycks,
Mazeika and Dietterich, ICLR 2019) fixes that in training: besides the digits, the network
sees images of other things and is taught to spread its probability evenly over the ten
classes for them (cross-entropy to the uniform distribution). It then learns what a digit
is *not*, and its top probability becomes a usable "is this a digit at all" score, which
``mnist_cnn.unsure`` thresholds.

The outliers are drawn here, procedurally, with OpenCV, so that training needs nothing
beyond the package and the MNIST training split (no font files, no other dataset):

- letters of OpenCV's built-in Hershey stroke fonts (plain, serif, script, italic), in
  random weights, slants and proportions; O, o, I and l are left out, being the shapes
  of 0 and 1;
- shapes people draw instead of a digit (star, triangle, square, heart, arrow, smiley,
  check mark, cross, spiral, house, lightning), hand-jittered;
- scribbles: smooth random curves, zig-zags, hatching, looping random walks;
- filled silhouettes (an object photographed instead of a digit), some patterned;
- two training digits side by side, touching or overlapping: a number is not a digit.

Every image ends in ``locate.frame``, the same MNIST framing that every upload goes
through, so outliers look exactly like what the model meets after preprocessing.

The benchmark measures on other non-digits on purpose (TrueType and handwriting fonts,
shapes drawn by another generator, Fashion-MNIST that training never sees), to show
whether what is learnt here carries over.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from mnist_cnn.locate import frame

# Digits are drawn on this canvas before framing: large enough for anti-aliased strokes of
# any weight, small enough to stay fast (a few tenths of a millisecond per image).
CANVAS = 128

LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz"  # not O o I l
HERSHEY_FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_PLAIN,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_COMPLEX_SMALL,
    cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
    cv2.FONT_HERSHEY_SCRIPT_COMPLEX,
)

# How the bank is shared among the kinds (letters are the hardest: many look like digits).
MIX = {"letter": 0.4, "shape": 0.15, "scribble": 0.15, "blob": 0.1, "pair": 0.2}

Points = np.ndarray  # float (N, 2), x and y in canvas pixels


def _thickness(rng: np.random.Generator) -> int:
    # From a fine pen to a marker, relative to the canvas; frame() then brings the strokes
    # to MNIST's width, as it does for uploads.
    return int(rng.integers(3, 15))


def _draw(strokes: list[Points], thickness: int, closed: list[bool] | None = None) -> np.ndarray:
    """Polylines (canvas coordinates) -> a float [0, 1] white-on-black canvas."""
    canvas = np.zeros((CANVAS, CANVAS), dtype=np.uint8)
    shift = 4  # sub-pixel vertices: smooth anti-aliased curves
    for i, pts in enumerate(strokes):
        is_closed = bool(closed[i]) if closed else False
        fixed = np.round(pts * (1 << shift)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(canvas, [fixed], is_closed, 255, thickness, cv2.LINE_AA, shift)
    return canvas.astype(np.float32) / 255.0


def _smooth(pts: Points, rounds: int = 3, closed: bool = False) -> Points:
    """Chaikin corner cutting: a hand-drawn polyline becomes a smooth curve."""
    for _ in range(rounds):
        nxt = np.roll(pts, -1, axis=0) if closed else pts[1:]
        cur = pts if closed else pts[:-1]
        q, r = 0.75 * cur + 0.25 * nxt, 0.25 * cur + 0.75 * nxt
        mid = np.stack([q, r], axis=1).reshape(-1, 2)
        pts = mid if closed else np.vstack([pts[:1], mid, pts[-1:]])
    return pts


def _jitter(pts: Points, rng: np.random.Generator, amount: float) -> Points:
    return pts + rng.normal(0.0, amount, pts.shape)


def _wobble(image: np.ndarray, rng: np.random.Generator, amount: float = 4.0) -> np.ndarray:
    """A smooth random displacement (an elastic distortion): printed strokes become
    hand-drawn ones."""
    coarse = rng.normal(0.0, amount, (2, 5, 5)).astype(np.float32)
    dx, dy = (cv2.resize(c, (CANVAS, CANVAS), interpolation=cv2.INTER_CUBIC) for c in coarse)
    xs, ys = np.meshgrid(np.arange(CANVAS, dtype=np.float32), np.arange(CANVAS, dtype=np.float32))
    return cv2.remap(image, xs + dx, ys + dy, cv2.INTER_LINEAR)


def _affine(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random rotation, shear and stretch, as different hands and slants would give."""
    angle = rng.uniform(-20, 20)
    m = cv2.getRotationMatrix2D((CANVAS / 2, CANVAS / 2), angle, 1.0)
    shear, stretch = rng.uniform(-0.35, 0.35), rng.uniform(0.7, 1.3)
    a = np.array([[stretch, shear], [0.0, 1.0]]) @ m[:, :2]
    m[:, :2] = a
    m[:, 2] = CANVAS / 2 - a @ np.array([CANVAS / 2, CANVAS / 2])
    return cv2.warpAffine(image, m, (CANVAS, CANVAS), flags=cv2.INTER_LINEAR)


# --------------------------------------------------------------------------- the kinds


def letter(rng: np.random.Generator) -> np.ndarray:
    """A letter of a Hershey stroke font, in a random weight, slant and proportion."""
    font = int(rng.choice(HERSHEY_FONTS))
    if rng.random() < 0.3:
        font |= cv2.FONT_ITALIC
    char = LETTERS[rng.integers(len(LETTERS))]
    thickness = int(rng.integers(1, 5))
    (w, h), base = cv2.getTextSize(char, font, 1.0, thickness)
    scale = 70.0 / max(h + base, w, 1)
    thickness = max(1, round(thickness * scale / 2))
    (w, h), base = cv2.getTextSize(char, font, scale, thickness)
    canvas = np.zeros((CANVAS, CANVAS), dtype=np.uint8)
    org = ((CANVAS - w) // 2, (CANVAS + h - base) // 2)
    cv2.putText(canvas, char, org, font, scale, 255, thickness, cv2.LINE_AA)
    image = _affine(canvas.astype(np.float32) / 255.0, rng)
    return _wobble(image, rng) if rng.random() < 0.5 else image


def _star(rng: np.random.Generator) -> list[Points]:
    k = int(rng.integers(5, 8))
    t = np.arange(2 * k) * math.pi / k + rng.uniform(0, math.pi)
    r = np.where(np.arange(2 * k) % 2 == 0, 1.0, rng.uniform(0.35, 0.55))
    return [np.stack([r * np.cos(t), r * np.sin(t)], 1)]


def _polygon(rng: np.random.Generator) -> list[Points]:
    k = int(rng.choice([3, 4, 4]))  # triangles, squares and diamonds (more sides: a zero)
    t = np.arange(k) * 2 * math.pi / k + rng.uniform(0, math.pi)
    return [np.stack([np.cos(t), np.sin(t)], 1)]


def _heart(rng: np.random.Generator) -> list[Points]:
    t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return [np.stack([x, y], 1) / 16]


def _arrow(rng: np.random.Generator) -> list[Points]:
    head = rng.uniform(0.3, 0.5)
    return [
        np.array([[-1.0, 0.0], [1.0, 0.0]]),
        np.array([[1 - head, -head], [1.0, 0.0], [1 - head, head]]),
    ]


def _smiley(rng: np.random.Generator) -> list[Points]:
    t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    face = np.stack([np.cos(t), np.sin(t)], 1)
    s = np.linspace(0.15 * math.pi, 0.85 * math.pi, 12)
    mouth = np.stack([0.55 * np.cos(s), 0.15 + 0.45 * np.sin(s)], 1)
    eyes = [np.array([[x, -0.35], [x, -0.3]]) for x in (-0.35, 0.35)]
    return [face, mouth, *eyes]


def _check(rng: np.random.Generator) -> list[Points]:
    return [np.array([[-0.8, 0.1], [-0.25, 0.7], [0.9, -0.8]])]


def _cross(rng: np.random.Generator) -> list[Points]:
    if rng.random() < 0.5:  # plus
        return [np.array([[-1.0, 0.0], [1.0, 0.0]]), np.array([[0.0, -1.0], [0.0, 1.0]])]
    return [np.array([[-1.0, -1.0], [1.0, 1.0]]), np.array([[-1.0, 1.0], [1.0, -1.0]])]


def _spiral(rng: np.random.Generator) -> list[Points]:
    turns = rng.uniform(1.5, 3.5)
    t = np.linspace(0, turns * 2 * math.pi, 80)
    r = t / t[-1]
    return [np.stack([r * np.cos(t), r * np.sin(t)], 1)]


def _house(rng: np.random.Generator) -> list[Points]:
    return [
        np.array([[-0.8, 1.0], [-0.8, -0.1], [0.0, -0.9], [0.8, -0.1], [0.8, 1.0], [-0.8, 1.0]])
    ]


def _lightning(rng: np.random.Generator) -> list[Points]:
    return [np.array([[0.3, -1.0], [-0.4, 0.1], [0.3, 0.0], [-0.3, 1.0]])]


SHAPES: dict[str, Callable[[np.random.Generator], list[Points]]] = {
    "star": _star,
    "polygon": _polygon,
    "heart": _heart,
    "arrow": _arrow,
    "smiley": _smiley,
    "check": _check,
    "cross": _cross,
    "spiral": _spiral,
    "house": _house,
    "lightning": _lightning,
}
# Shapes drawn as closed outlines.
_CLOSED = {"star", "polygon", "heart"}


def _to_canvas(strokes: list[Points], rng: np.random.Generator) -> list[Points]:
    """Unit-box strokes -> canvas coordinates, in a random size and rotation."""
    angle = rng.uniform(-math.pi, math.pi) if rng.random() < 0.5 else rng.uniform(-0.3, 0.3)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    size = rng.uniform(0.28, 0.4) * CANVAS
    return [CANVAS / 2 + size * (s @ rot.T) for s in strokes]


def shape(rng: np.random.Generator) -> np.ndarray:
    """One of ``SHAPES``, hand-jittered and smoothed as a pen would draw it."""
    name = list(SHAPES)[rng.integers(len(SHAPES))]
    closed = name in _CLOSED
    strokes = [_jitter(s, rng, 0.04) for s in SHAPES[name](rng)]
    if name != "polygon" and rng.random() < 0.5:  # a rounded square is a zero
        strokes = [_smooth(s, 2, closed and len(s) > 2) for s in strokes]
    return _draw(_to_canvas(strokes, rng), _thickness(rng), [closed] * len(strokes))


def scribble(rng: np.random.Generator) -> np.ndarray:
    """A smooth random curve, a zig-zag, hatching or a looping random walk."""
    kind = rng.integers(4)
    if kind == 0:  # smooth curve through random points
        strokes = [_smooth(rng.uniform(-1, 1, (int(rng.integers(4, 10)), 2)), 3)]
    elif kind == 1:  # zig-zag
        n = int(rng.integers(4, 10))
        x = np.linspace(-1, 1, n)
        y = np.where(np.arange(n) % 2 == 0, -1.0, 1.0) * rng.uniform(0.3, 1.0)
        strokes = [_jitter(np.stack([x, y], 1), rng, 0.05)]
    elif kind == 2:  # hatching, sometimes crossed
        n = int(rng.integers(3, 8))
        offsets = np.linspace(-0.9, 0.9, n)
        strokes = [np.array([[-1.0, o], [1.0, o + 0.2]]) for o in offsets]
        if rng.random() < 0.5:
            strokes += [np.array([[o, -1.0], [o + 0.2, 1.0]]) for o in offsets]
        strokes = [_jitter(s, rng, 0.04) for s in strokes]
    else:  # a looping random walk
        steps = rng.normal(0, 0.35, (int(rng.integers(15, 40)), 2))
        walk = np.cumsum(steps, axis=0)
        walk -= walk.mean(0)
        walk /= max(float(np.abs(walk).max()), 1e-6)
        strokes = [_smooth(walk, 2)]
    return _draw(_to_canvas(strokes, rng), _thickness(rng))


def blob(rng: np.random.Generator) -> np.ndarray:
    """A filled smooth silhouette, sometimes patterned (stripes, or holes cut out)."""
    k = int(rng.integers(5, 12))
    t = np.sort(rng.uniform(0, 2 * math.pi, k))
    r = rng.uniform(0.4, 1.0, k)
    outline = _smooth(np.stack([r * np.cos(t), r * np.sin(t)], 1), 3, closed=True)
    (pts,) = _to_canvas([outline * np.array([rng.uniform(0.6, 1.0), 1.0])], rng)
    canvas = np.zeros((CANVAS, CANVAS), dtype=np.uint8)
    cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 255, cv2.LINE_AA)
    pattern = rng.integers(3)
    if pattern == 1:  # stripes
        step = int(rng.integers(8, 20))
        for y in range(0, CANVAS, step):
            cv2.line(canvas, (0, y), (CANVAS, y + 20), 0, int(rng.integers(2, 5)))
    elif pattern == 2:  # holes
        for _ in range(int(rng.integers(1, 4))):
            centre = tuple(int(v) for v in rng.uniform(CANVAS * 0.35, CANVAS * 0.65, 2))
            cv2.circle(canvas, centre, int(rng.integers(4, 12)), 0, -1, cv2.LINE_AA)
    return canvas.astype(np.float32) / 255.0


def pair(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two digits from ``digits`` (uint8 (N, 28, 28)) side by side: apart, touching or
    overlapping a little, at slightly different heights."""
    a, b = (digits[rng.integers(len(digits))].astype(np.float32) / 255.0 for _ in range(2))
    gap = int(rng.integers(-6, 8))  # in pixels of the 28-pixel digits; negative: overlap
    dy = int(rng.integers(-4, 5))
    canvas = np.zeros((28 + abs(dy), 56 + gap), dtype=np.float32)
    top_a, top_b = max(0, -dy), max(0, dy)
    canvas[top_a : top_a + 28, :28] = a
    region = canvas[top_b : top_b + 28, 28 + gap :]  # b's place: the last 28 columns
    np.maximum(region, b, out=region)
    return canvas


KINDS = tuple(MIX)


def outlier_bank(count: int, digits: np.ndarray, seed: int = 0) -> np.ndarray:
    """``count`` non-digit model inputs, uint8 (count, 28, 28), white on black as MNIST.

    ``digits`` (uint8 (N, 28, 28)) are the training digits that pairs are made of: pass the
    training split only, so that validation and test digits stay unseen. The same
    ``count``, ``digits`` and ``seed`` give the same bank.
    """
    draw: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
        "letter": letter,
        "shape": shape,
        "scribble": scribble,
        "blob": blob,
        "pair": lambda rng: pair(digits, rng),
    }
    rng = np.random.default_rng(seed)
    shares = np.array([MIX[k] for k in KINDS])
    kinds = rng.choice(len(KINDS), size=count, p=shares / shares.sum())
    out = np.zeros((count, 28, 28), dtype=np.uint8)
    for i, k in enumerate(kinds):
        image = draw[KINDS[k]](rng)
        while image.max() <= 0.1:  # a drawing that fell off the canvas: draw another
            image = draw[KINDS[k]](rng)
        out[i] = np.round(frame(image) * 255.0).astype(np.uint8)
    return out
