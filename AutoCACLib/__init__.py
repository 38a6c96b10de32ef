"""AutoCAC core library: coronary artery calcium scoring from CT arrays."""

__version__ = "0.1.0"
