"""MNIST data: reading and verifying IDX files, downloading them, splitting, batching, augmenting.

The whole dataset is small (60,000 + 10,000 images of 28x28 bytes, 55 MB), so it lives in
memory as tensors and every step of the input pipeline (shuffling, batching, normalising,
augmenting) is a batched tensor operation. There is no per-sample Python work and no
DataLoader: on a 2-core CPU that work would cost more than the network itself.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import re
import struct
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mnist_cnn import atomic, paths

# MNIST's training-set pixel statistics over [0, 1]. Every model here is trained on inputs
# standardised with them (``normalise``); each checkpoint's metadata records the values it
# was trained with, and whoever prepares inputs for it reads them from there.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

# SHA-256 of the *decompressed* IDX files. The bundled .gz files and the canonical ones from the
# mirrors have different gzip headers but decompress to these exact bytes.
FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

# MD5 of the canonical .gz files, as published by the mirrors.
CANONICAL_GZ_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}

MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

SPLITS: dict[str, tuple[str, str, int]] = {
    # split: (images file, labels file, number of examples)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension


class DatasetError(Exception):
    """A dataset file is missing, truncated, corrupt or not the expected one."""


# --------------------------------------------------------------------------- reading


def _fix() -> str:
    """How to get MNIST back, for this installation (a clone, or an installed package)."""
    if paths.repo_root() is not None:
        return "Restore the bundled copy (`git checkout -- data/mnist`), or `mnist-cnn download`."
    return f"Run `mnist-cnn download` (it fills {paths.user_data_dir()})."


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """``paths.find_data``, with its ``NotFoundError`` as a ``DatasetError``."""
    try:
        return paths.find_data(data_dir).path
    except paths.NotFoundError as exc:
        raise DatasetError(str(exc)) from None


def locate(data_dir: str | Path, name: str) -> Path:
    """Return the path of IDX file ``name`` in ``data_dir``, gzipped or not."""
    data_dir = Path(data_dir)
    for candidate in (data_dir / f"{name}.gz", data_dir / name):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"{data_dir / (name + '.gz')}: file not found. {_fix()}")


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":  # not gzip: a plain IDX file
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise DatasetError(
            f"{path}: the gzip stream is corrupt or truncated ({exc}). {_fix()}"
        ) from exc


def read_idx(path: str | Path, expected_sha256: str | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped or not) into a NumPy array.

    Checks the magic number, that the data length matches the header's dimensions and, when
    ``expected_sha256`` is given, the SHA-256 of the decompressed bytes. Raises ``DatasetError``
    naming the file, what was expected and how to fix it.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found. {_fix()}")
    data = _read_bytes(path)
    fix = _fix()
    if len(data) < 8:
        raise DatasetError(f"{path}: {len(data)} bytes is too short for an IDX header. {fix}")
    magic = struct.unpack(">I", data[:4])[0]
    if magic not in (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC):
        raise DatasetError(
            f"{path}: magic number 0x{magic:08x} is not an IDX file of unsigned bytes "
            f"(expected 0x{IDX_IMAGES_MAGIC:08x} for images or 0x{IDX_LABELS_MAGIC:08x} for "
            f"labels). {fix}"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated header ({len(data)} bytes). {fix}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected_len = header + math.prod(shape)
    if len(data) != expected_len:
        raise DatasetError(
            f"{path}: {len(data)} bytes but the header promises {expected_len} "
            f"(shape {tuple(shape)}); the file is truncated or padded. {fix}"
        )
    if expected_sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected_sha256:
            raise DatasetError(
                f"{path}: SHA-256 of the decompressed data is {digest}, expected "
                f"{expected_sha256}. The file is corrupt or is not the MNIST release. {fix}"
            )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


@dataclass(frozen=True)
class Split:
    """Images as uint8 (N, 28, 28) and labels as int64 (N,), both on the CPU."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> Split:
        """The examples at ``index``."""
        return Split(self.images[index], self.labels[index])


