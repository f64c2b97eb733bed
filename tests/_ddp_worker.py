"""One data-parallel training process for tests/test_distributed.py, started by torchrun.

    python -m torch.distributed.run --standalone --nproc-per-node=2 tests/_ddp_worker.py \
        CONFIG_JSON OUT_DIR

It joins the group as ``mnist-cnn train`` does, trains the config with the library's
``train`` and saves *its own* weights as OUT_DIR/rank<R>.pt (the command saves rank 0's
only), so that a test can compare what every process holds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from mnist_cnn import distributed
from mnist_cnn.train import TrainConfig, configure_process, train


def main() -> None:
    config = TrainConfig(**json.loads(sys.argv[1]))
    out = Path(sys.argv[2])
    rank = distributed.join("cpu")
    configure_process(1)
    try:
        result = train(config)
        assert result.model is not None
        torch.save(result.model.state_dict(), out / f"rank{rank.rank}.pt")
    finally:
        distributed.leave()


if __name__ == "__main__":
    main()
