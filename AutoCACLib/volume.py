"""CT volumes: the array, its geometry and what we know of the acquisition.

Axis conventions (used everywhere in AutoCACLib):

* ``array`` is indexed ``[z, y, x]`` (slice, row, column), in Hounsfield units.
* ``spacing`` is ``(z, y, x)`` in mm, in the order of the array axes
  (scikit-image style), so ``spacing[0]`` is the slice increment.
* ``origin`` and ``direction`` are ITK's: the physical LPS position (x, y, z) of voxel
  ``[0, 0, 0]`` and the 3x3 matrix whose columns are the directions of the image's
  x, y and z (column, row, slice) axes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError

#: File name endings read as single-file images.
IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")

#: A CT image has air near -1000 HU; anything whose range does not reach below this is not
#: a CT in Hounsfield units (for example a label map or an MR image).
_MIN_AIR_HU = -500.0
_SPACING_TOLERANCE = 0.1     # relative spread of DICOM slice distances still called even
_SPACING_ROUNDING_MM = 0.15  # ... or absolute (positions written to 0.1 mm: 0.1 off)
_MAX_TILT_DEG = 0.5          # slices stacked this far off their normal are a gantry tilt


@dataclass
class Volume:
    """A 3D CT image with its geometry.

    Parameters
    ----------
    array : ndarray, shape (z, y, x)
        Attenuation in HU.
    spacing : tuple of float
        Voxel size (z, y, x) in mm.
    origin : tuple of float
        Physical LPS position (x, y, z) of voxel [0, 0, 0], in mm.
    direction : ndarray, shape (3, 3)
        ITK direction matrix (columns: image x, y, z axes in LPS).
    kvp : float or None
        Tube voltage in kV when known (DICOM (0018,0060) or a header field).
    metadata : dict
        Other acquisition facts we found (slice thickness, ECG gating, description...).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    kvp: float | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self.array = np.asarray(self.array)
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if self.array.ndim != 3:
            raise InputError(f"expected a 3D image, got an array of shape {self.array.shape}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise InputError(f"invalid voxel spacing {self.spacing}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def same_geometry(self, other: "Volume", tol: float = 1e-3) -> bool:
        """True when ``other`` has the same grid (shape, spacing, origin, direction)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=max(tol, 1e-2 * min(self.spacing)))
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def with_array(self, array: np.ndarray) -> "Volume":
        """A volume on the same grid holding another array (labels, a filtered image)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction.copy(), self.kvp,
                      dict(self.metadata))

    # --- SimpleITK conversion -------------------------------------------------------
    def to_sitk(self):
        """The volume as a SimpleITK image (spacing, origin and direction kept)."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(self.array)
        image.SetSpacing(tuple(reversed(self.spacing)))
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(self.direction.ravel()))
        return image

    @classmethod
    def from_sitk(cls, image, kvp: float | None = None, metadata: dict | None = None) -> "Volume":
        """Build a volume from a 3D SimpleITK image."""
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(
                f"expected a 3D single-channel image, got {image.GetDimension()}D with "
                f"{image.GetNumberOfComponentsPerPixel()} component(s)")
        import SimpleITK as sitk

        array = sitk.GetArrayFromImage(image)
        return cls(array, tuple(reversed(image.GetSpacing())), image.GetOrigin(),
                   np.array(image.GetDirection()).reshape(3, 3), kvp, dict(metadata or {}))


@dataclass(frozen=True)
class Reorientation:
    """How :func:`to_axial_lps` permuted and flipped a volume's array.

    Attributes
    ----------
    axes : tuple of 3 int
        Axis ``b`` of the new array is axis ``axes[b]`` of the old one ...
    flips : tuple of 3 bool
        ... reversed where ``flips[b]``.
    """

    axes: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    @property
    def identity(self) -> bool:
        return self.axes == (0, 1, 2) and not any(self.flips)

    @property
    def slices_axial(self) -> bool:
        """Whether the stored slices (old array axis 0) already were the axial slices."""
        return self.axes[0] == 0

    def _reverse(self, array: np.ndarray) -> np.ndarray:
        return array[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]

    def apply(self, array: np.ndarray) -> np.ndarray:
        """An array on the original grid, on the axial LPS grid."""
        return np.ascontiguousarray(self._reverse(np.transpose(array, self.axes)))

    def undo(self, array: np.ndarray) -> np.ndarray:
        """An array on the axial LPS grid, back on the original grid."""
        return np.ascontiguousarray(np.transpose(self._reverse(array), np.argsort(self.axes)))


def axial_reorientation(direction: np.ndarray) -> Reorientation:
    """The permutation and flips of :func:`to_axial_lps` for an ITK direction matrix
    (none when an axis is 45 degrees oblique, with no nearest axis order)."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    along = np.argmax(np.abs(d), axis=0)  # LPS axis of image axis x, y, z
    if len(set(along.tolist())) < 3:
        return Reorientation()
    # Array axis a holds image axis 2 - a; new array axis b must run along LPS axis 2 - b.
    axes = tuple(int(2 - np.flatnonzero(along == 2 - b)[0]) for b in range(3))
    return Reorientation(axes, tuple(bool(d[2 - b, 2 - axes[b]] < 0) for b in range(3)))


