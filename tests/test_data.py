"""The IDX reader, the dataset loader, the split, batching and augmentation."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mnist_cnn import data


def write_idx(
    path: Path, array: np.ndarray, compress: bool = True, magic: int | None = None
) -> bytes:
    """Write ``array`` (uint8) as an IDX file; returns the uncompressed bytes."""
    magic = magic if magic is not None else 0x0800 | array.ndim
    raw = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return raw


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trips(tmp_path: Path, images: np.ndarray, compress: bool) -> None:
    raw = write_idx(tmp_path / "x", images, compress)
    out = data.read_idx(tmp_path / "x", hashlib.sha256(raw).hexdigest())
    assert out.shape == (7, 28, 28)
    np.testing.assert_array_equal(out, images)


def test_read_idx_labels(tmp_path: Path) -> None:
    labels = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "y.gz", labels)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "y.gz"), labels)


def test_truncated_file_is_reported(tmp_path: Path, images: np.ndarray) -> None:
    raw = write_idx(tmp_path / "x", images, compress=False)
    (tmp_path / "x").write_bytes(raw[:-100])
    with pytest.raises(data.DatasetError, match=r"x: .*truncated"):
        data.read_idx(tmp_path / "x")


def test_truncated_gzip_is_reported(tmp_path: Path, images: np.ndarray) -> None:
    write_idx(tmp_path / "x.gz", images)
    blob = (tmp_path / "x.gz").read_bytes()
    (tmp_path / "x.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(data.DatasetError, match=r"x\.gz: .*(corrupt|truncated)"):
        data.read_idx(tmp_path / "x.gz")


def test_wrong_magic_is_reported(tmp_path: Path, images: np.ndarray) -> None:
    write_idx(tmp_path / "x.gz", images, magic=0x00000D03)  # float data, not unsigned bytes
    with pytest.raises(data.DatasetError, match="magic number 0x00000d03"):
        data.read_idx(tmp_path / "x.gz")


def test_wrong_checksum_names_file_and_expected_hash(tmp_path: Path, images: np.ndarray) -> None:
    write_idx(tmp_path / "x.gz", images)
    with pytest.raises(data.DatasetError, match=r"x\.gz: SHA-256 .* expected 0{64}.*download"):
        data.read_idx(tmp_path / "x.gz", "0" * 64)


def test_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(data.DatasetError, match="not found.*mnist-cnn download"):
        data.load_split("test", tmp_path)


def test_bundled_dataset_is_complete_and_verified(
    train_split: data.Split, test_split: data.Split
) -> None:
    assert train_split.images.shape == (60_000, 28, 28) and train_split.images.dtype == torch.uint8
    assert test_split.images.shape == (10_000, 28, 28)
    assert torch.bincount(test_split.labels).tolist()[:3] == [980, 1135, 1032]
    pixels = train_split.images.double() / 255
    assert pixels.mean().item() == pytest.approx(0.1307, abs=5e-5)
    assert pixels.std().item() == pytest.approx(0.3081, abs=5e-5)


def test_split_is_stratified_disjoint_and_deterministic(train_split: data.Split) -> None:
    labels = train_split.labels
    tr, va = data.stratified_split(labels, 5000, seed=0)
    assert len(va) == 5000 and len(tr) == 55_000
    assert len(set(tr.tolist()) & set(va.tolist())) == 0
    share_full = torch.bincount(labels).double() / len(labels)
    share_val = torch.bincount(labels[va]).double() / len(va)
    assert (share_full - share_val).abs().max().item() < 1e-3  # proportions kept per class
    tr2, va2 = data.stratified_split(labels, 5000, seed=0)
    assert torch.equal(va, va2) and torch.equal(tr, tr2)
    _, va3 = data.stratified_split(labels, 5000, seed=1)
    assert not torch.equal(va, va3)


def test_split_rejects_impossible_sizes() -> None:
    with pytest.raises(ValueError):
        data.stratified_split(torch.arange(10) % 2, 10, seed=0)


def test_batches_cover_every_example_once_and_normalise() -> None:
    split = data.Split(
        torch.arange(10, dtype=torch.uint8).repeat_interleave(784).view(10, 28, 28),
        torch.arange(10),
    )
    gen = torch.Generator().manual_seed(0)
    seen = []
    for x, y in data.batches(split, 4, mean=0.5, std=0.25, shuffle=True, generator=gen):
        assert x.shape[1:] == (1, 28, 28)
        # each image is constant, so its normalised value identifies it
        expected = (y.float() / 255 - 0.5) / 0.25
        torch.testing.assert_close(x[:, 0, 0, 0], expected)
        seen += y.tolist()
    assert sorted(seen) == list(range(10)) and seen != list(range(10))


def test_shuffle_needs_a_generator() -> None:
    split = data.Split(torch.zeros(2, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="Generator"):
        next(data.batches(split, 1, 0.0, 1.0, shuffle=True))


def test_random_affine_moves_digits_but_keeps_them() -> None:
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 10:18, 12:16] = 1.0
    out = data.random_affine(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert not torch.allclose(out, x)  # it does transform
    mass = out.sum((1, 2, 3))
    assert ((mass > 0.75 * 32) & (mass < 1.3 * 32)).all()  # ink is kept (scale 0.9-1.1)
    same = data.random_affine(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, same)  # reproducible from the generator


def _largest_shift(max_translate: float) -> float:
    """The largest centre-of-mass displacement, in pixels, of a pure random translation."""
    x = torch.zeros(256, 1, 28, 28)
    x[:, :, 12:16, 12:16] = 1.0
    out = data.random_affine(
        x,
        torch.Generator().manual_seed(0),
        max_rotation=0.0,
        scale=(1.0, 1.0),
        max_translate=max_translate,
    )
    coords = torch.arange(28, dtype=torch.float32)
    mass = out.sum((1, 2, 3))
    cy = (out.sum((1, 3)) * coords).sum(1) / mass
    cx = (out.sum((1, 2)) * coords).sum(1) / mass
    return float(torch.maximum((cy - 13.5).abs(), (cx - 13.5).abs()).max())


def test_random_affine_shifts_up_to_max_translate_of_the_image() -> None:
    # 6% of 28 pixels is 1.68 px: 256 draws come close to it without passing it.
    assert 0.9 * 0.06 * 28 < _largest_shift(0.06) <= 0.06 * 28 + 0.01
    assert 0.9 * 0.15 * 28 < _largest_shift(0.15) <= 0.15 * 28 + 0.01
    assert _largest_shift(0.0) < 0.01


def test_batches_pass_the_shift_range_to_the_augmentation() -> None:
    split = data.Split(torch.zeros(8, 28, 28, dtype=torch.uint8), torch.zeros(8, dtype=torch.long))
    split.images[:, 12:16, 12:16] = 255

    def first_batch(max_translate: float) -> torch.Tensor:
        gen = torch.Generator().manual_seed(0)
        batches = data.batches(
            split, 8, 0.0, 1.0, generator=gen, augment=True, max_translate=max_translate
        )
        return next(batches)[0]

    torch.testing.assert_close(first_batch(0.06), first_batch(0.06))
    assert not torch.allclose(first_batch(0.06), first_batch(0.2))


def test_dataset_hash_is_stable() -> None:
    assert data.dataset_sha256() == data.dataset_sha256()
    assert len(data.dataset_sha256()) == 64


def test_download_without_network_fails_cleanly_and_keeps_files(tmp_path: Path) -> None:
    # An unroutable mirror stands for "no network"; a wrong file must not be left behind.
    with pytest.raises(
        data.DatasetError, match="(?s)could not download.*Connection refused.*bundled"
    ):
        data.download(
            tmp_path,
            mirrors=("http://127.0.0.1:9/",),
            timeout=2,
            progress=False,
            log=lambda s: None,
        )
    assert list(tmp_path.iterdir()) == []


def test_download_keeps_files_that_are_already_valid(tmp_path: Path) -> None:
    repo_data = Path(__file__).resolve().parents[1] / "data" / "mnist"
    for f in repo_data.glob("*.gz"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    lines: list[str] = []
    assert data.download(tmp_path, mirrors=("http://127.0.0.1:9/",), log=lines.append) == []
    assert len(lines) == 4 and all("verified" in line for line in lines)


def test_atomic_writes_replace_whole_files_with_normal_permissions(tmp_path: Path) -> None:
    from mnist_cnn import atomic

    target = tmp_path / "sub" / "report.json"
    atomic.write_json(target, {"a": 1})
    atomic.write_bytes(target, b"{}")
    assert target.read_bytes() == b"{}"
    assert target.stat().st_mode & 0o644 == 0o644  # readable by others, as open() would make it
    with pytest.raises(RuntimeError), atomic.atomic_open(target, "wb") as f:
        f.write(b"half")
        raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"{}"  # the old content survives a failed write
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]  # no temp file left


def test_random_strokes_vary_weight_and_edges_but_keep_the_digit(train_split) -> None:
    x = train_split.images[:256].float().div(255).unsqueeze(1)
    out = data.random_strokes(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out.amax((1, 2, 3)), torch.ones(256))  # cores saturated
    ratio = (out > 0.5).sum((1, 2, 3)).float() / (x > 0.5).sum((1, 2, 3)).float()
    assert (ratio > 1.15).any() and (ratio < 0.85).any()  # some thicker, some thinner
    assert ((ratio > 0.2) & (ratio < 3.0)).all()  # none lost or smeared
    near = F.max_pool2d(x, 9, 1, 4) > 0  # a low resolution blurs by a few pixels at most
    assert ((out > 0.1) <= near).all()  # ink stays where it was
    torch.testing.assert_close(out, data.random_strokes(x, torch.Generator().manual_seed(0)))


def test_normalise_reads_uint8_arrays_exactly_as_tensors() -> None:
    # NumPy uint8 inputs take a 256-entry look-up (the Predictor's path): the same bits as
    # the arithmetic on tensors, for every level, and for other normalisations too.
    levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    for mean, std in ((data.MNIST_MEAN, data.MNIST_STD), (0.5, 0.25)):
        looked_up = data.normalise(levels, mean, std)
        computed = data.normalise(torch.from_numpy(levels), mean, std)
        assert looked_up.shape == computed.shape == (1, 1, 16, 16)
        assert torch.equal(looked_up, computed)
