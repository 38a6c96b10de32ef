"""Scanner physics: acquisition protocols, grids, rendering, blur, slice profile and noise.

The contrast scan (CCTA) and the non-contrast calcium scan (CSCT) of one patient are two
acquisitions of the same anatomy in the same LPS coordinates, with their own field of view,
pixel size, slice thickness, tube voltage, resolution and noise.

* Partial volume: analytic, from the signed distance at each voxel (see ``render``); the
  3 mm CSCT is rendered on sub-slices and averaged over the slab (box slice profile).
* Blur: a Gaussian point-spread function (in-plane sigma 0.28-0.40 mm for CCTA's sharp
  kernels, 0.45-0.65 mm for CSCT's soft calcium-scoring kernels; at least about half a pixel),
  which also makes calcium bloom.
* Noise: white Gaussian noise added before the blur, so that it is correlated like the
  reconstruction kernel correlates it, scaled to give the protocol's standard deviation in
  the final image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..volume import Volume
from .anatomy import Anatomy
from .render import Canvas, Grid

#: Grid and resolution choices by case size.
SIZES = {
    "clinical": {"ccta_matrix": 512, "ccta_pixel_mm": (0.35, 0.45),
                 "ccta_slice_mm": (0.5, 0.6, 0.625, 0.75), "csct_matrix": 512,
                 "csct_pixel_mm": (0.40, 0.50), "csct_subslices": 4},
    "small": {"ccta_matrix": 128, "ccta_pixel_mm": (0.95, 1.1), "ccta_slice_mm": (1.0,),
              "csct_matrix": 112, "csct_pixel_mm": (1.15, 1.3), "csct_subslices": 3},
}
#: Slice thickness and increment of the calcium-scoring scan.
CSCT_SLICE_MM = 3.0
#: Noise grows at low tube voltage (fewer photons through the patient at equal dose).
_NOISE_BY_KVP = {80: 1.3, 100: 1.12, 120: 1.0}
#: Stored CT number range (12-bit scanners).
HU_RANGE = (-1024.0, 3071.0)


@dataclass
class Protocol:
    """One acquisition.

    Attributes
    ----------
    name : str
        "CCTA" or "CSCT".
    kvp : int
    contrast : bool
    grid : Grid
        The reconstructed image's grid.
    slice_thickness_mm : float
    subslices : int
        Sub-slices rendered per reconstructed slice (slab averaging); 1 for thin slices.
    psf_xy_mm, psf_z_mm : float
        Gaussian sigma of the point-spread function.
    noise_hu : float
        Standard deviation of the image noise.
    """

    name: str
    kvp: int
    contrast: bool
    grid: Grid
    slice_thickness_mm: float
    subslices: int
    psf_xy_mm: float
    psf_z_mm: float
    noise_hu: float

    def summary(self) -> dict:
        return {"kvp": self.kvp, "contrast": self.contrast, "shape_zyx": list(self.grid.shape),
                "spacing_zyx_mm": [round(s, 4) for s in self.grid.spacing],
                "origin_lps_mm": [round(float(o), 3) for o in self.grid.origin],
                "slice_thickness_mm": self.slice_thickness_mm,
                "psf_sigma_xy_mm": round(self.psf_xy_mm, 3),
                "psf_sigma_z_mm": round(self.psf_z_mm, 3), "noise_hu": round(self.noise_hu, 2)}


def _centered_grid(rng, anatomy: Anatomy, matrix: int, pixel: float, increment: float,
                   margins_below: tuple, margins_above: tuple) -> Grid:
    center = anatomy.heart_center[:2] + rng.uniform(-12, 12, 2)
    z_lo = anatomy.z_range[0] - rng.uniform(*margins_below)
    z_hi = anatomy.z_range[1] + rng.uniform(*margins_above)
    nz = int(np.ceil((z_hi - z_lo) / increment)) + 1
    origin = [center[0] - (matrix - 1) / 2 * pixel, center[1] - (matrix - 1) / 2 * pixel, z_lo]
    return Grid((nz, matrix, matrix), (increment, pixel, pixel), origin)


def ccta_protocol(rng: np.random.Generator, size: str, anatomy: Anatomy, kvp: int,
                  noise_hu: float | None = None) -> Protocol:
    """A contrast-enhanced, ECG-gated coronary CT angiography acquisition."""
    spec = SIZES[size]
    pixel = float(rng.uniform(*spec["ccta_pixel_mm"]))
    increment = float(rng.choice(spec["ccta_slice_mm"]))
    thickness = increment * float(rng.choice([1.0, 1.0, 1.2]))
    grid = _centered_grid(rng, anatomy, spec["ccta_matrix"], pixel, increment, (8, 20), (12, 30))
    if noise_hu is None:
        noise_hu = float(rng.uniform(18, 38)) * _NOISE_BY_KVP[kvp]
    psf = max(float(rng.uniform(0.28, 0.40)), 0.55 * pixel)
    return Protocol("CCTA", kvp, True, grid, thickness, 1, psf,
                    thickness / 2.355, noise_hu)


def csct_protocol(rng: np.random.Generator, size: str, anatomy: Anatomy,
                  noise_hu: float | None = None) -> Protocol:
    """The non-contrast calcium-scoring scan: 120 kVp, 3 mm slices, soft kernel."""
    spec = SIZES[size]
    pixel = float(rng.uniform(*spec["csct_pixel_mm"]))
    grid = _centered_grid(rng, anatomy, spec["csct_matrix"], pixel, CSCT_SLICE_MM, (10, 25),
                          (10, 30))
    if noise_hu is None:
        noise_hu = float(rng.uniform(12, 24))
    return Protocol("CSCT", 120, False, grid, CSCT_SLICE_MM, spec["csct_subslices"],
                    max(float(rng.uniform(0.45, 0.65)), 0.6 * pixel), 0.5, noise_hu)


def _z_blocks_of(nz: int, step: int = 32):
    return [slice(z, min(z + step, nz)) for z in range(0, nz, step)]


@dataclass
class Acquisition:
    """What an acquisition produces.

    Attributes
    ----------
    image : Volume
        Reconstructed image (HU, integer values stored as float32).
    tissue : ndarray uint8 or None
        Layer index (1-based) visible at each voxel centre (thin-slice scans only).
    regions : ndarray uint8
        Dilated calcium truth regions (layer region values), on the image grid.
    """

    image: Volume
    tissue: np.ndarray | None
    regions: np.ndarray


def acquire(rng: np.random.Generator, anatomy: Anatomy, protocol: Protocol,
            region_margin_mm: float = 0.0) -> Acquisition:
    """Render, add noise, blur and average slabs (one acquisition).

    Parameters
    ----------
    region_margin_mm : float
        Dilation of the calcium truth regions (0: none recorded).
    """
    grid, n = protocol.grid, protocol.subslices
    dz = grid.spacing[0] / n
    fine_origin = grid.origin + grid.direction[:, 2] * (-grid.spacing[0] / 2 + dz / 2) * (n > 1)
    fine = Grid((grid.shape[0] * n, *grid.shape[1:]), (dz, *grid.spacing[1:]), fine_origin,
                grid.direction)
    canvas = Canvas(fine, -1000.0)
    for index, layer in enumerate(anatomy.layers, start=1):
        m = layer.material
        canvas.paint(layer.shapes, m.hu(protocol.kvp, protocol.contrast),
                     m.iodine_hu(protocol.kvp, protocol.contrast), index,
                     layer.region if region_margin_mm else 0, region_margin_mm)
    canvas.release()
    sigma = (protocol.psf_z_mm / dz, protocol.psf_xy_mm / grid.spacing[1],
             protocol.psf_xy_mm / grid.spacing[2])

    def blur_and_average(volume):
        out = ndimage.gaussian_filter(volume, sigma, truncate=3.0)
        return out.reshape(-1, n, *out.shape[1:]).mean(axis=1) if n > 1 else out

    # Scale of white noise that ends with the wanted standard deviation after blur and slab
    # averaging (measured on a small noise block).
    probe = blur_and_average(rng.standard_normal((24 * n, 64, 64), dtype=np.float32))
    white_hu = protocol.noise_hu / float(probe[2:-2, 8:-8, 8:-8].std())
    image = canvas.image
    for block in _z_blocks_of(image.shape[0]):
        image[block] += white_hu * rng.standard_normal((block.stop - block.start,
                                                        *image.shape[1:]), dtype=np.float32)
    image = blur_and_average(image)
    del canvas.image
    regions = canvas.regions
    if n > 1:
        regions = ndimage.maximum_filter1d(regions, 3, axis=0)
        regions = regions.reshape(grid.shape[0], n, *grid.shape[1:]).max(axis=1)
    np.clip(np.round(image, out=image), *HU_RANGE, out=image)
    metadata = {"modality": "CT", "slice_thickness_mm": f"{protocol.slice_thickness_mm:g}",
                "series_description": f"AutoCAC phantom {protocol.name}",
                "contrast_agent": "iodine" if protocol.contrast else "none"}
    return Acquisition(grid.volume(image.astype(np.float32, copy=False), protocol.kvp, metadata),
                       canvas.tissue if n == 1 else None, regions)