def to_axial_lps(volume: Volume) -> tuple[Volume, Reorientation]:
    """The volume with its array axes permuted and flipped so that they run along L, P and S
    as closely as they can (array ``[z, y, x]``: z towards the head, y posterior, x left).

    Images stored right-to-left, feet-first, or as coronal or sagittal stacks become axial
    without resampling (every voxel keeps its value and physical position); an oblique tilt
    that remains stays in the direction matrix. The networks and the slice-wise Agatston
    score need axial slices in this order.

    Returns
    -------
    (Volume, Reorientation)
        The reoriented volume (the input itself when nothing changes) and how to map arrays
        between the two grids.
    """
    d = volume.direction
    change = axial_reorientation(d)
    if change.identity:
        return volume, change
    axes, flips = change.axes, change.flips
    corner = np.array([volume.shape[a] - 1 if f else 0 for a, f in zip(axes, flips)])
    old_index = np.zeros(3)
    old_index[list(axes)] = corner
    spacing_xyz = np.asarray(volume.spacing)[::-1]
    origin = np.asarray(volume.origin) + d @ (old_index[::-1] * spacing_xyz)
    direction = np.zeros((3, 3))
    for b in range(3):
        direction[:, 2 - b] = d[:, 2 - axes[b]] * (-1.0 if flips[b] else 1.0)
    return Volume(change.apply(volume.array), tuple(volume.spacing[a] for a in axes),
                  tuple(origin), direction, volume.kvp, dict(volume.metadata)), change


def _is_image_file(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in IMAGE_SUFFIXES)


def _read_dicom_series(folder: Path):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series_ids = reader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputError(f"no DICOM series found in folder {folder}")
    # Take the series with the most slices (a folder may also hold a scout or dose report).
    files = max((reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids), key=len)
    if len(files) < 2:
        info = sitk.ImageFileReader()
        info.SetFileName(files[0])
        info.ReadImageInformation()
        frames = info.GetMetaData("0028|0008").strip() if info.HasMetaDataKey("0028|0008") else ""
        if frames.isdigit() and int(frames) > 1:
            raise InputError(f"DICOM series in {folder} is one multi-frame (enhanced) file of "
                             f"{int(frames)} frames, whose slice geometry AutoCAC does not read: "
                             f"load it in 3D Slicer and save it as NRRD")
        raise InputError(f"DICOM series in {folder} has a single slice: a 3D image is needed")
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)    # uneven slices: told below, one line
    try:
        image = reader.Execute()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    _check_slice_positions(reader, files, folder)

    def tag(key):
        return _dicom_tag(reader, key)

    metadata = {k: v for k, v in {
        "modality": tag("0008|0060"),
        "manufacturer": tag("0008|0070"),
        "series_description": tag("0008|103e"),
        "slice_thickness_mm": tag("0018|0050"),
        "convolution_kernel": tag("0018|1210"),
        "cardiac_synchronization": tag("0018|9037") or tag("0018|1060"),
        "contrast_agent": tag("0018|0010"),
    }.items() if v}
    kvp = tag("0018|0060")
    try:
        kvp = float(kvp) if kvp else None
    except ValueError:
        kvp = None
    metadata["source_format"] = "dicom"
    metadata["n_files"] = len(files)
    return image, kvp, metadata


def _dicom_tag(reader, key: str, index: int = 0) -> str | None:
    """The value of DICOM tag ``key`` ("gggg|eeee") in slice ``index`` of a series reader,
    stripped, or None."""
    return reader.GetMetaData(index, key).strip() if reader.HasMetaDataKey(index, key) else None