def load_split(split: str, data_dir: str | Path | None = None, verify: bool = True) -> Split:
    """Load the ``"train"`` or ``"test"`` split, verified against the known SHA-256 sums."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, not {split!r}")
    images_name, labels_name, count = SPLITS[split]
    data_dir = resolve_data_dir(data_dir)
    images = read_idx(locate(data_dir, images_name), FILES[images_name] if verify else None)
    labels = read_idx(locate(data_dir, labels_name), FILES[labels_name] if verify else None)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1:
        raise DatasetError(
            f"{data_dir}: expected images of shape (N, 28, 28) and labels of shape (N,), "
            f"got {images.shape} and {labels.shape}."
        )
    if len(images) != len(labels) or (verify and len(labels) != count):
        raise DatasetError(
            f"{data_dir}: {len(images)} images and {len(labels)} labels for the {split} split "
            f"(expected {count} of each)."
        )
    # np.frombuffer gives a read-only view; copy once into tensors we own.
    return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))


def dataset_sha256() -> str:
    """One SHA-256 identifying the dataset: the hash of the four files' verified hashes.

    ``load_split`` refuses any file whose content differs, so this identifies the data a
    model was trained and tested on.
    """
    joined = "\n".join(f"{FILES[name]}  {name}" for name in sorted(FILES))
    return hashlib.sha256(joined.encode()).hexdigest()


# --------------------------------------------------------------------------- downloading


def download(
    data_dir: str | Path,
    mirrors: tuple[str, ...] = MIRRORS,
    timeout: float = 30.0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Download the four canonical .gz files into ``data_dir``, checking MD5 and SHA-256.

    Files already present and valid are kept. Each file is written atomically, so an
    interrupted download never leaves a broken file. Raises ``DatasetError`` when no mirror
    can deliver a file (for example without network); the bundled copy keeps working.
    """
    from tqdm import tqdm

    data_dir = Path(data_dir)
    written = []
    for name, md5 in CANONICAL_GZ_MD5.items():
        target = data_dir / f"{name}.gz"
        try:
            read_idx(target, FILES[name])
            log(f"{target}: present and verified")
            continue
        except DatasetError:
            pass
        errors = []
        for mirror in mirrors:
            url = mirror + f"{name}.gz"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    chunks = []
                    with tqdm(
                        total=total, unit="B", unit_scale=True, desc=name, disable=not progress
                    ) as bar:
                        while chunk := response.read(1 << 16):
                            chunks.append(chunk)
                            bar.update(len(chunk))
                body = b"".join(chunks)
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
                continue
            if hashlib.md5(body).hexdigest() != md5:
                errors.append(f"{url}: MD5 mismatch (expected {md5})")
                continue
            atomic.write_bytes(target, body)
            read_idx(target, FILES[name])  # the content check that matters
            written.append(target)
            log(f"{target}: downloaded from {mirror}")
            break
        else:
            raise DatasetError(
                f"could not download {name}.gz from any mirror:\n  "
                + "\n  ".join(errors)
                + "\nCheck the network connection; the copy bundled in data/mnist/ needs none."
            )
    return written


# --------------------------------------------------------------------------- splitting


