"""The networks, and the preprocessing facts that travel with them.

``MNISTCNN`` is the seed design, layer for layer, with the seed's state_dict keys
(``conv1, conv2, fc1, fc2``) so that weights trained elsewhere (a Kaggle GPU, the seed's own
script) load here and ours load there with ``load_state_dict``.

``FastCNN`` is a smaller network with batch normalisation used by ``--preset fast``: a
quarter of the seed's compute per image and stable at a high learning rate, so it passes
99% test accuracy in a few epochs on a laptop CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# The input normalisation is a fact about the data (``data.normalise``), re-exported here so
# that it travels with the networks (and ``from src.model import MNIST_MEAN`` keeps working).
from mnist_cnn.data import MNIST_MEAN as MNIST_MEAN
from mnist_cnn.data import MNIST_STD as MNIST_STD

INPUT_SIZE = 28
NUM_CLASSES = 10
# Inference runs in chunks of this many images: small enough that each layer's activations
# stay in cache (bigger batches are slower on CPU), big enough to amortise per-call overhead.
INFERENCE_BATCH = 256


class MNISTCNN(nn.Module):
    """The seed CNN: two 3x3 conv blocks with max-pooling, then a 128-unit hidden layer."""

    def __init__(self, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, NUM_CLASSES)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) normalised images -> (N, 10) logits."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # 32 x 14 x 14
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 64 x 7 x 7
        x = torch.flatten(x, 1)
        x = self.dropout(F.relu(self.fc1(x)))
        return self.fc2(x)


class FastCNN(nn.Module):
    """A narrow three-block CNN with batch norm, for the ``fast`` preset."""

    def __init__(self) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(1, 16), block(16, 32), block(32, 64))  # 64 x 3 x 3
        self.head = nn.Linear(64 * 3 * 3, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) normalised images -> (N, 10) logits."""
        return self.head(torch.flatten(self.features(x), 1))


class SprintCNN(nn.Module):
    """FastCNN's widths with each block ordered conv -> max-pool -> batch norm -> ReLU.

    On a CPU the small convolutions are not what costs: batch norm, ReLU and their backward
    passes are memory-bound element-wise work. Pooling first gives them a quarter of the
    elements (max-pooling commutes with ReLU, and a per-channel affine barely changes which
    pixel is the maximum), so a training step costs about half of FastCNN's.
    """

    def __init__(self) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                nn.MaxPool2d(2),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(block(1, 16), block(16, 32), block(32, 64))  # 64 x 3 x 3
        self.head = nn.Linear(64 * 3 * 3, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) normalised images -> (N, 10) logits."""
        return self.head(torch.flatten(self.features(x), 1))


class BestCNN(nn.Module):
    """The ``best`` preset's network: VGG-style pairs of 3x3 convolutions with batch norm.

    Two conv-BN-ReLU pairs at 28x28 (32 channels) and 14x14 (64), one at 7x7 (128), each
    stage max-pooled, then a 256-unit hidden layer with dropout: the shape of the best-known
    small MNIST CNNs (99.6-99.7% alone with augmentation). About 5x the seed's compute per
    image, which bfloat16 autocast on AMX mostly pays for.
    """

    def __init__(self, dropout: float = 0.4) -> None:
        super().__init__()

        def conv(c_in: int, c_out: int) -> list[nn.Module]:
            return [
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]

        self.features = nn.Sequential(
            *conv(1, 32), *conv(32, 32), nn.MaxPool2d(2),  # 32 x 14 x 14
            *conv(32, 64), *conv(64, 64), nn.MaxPool2d(2),  # 64 x 7 x 7
            *conv(64, 128), nn.MaxPool2d(2),  # 128 x 3 x 3
        )  # fmt: skip
        self.fc1 = nn.Linear(128 * 3 * 3, 256, bias=False)
        self.bn1 = nn.BatchNorm1d(256)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(256, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) normalised images -> (N, 10) logits."""
        x = torch.flatten(self.features(x), 1)
        return self.fc2(self.dropout(F.relu(self.bn1(self.fc1(x)))))


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "MNISTCNN": MNISTCNN,
    "FastCNN": FastCNN,
    "SprintCNN": SprintCNN,
    "BestCNN": BestCNN,
}


