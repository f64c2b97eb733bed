"""Allow ``python -m mnist_cnn``."""

from mnist_cnn.cli import main

raise SystemExit(main())
