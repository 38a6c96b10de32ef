"""Neural networks of AutoCAC: a 2D V-Net (coronary tree) and a compact DeepLabV3+ (aorta).

Both work "2.5D": one axial slice is predicted from a stack of ``2k + 1`` neighbouring
slices given as input channels. Importing this package does not import torch; the
architectures are built through :func:`build_network`, which imports it.
"""

from __future__ import annotations

import importlib

#: Architecture name -> (module, class) of this package.
ARCHITECTURES = {
    "vnet2d": ("vnet2d", "VNet2D"),
    "deeplabv3plus": ("deeplabv3plus", "DeepLabV3Plus"),
}


def build_network(architecture: str, **kwargs):
    """Build an (untrained) network by architecture name.

    Parameters
    ----------
    architecture : str
        A key of :data:`ARCHITECTURES`.
    **kwargs
        Constructor arguments of the architecture (``in_channels``, ``n_classes``,
        ``base``, ...), as stored in a model's metadata.

    Returns
    -------
    torch.nn.Module
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    module_name, class_name = ARCHITECTURES[architecture]
    module = importlib.import_module(f".{module_name}", __name__)
    return getattr(module, class_name)(**kwargs)