def stratified_split(
    labels: torch.Tensor, val_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (train, validation) with each class in proportion, reproducibly.

    Each class contributes ``round(val_size * class_share)`` examples (largest remainders
    settle the rounding), drawn with a generator seeded by ``seed``.
    """
    n = len(labels)
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}), got {val_size}")
    gen = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * val_size / n
    take = exact.floor().long()
    shortfall = val_size - int(take.sum())
    if shortfall:
        take[torch.argsort(exact - take, descending=True)[:shortfall]] += 1
    val_parts = []
    for cls, k in zip(classes.tolist(), take.tolist(), strict=True):
        members = torch.nonzero(labels == cls).flatten()
        val_parts.append(members[torch.randperm(len(members), generator=gen)[:k]])
    val_idx = torch.cat(val_parts).sort().values
    mask = torch.ones(n, dtype=torch.bool)
    mask[val_idx] = False
    return torch.nonzero(mask).flatten(), val_idx


# --------------------------------------------------------------------------- batching


@functools.lru_cache(maxsize=8)
def _normalised_levels(mean: float, std: float) -> np.ndarray:
    """``normalise`` of each uint8 level 0-255, computed by the very operations it uses."""
    levels = torch.arange(256, dtype=torch.uint8).float().div_(255.0)
    return ((levels - mean) / std).numpy()


def normalise(
    images: torch.Tensor | np.ndarray, mean: float = MNIST_MEAN, std: float = MNIST_STD
) -> torch.Tensor:
    """MNIST-like images -> the network's input: float (N, 1, 28, 28), scaled to [0, 1], then
    standardised with ``mean`` and ``std`` (the checkpoint's; MNIST's by default).

    The one place the normalisation is written: training batches, evaluation, the Predictor
    and the ONNX check all call it. ``images`` are uint8 (28, 28), (N, 28, 28) or
    (N, 1, 28, 28) (a tensor or a NumPy array), or float tensors already in [0, 1].
    """
    if isinstance(images, np.ndarray):
        if images.dtype == np.uint8:
            # A look-up in the 256 values the same operations give: identical numbers, and
            # a quarter of the cost on the single-image path of every prediction.
            table = _normalised_levels(float(mean), float(std))
            return torch.from_numpy(table[images]).reshape(-1, 1, *images.shape[-2:])
        images = torch.from_numpy(np.ascontiguousarray(images))
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    x = x.reshape(-1, 1, *x.shape[-2:])
    return (x - mean) / std


# The default augmentation. Shifts stay small (6% of 28 pixels: up to 1.7 px) because every
# MNIST digit, and every upload after preprocess.py, is centred by its centre of mass: larger
# shifts (10%, 2.8 px) teach positions the model never meets and cost accuracy (README).
MAX_ROTATION = 10.0
SCALE_RANGE = (0.9, 1.1)
MAX_TRANSLATE = 0.06


def random_affine(
    images: torch.Tensor,
    generator: torch.Generator,
    max_rotation: float = MAX_ROTATION,
    scale: tuple[float, float] = SCALE_RANGE,
    max_translate: float = MAX_TRANSLATE,
) -> torch.Tensor:
    """Apply one small random affine transform per image, as a single batched operation.

    ``images`` is float (N, 1, H, W) with background 0. Rotation is in degrees, translation
    the largest shift along each axis as a fraction of the image size. The digits stay
    recognisably what they are; the network learns not to depend on the exact size and
    slant of each writer, and on small errors of centring.
    """
    n = images.shape[0]
    u = torch.rand(n, 4, generator=generator)
    angle = (u[:, 0] * 2 - 1) * math.radians(max_rotation)
    s = scale[0] + u[:, 1] * (scale[1] - scale[0])
    # affine_grid maps output to input coordinates in [-1, 1], so translation t moves by t/2
    # of the image: a fraction f of the image is 2f.
    tx = (u[:, 2] * 2 - 1) * max_translate * 2
    ty = (u[:, 3] * 2 - 1) * max_translate * 2
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(
        images.dtype
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_strokes(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Vary each image's stroke weight and edge sharpness a little, as a single batched
    operation.

    MNIST's strokes come from one kind of pen, scanned and anti-aliased; uploads reach the
    model through the preprocessing with strokes of other weights (a marker, a drawing
    pad's round brush, a fine pen thickened to MNIST's width) and harder or softer edges.
    A fractional dilation or erosion (a blend with the 3x3 max or min) and a contrast
    stretch around mid-grey (crisp, saturated strokes, as a brush draws them) imitate what
    remains. (A pass through a low resolution, tried too, cost accuracy on the UCI scans
    and on validation: README.) ``images`` is float (N, 1, H, W) in [0, 1], background 0.
    """
    n = images.shape[0]
    u = torch.rand(n, 3, 1, 1, 1, generator=generator)
    grown = F.max_pool2d(images, 3, stride=1, padding=1)
    shrunk = -F.max_pool2d(-images, 3, stride=1, padding=1)
    # A third of the images thicker, a third thinner (by up to half a pixel on each side),
    # a third unchanged.
    amount = u[:, 1] * 0.6
    out = torch.where(
        u[:, 0] < 1 / 3,
        images + amount * (grown - images),
        torch.where(u[:, 0] < 2 / 3, images - amount * (images - shrunk), images),
    )
    # The preprocessing saturates every digit's core (its brightest pixel is white).
    out = out / out.amax(dim=(1, 2, 3), keepdim=True).clamp_(min=1e-6)
    # Half of them with crisper edges: contrast up to 3x around mid-grey.
    gain = torch.where(u[:, 2] < 0.5, 1 + 4 * u[:, 2], torch.ones_like(u[:, 2]))
    return ((out - 0.5) * gain + 0.5).clamp_(0, 1) * (out > 0)


def batches(
    split: Split,
    batch_size: int,
    mean: float,
    std: float,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: bool = False,
    max_translate: float = MAX_TRANSLATE,
    strokes: bool = False,
    shard: tuple[int, int] = (0, 1),
    augment_generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalised (images, labels) batches from an in-memory split.

    Shuffling (a fresh permutation per call) draws from ``generator``, augmentation
    (``random_affine``, shifting by up to ``max_translate``) from ``augment_generator``
    (default: the same generator), so a run is reproducible from its seed and resumable
    from the generators' saved states.

    ``shard=(rank, world_size)`` yields this process's share of every global batch of
    ``batch_size`` images (every world_size-th image, from the rank-th): data-parallel
    processes that share the shuffling generator's seed take disjoint parts of the same
    global batches, and augment only their own part.
    """
    augment_generator = augment_generator or generator
    if (shuffle and generator is None) or (augment and augment_generator is None):
        raise ValueError("shuffle and augment need a torch.Generator for reproducibility")
    rank, world_size = shard
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size][rank::world_size]
        x = split.images[idx].float().div_(255.0).unsqueeze_(1)  # [0, 1], augmented as such
        if augment:
            assert augment_generator is not None
            x = random_affine(x, augment_generator, max_translate=max_translate)
            if strokes:
                x = random_strokes(x, augment_generator)
        yield normalise(x, mean, std), split.labels[idx]


# --------------------------------------------------------------------------- finding the data
# Notebooks run in places we do not control: a clone of the repository (data/mnist/), Kaggle
# with a dataset attached under /kaggle/input (any layout, any nesting, gzipped or not, file
# names with "." or "-" before "idx"), or a bare machine with internet. ``find_data_dir``
# turns all of them into one directory that ``load_split`` reads.

KAGGLE_INPUT = Path("/kaggle/input")

# train-images-idx3-ubyte, train-images.idx3-ubyte, T10K-LABELS-IDX1-UBYTE.gz, ...
_IDX_NAME = re.compile(r"^(train|t10k)-(images|labels)[.-](idx[13])-ubyte(\.gz)?$", re.IGNORECASE)
# Dataset trees can be large (image datasets hold 100,000s of files); MNIST sits near the top.
_MAX_SEARCH_DEPTH = 6


def _canonical_name(filename: str) -> str | None:
    match = _IDX_NAME.match(filename)
    if match is None:
        return None
    kind, what, idx = (g.lower() for g in match.groups()[:3])
    name = f"{kind}-{what}-{idx}-ubyte"
    return name if name in FILES else None


def _verify_dir(directory: Path) -> str | None:
    """None when ``directory`` holds the four MNIST files (verified), else why not."""
    try:
        for name, sha in FILES.items():
            read_idx(locate(directory, name), sha)
    except DatasetError as exc:
        return str(exc).split(". ")[0]
    return None


def _search(roots: Sequence[Path]) -> dict[str, list[Path]]:
    """Every file under ``roots`` whose name is one of the MNIST files, by canonical name."""
    found: dict[str, list[Path]] = {name: [] for name in FILES}
    for root in roots:
        if not root.is_dir():
            continue
        base_depth = len(root.parts)
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            if len(Path(dirpath).parts) - base_depth >= _MAX_SEARCH_DEPTH:
                dirnames.clear()
            dirnames.sort()  # a reproducible choice when several datasets match
            for filename in sorted(filenames):
                name = _canonical_name(filename)
                if name is not None:
                    found[name].append(Path(dirpath) / filename)
    return found


def _stage(files: dict[str, Path], staging_dir: Path) -> Path:
    """Make ``staging_dir`` hold ``files`` under the names ``locate`` expects (symlinks)."""
    staging_dir.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        for stale in (staging_dir / name, staging_dir / f"{name}.gz"):
            stale.unlink(missing_ok=True)
        with source.open("rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        target = staging_dir / (f"{name}.gz" if gzipped else name)
        try:
            target.symlink_to(source.resolve())
        except OSError:  # no symlinks (Windows without developer mode): copy instead
            atomic.write_bytes(target, source.read_bytes())
    return staging_dir


def find_data_dir(
    candidates: Sequence[str | Path] | None = None,
    search_roots: Sequence[str | Path] = (KAGGLE_INPUT,),
    download_to: str | Path | None = None,
    staging_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """A directory from which ``load_split`` reads the verified MNIST files.

    Looks, in this order, in each of ``candidates`` (a directory with the four files, as in
    the repository), then anywhere under ``search_roots`` (any nesting and naming, as in
    attached Kaggle datasets), and finally downloads into ``download_to`` when it is given.
    Every file is checked against MNIST's SHA-256, so a look-alike with the same file names
    (Fashion-MNIST, a truncated upload) is passed over. Files found scattered or under other
    names are symlinked into ``staging_dir`` (default: a directory named after them in the
    system's temporary directory) under the standard names. Raises ``DatasetError`` saying
    where it looked.
    """
    if candidates is None:  # the rule of mnist_cnn.paths, and a notebook's parent directory
        candidates = [paths.LOCAL_DATA, Path("..") / paths.LOCAL_DATA]
        candidates += [c.path for c in paths.data_candidates()[1:]]
    rejected: list[str] = []
    for candidate in candidates:
        directory = Path(candidate)
        if not directory.is_dir():
            continue
        problem = _verify_dir(directory)
        if problem is None:
            log(f"MNIST found in {directory}")
            return directory
        rejected.append(problem)

    roots = [Path(r) for r in search_roots]
    chosen: dict[str, Path] = {}
    for name, found in _search(roots).items():
        for path in found:
            try:
                read_idx(path, FILES[name])
            except DatasetError as exc:
                rejected.append(str(exc).split(". ")[0])
                continue
            chosen[name] = path
            break
    if len(chosen) == len(FILES):
        directories = {p.parent for p in chosen.values()}
        names_ok = all(p.name in (n, f"{n}.gz") for n, p in chosen.items())
        if len(directories) == 1 and names_ok:
            directory = directories.pop()
        else:
            if staging_dir is None:
                # One directory per set of sources, so concurrent runs never relink each other's.
                key = "\n".join(str(chosen[n].resolve()) for n in sorted(chosen))
                digest = hashlib.sha256(key.encode()).hexdigest()[:12]
                staging_dir = Path(tempfile.gettempdir()) / f"mnist-cnn-data-{digest}"
            directory = _stage(chosen, Path(staging_dir))
        log(f"MNIST found in {', '.join(sorted({str(p.parent) for p in chosen.values()}))}")
        return directory

    looked = [str(c) for c in candidates] + [f"{r}/** (any depth)" for r in roots]
    missing = sorted(set(FILES) - set(chosen))
    where = (
        f"MNIST was not found in: {', '.join(looked)}"
        f" (missing or not valid MNIST: {', '.join(missing)})"
    )
    if rejected:
        where += "\nfiles passed over:\n  " + "\n  ".join(rejected[:8])
    if download_to is None:
        raise DatasetError(
            f"{where}.\nOn Kaggle, attach a dataset with the four MNIST IDX files (Add Input), "
            f"or turn Internet on so that it can be downloaded."
        )
    log(f"{where}; downloading it into {download_to}")
    try:
        download(download_to, log=log)
    except DatasetError as exc:
        raise DatasetError(
            f"{exc}\n{where}. On Kaggle, attach a dataset with the four MNIST IDX files "
            f"(Add Input) or turn Internet on in the notebook's settings."
        ) from exc
    return Path(download_to)
