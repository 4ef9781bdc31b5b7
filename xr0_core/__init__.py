"""XR-0 core: framework-free data, models, objectives, privacy, training and evaluation (never imports flwr)."""

__version__ = "0.1.0"