class Ensemble(nn.Module):
    """Several networks of one architecture whose probabilities are averaged.

    Its output is the logarithm of the mean of the members' softmax probabilities, so that
    everything that reads logits (``softmax`` for the answer, the ONNX graph, the "not
    sure" rules) sees the averaged probabilities. The state_dict keys are the members' own,
    prefixed ``members.<i>.``: member i loads alone from the keys under its prefix.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) normalised images -> (N, 10) log of the mean probabilities."""
        logp = torch.stack([F.log_softmax(m(x).float(), dim=1) for m in self.members])
        return torch.logsumexp(logp, dim=0) - math.log(len(self.members))


# Test-time augmentation: the input and its copies shifted by one pixel in each direction.
# MNIST digits are centred by mass, so a one-pixel shift is within the data's own jitter.
TTA_SHIFTS = ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0))


class ShiftTTA(nn.Module):
    """A network whose answer is averaged over small shifts of its input (``TTA_SHIFTS``).

    The output is the log of the mean probabilities over the shifted copies, like
    ``Ensemble``'s. Shifts are rolls: the rows and columns that wrap around are the
    background of a 28x28 MNIST-style input.
    """

    def __init__(self, model: nn.Module, shifts: tuple[tuple[int, int], ...] = TTA_SHIFTS) -> None:
        super().__init__()
        self.model = model
        self.shifts = shifts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) normalised images -> (N, 10) log of the mean probabilities."""
        # One shift at a time: a batch stays the size the caller chose (``logits_of``'s chunks
        # keep each layer's activations in cache; five times the batch would not).
        logp = torch.stack(
            [
                F.log_softmax(self.model(torch.roll(x, shifts=s, dims=(2, 3))).float(), dim=1)
                for s in self.shifts
            ]
        )
        return torch.logsumexp(logp, dim=0) - math.log(len(self.shifts))


# The architectures with a dropout layer, and its rate when not given.
DROPOUT_DEFAULTS = {"MNISTCNN": 0.5, "BestCNN": 0.4}


def build_model(architecture: str = "MNISTCNN", dropout: float | None = None) -> nn.Module:
    """A freshly initialised network of the named architecture; ``dropout`` sets the rate of
    the networks that have a dropout layer (``DROPOUT_DEFAULTS``) and is ignored by the others
    (it changes no weight: a model loads whatever rate it was trained with)."""
    try:
        cls = ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(
            f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}"
        ) from None
    if dropout is not None and architecture in DROPOUT_DEFAULTS:
        return cls(dropout=dropout)
    return cls()


@torch.inference_mode()
def logits_of(
    model: nn.Module, inputs: torch.Tensor, batch_size: int = INFERENCE_BATCH
) -> torch.Tensor:
    """Logits (N, 10) for normalised inputs (N, 1, 28, 28) (``data.normalise``), in eval mode,
    in chunks; the one forward pass of evaluation, the Predictor and the ONNX check.

    Channels-last memory format makes oneDNN's convolutions several times faster on CPU.
    """
    # Switching modes walks every module; a model already in eval mode (the Predictor's)
    # is left alone, which matters on the one-image path of every prediction.
    toggle = any(m.training for m in model.modules())
    was_training = model.training
    if toggle:
        model.eval()
    device = next(model.parameters()).device
    if 0 < len(inputs) <= batch_size:  # one chunk: no split and no concatenation
        out = [model(inputs.to(device).contiguous(memory_format=torch.channels_last)).float().cpu()]
    else:
        out = [
            model(chunk.to(device).contiguous(memory_format=torch.channels_last)).float().cpu()
            for chunk in inputs.split(batch_size)
        ]
    if toggle:
        model.train(was_training)
    return torch.cat(out) if len(out) > 1 else out[0] if out else torch.empty(0, NUM_CLASSES)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