def _check_slice_positions(reader, files, folder: Path) -> None:
    """Raise InputError unless the series' slices lie evenly spaced along their normal.

    The series reader builds a grid from the first slices' spacing and orientation: slices
    at the same position (two reconstructions in one series), missing slices or a gantry
    tilt would give an image whose geometry, and so every volume and score, is wrong.
    """
    def vector(i, key):
        text = _dicom_tag(reader, key, i)
        try:
            return None if text is None else np.array([float(v) for v in text.split("\\")])
        except ValueError:
            return None

    orientation = vector(0, "0020|0037")
    positions = [vector(i, "0020|0032") for i in range(len(files))]
    if orientation is None or len(orientation) != 6 or any(
            p is None or len(p) != 3 for p in positions):
        return                                   # nothing to check against
    normal = np.cross(orientation[:3], orientation[3:])
    order = np.argsort(np.array(positions) @ normal)
    positions, files = np.array(positions)[order], [files[i] for i in order]
    gaps = np.diff(positions @ normal)
    typical = float(np.median(gaps))
    same = gaps < 0.01                           # mm
    if same.any():
        raise InputError(f"DICOM series in {folder} has {int(same.sum())} slice(s) at the same "
                         f"position as another (two reconstructions or acquisitions in one "
                         f"series?): put each series in its own folder")
    slack = max(_SPACING_TOLERANCE * typical, _SPACING_ROUNDING_MM)
    uneven = np.flatnonzero(np.abs(gaps - typical) > slack)
    if len(uneven):
        i = int(uneven[0])
        raise InputError(f"DICOM series in {folder} has uneven slice spacing ({typical:.2f} mm, "
                         f"but {gaps[i]:.2f} mm between {Path(files[i]).name} and "
                         f"{Path(files[i + 1]).name}): slices are missing or misplaced; load "
                         f"it in 3D Slicer with acquisition geometry regularization and save "
                         f"it as NRRD")
    stack = positions[-1] - positions[0]
    tilt = np.degrees(np.arccos(min(1.0, abs(stack @ normal) / np.linalg.norm(stack))))
    if tilt > _MAX_TILT_DEG:
        raise InputError(f"DICOM series in {folder} was acquired with a gantry tilt of "
                         f"{tilt:.1f} degrees: load it in 3D Slicer with acquisition geometry "
                         f"regularization and save it as NRRD")


def read_volume(path: str | os.PathLike, require_ct: bool = True) -> Volume:
    """Read a CT volume from a NRRD, NIfTI or MetaImage file or a DICOM series folder.

    Parameters
    ----------
    path : path-like
        Image file or folder holding one DICOM series.
    require_ct : bool
        Check that the values look like Hounsfield units (air below -500 HU).

    Returns
    -------
    Volume

    Raises
    ------
    InputError
        Missing path, unreadable or non-3D image, or (with ``require_ct``) no HU range.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    kvp, metadata = None, {}
    try:
        if path.is_dir():
            image, kvp, metadata = _read_dicom_series(path)
        else:
            image = sitk.ReadImage(str(path))
            metadata["source_format"] = path.suffix.lower().lstrip(".")
            for key in ("kvp", "KVP", "autocac_kvp"):
                if image.HasMetaDataKey(key):
                    try:
                        kvp = float(image.GetMetaData(key))
                    except ValueError:
                        pass
    except InputError:
        raise
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in reversed(first) if ln.strip()), "unknown reader error")
        raise InputError(f"cannot read image {path}: {detail.strip()[:200]}") from None
    if image.GetDimension() == 2 or (image.GetDimension() == 3 and min(image.GetSize()) == 1):
        raise InputError(f"{path} is a 2D image: AutoCAC needs a 3D CT volume")
    volume = Volume.from_sitk(image, kvp=kvp, metadata=metadata)
    volume.array = volume.array.astype(np.float32, copy=False)
    if require_ct:
        check_is_ct(volume, str(path))
    return volume


def check_is_ct(volume: Volume, name: str = "image") -> None:
    """Raise InputError unless the volume's values look like CT Hounsfield units."""
    a = volume.array
    lo, hi = float(np.min(a)), float(np.max(a))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise InputError(f"{name} contains non-finite values")
    if lo > _MIN_AIR_HU or hi - lo < 500:
        raise InputError(
            f"{name} does not look like a CT in Hounsfield units (values {lo:.0f} to {hi:.0f}; "
            f"air should be near -1000 HU)")


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> None:
    """Write a volume (NRRD, NIfTI or MetaImage by the file name); kVp goes into the header."""
    import SimpleITK as sitk

    image = volume.to_sitk()
    if volume.kvp is not None:
        image.SetMetaData("kvp", f"{volume.kvp:g}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), compress)
