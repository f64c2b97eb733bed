"""The networks, and the preprocessing facts that travel with them.

``MNISTCNN`` is the seed design, layer for layer, with the seed's state_dict keys
(``conv1, conv2, fc1, fc2``) so that weights trained elsewhere (a Kaggle GPU, the seed's own
script) load here and ours load there with ``load_state_dict``.

``FastCNN`` is a smaller network with batch normalisation used by ``--preset fast``: a
quarter of the seed's compute per image and stable at a high learning rate, so it passes
99% test accuracy in a few epochs on a laptop CPU.
"""

from __future__ import annotations

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


ARCHITECTURES: dict[str, type[nn.Module]] = {"MNISTCNN": MNISTCNN, "FastCNN": FastCNN}


def build_model(architecture: str = "MNISTCNN") -> nn.Module:
    """A freshly initialised network of the named architecture."""
    try:
        return ARCHITECTURES[architecture]()
    except KeyError:
        raise ValueError(
            f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}"
        ) from None


@torch.inference_mode()
def logits_of(
    model: nn.Module, inputs: torch.Tensor, batch_size: int = INFERENCE_BATCH
) -> torch.Tensor:
    """Logits (N, 10) for normalised inputs (N, 1, 28, 28) (``data.normalise``), in eval mode,
    in chunks; the one forward pass of evaluation, the Predictor and the ONNX check.

    Channels-last memory format makes oneDNN's convolutions several times faster on CPU.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for chunk in inputs.split(batch_size):
        x = chunk.to(device).contiguous(memory_format=torch.channels_last)
        out.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, NUM_CLASSES)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
