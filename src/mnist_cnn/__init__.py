"""mnist-cnn: train, evaluate and serve a small CNN for handwritten digits."""

__version__ = "0.1.0"
