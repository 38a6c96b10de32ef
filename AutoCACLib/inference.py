"""Network inference: the aorta pass, the heart crop and the coronary pass.

Two trained networks ship in ``Resources/Models/``, each as ``<name>.pt`` (a float16 state
dict) beside ``<name>.json`` (its metadata):

``aorta`` (DeepLabV3+)
    Classes ``background, Aorta, Coronary`` on a coarse grid (about 1.2 mm in-plane). Its
    aorta is the segmentation's aorta; its coarse coronary class only places the heart
    crop.
``coronary`` (2D V-Net)
    Classes ``background, LM, LAD, LCx, RCA`` (or ``background, Coronary`` for a model
    trained on binary labels) on a fine grid (about 0.6 mm in-plane), applied to the crop.

Both work 2.5D: slice ``i`` is predicted from the slices ``i-k .. i+k`` of the working grid
(edge slices repeated at the volume's ends). Working grids keep the physical extent of the
image: a grid of ``n`` voxels over an extent ``E`` has spacing ``E / n``, and voxel centres
map as ``x_out = (x_in + 0.5) * n_out / n_in - 0.5`` (``align_corners=False``). Images are
resampled linearly (anti-aliased when shrinking), label maps by nearest neighbour, and
network outputs come back to the image grid as the argmax of linearly up-sampled
probabilities.

Metadata keys (``<name>.json``): ``name``, ``format_version``, ``architecture``,
``kwargs`` (constructor arguments), ``classes``, ``context_slices`` (k),
``spacing_mm`` (working spacing z, y, x), ``normalization`` (``{"input": "hu" or
"histogram", "low", "high"}``: the window ``low..high`` mapped to 0..1, applied to HU or to
the preprocessing stage's histogram-normalized values) and ``training`` (data, seed,
iterations, held-out Dice, runtime, device).

Nothing is ever downloaded: missing weights raise :class:`MissingModelError`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import AutoCACError, InputError
from .segments import AORTA_LABEL, VESSEL_LABEL
from .volume import Volume

FORMAT_VERSION = 1
AORTA_MODEL = "aorta"
CORONARY_MODEL = "coronary"
#: Class names of the aorta model (its coarse coronary class places the heart crop).
AORTA_CLASSES = ("background", "Aorta", "Coronary")
#: Class names of a coronary model with vessel names, and of one trained on binary labels.
VESSEL_CLASSES = ("background", "LM", "LAD", "LCx", "RCA")
BINARY_CLASSES = ("background", "Coronary")
#: Environment variable that overrides the folder the models are read from.
MODELS_DIR_ENV = "AUTOCAC_MODELS_DIR"

Progress = Callable[[str, float], None]


class MissingModelError(AutoCACError):
    """A network's weights or metadata are not where AutoCAC looks for them."""


# --- device and model files -------------------------------------------------------------

def available_cores() -> int:
    """CPU threads for torch: ``OMP_NUM_THREADS`` when set, else the cores this process may
    run on (more threads than free cores makes torch's CPU kernels many times slower)."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_device(device: str = "auto"):
    """The torch device for ``auto``, ``cpu`` or ``cuda``; sets torch's CPU thread count.

    Raises
    ------
    InputError
        ``cuda`` asked for where torch finds no CUDA GPU, or an unknown device name.
    """
    import torch

    torch.set_num_threads(available_cores())
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"unknown device {device!r}: use auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device 'cuda' was requested but torch {torch.__version__} finds no "
                         f"CUDA GPU; use --device cpu or auto")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")


def default_models_dir() -> Path:
    """``$AUTOCAC_MODELS_DIR`` when set, else the repository's ``Resources/Models``."""
    env = os.environ.get(MODELS_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[1] / "Resources" / "Models"


@dataclass
class Model:
    """A network ready to predict, with its metadata.

    Attributes
    ----------
    network : torch.nn.Module
        In evaluation mode, on ``device``.
    meta : dict
        The metadata (see the module docstring).
    device : torch.device
    """

    network: object
    meta: dict
    device: object

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.meta["classes"])

    @property
    def context(self) -> int:
        return int(self.meta["context_slices"])

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.meta["spacing_mm"])

    def predict(self, image: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities of every slice of a normalized image on the working grid.

        Parameters
        ----------
        image : ndarray (z, y, x)
            Normalized input on the model's working grid.
        batch_size : int, optional
            Slices per forward pass; default 8 on the CPU, 32 on a GPU.

        Returns
        -------
        ndarray (classes, z, y, x) of float32
            Softmax probabilities.
        """
        import torch

        image = np.ascontiguousarray(image, dtype=np.float32)
        batch_size = batch_size or (8 if self.device.type == "cpu" else 32)
        out = np.empty((len(self.classes),) + image.shape, dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, image.shape[0], batch_size):
                index = np.arange(start, min(start + batch_size, image.shape[0]))
                x = torch.from_numpy(stack_slices(image, index, self.context)).to(self.device)
                p = torch.softmax(self.network(x).float(), dim=1)
                out[:, index] = p.permute(1, 0, 2, 3).cpu().numpy()
        return out


def model_paths(name: str, models_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The weights and metadata files of a model: ``<dir>/<name>.pt``, ``<dir>/<name>.json``."""
    folder = Path(models_dir) if models_dir is not None else default_models_dir()
    return folder / f"{name}.pt", folder / f"{name}.json"


def load_model(name: str, models_dir: str | os.PathLike | None = None,
               device: str = "auto") -> Model:
    """Load a shipped (or freshly trained) model.

    Parameters
    ----------
    name : str
        Model name, for example :data:`AORTA_MODEL` or :data:`CORONARY_MODEL`.
    models_dir : path-like, optional
        Folder holding the files; default :func:`default_models_dir`.
    device : {'auto', 'cpu', 'cuda'}

    Raises
    ------
    MissingModelError
        Weights or metadata missing or unreadable.
    InputError
        ``cuda`` requested without a CUDA GPU.
    """
    import torch

    from .networks import build_network

    weights, meta_path = model_paths(name, models_dir)
    for path in (weights, meta_path):
        if not path.is_file():
            raise MissingModelError(
                f"model '{name}' not found: {path} is missing (train it with 'autocac train' "
                f"or reinstall AutoCAC; nothing is downloaded)")
    torch_device = resolve_device(device)
    try:
        meta = json.loads(meta_path.read_text())
        network = build_network(meta["architecture"], **meta["kwargs"])
        state = torch.load(weights, map_location="cpu", weights_only=True)
        network.load_state_dict({k: v.float() if v.is_floating_point() else v
                                 for k, v in state.items()})
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise MissingModelError(f"model '{name}' in {weights.parent} cannot be loaded: "
                                f"{detail}") from None
    return Model(network.to(torch_device).eval(), meta, torch_device)


# --- input normalization ----------------------------------------------------------------

def window(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Values from ``low`` to ``high`` mapped linearly to 0..1 (clipped), as float32."""
    out = np.asarray(array, dtype=np.float32) - np.float32(low)
    out *= np.float32(1.0 / (high - low))
    return np.clip(out, 0.0, 1.0, out=out)


def histogram_normalized(array: np.ndarray) -> np.ndarray:
    """The preprocessing stage's attenuation-histogram normalization of an HU image.

    Soft tissue and the contrast blood pool land on fixed values whatever the tube voltage
    and bolus timing (:func:`AutoCACLib.preprocess.fit_histogram_normalization`).
    """
    from .preprocess import fit_attenuation_normalization

    return fit_attenuation_normalization(array)[1].apply(array)


def network_source(array: np.ndarray, normalization: dict,
                   normalized: np.ndarray | None = None) -> np.ndarray:
    """The values a model's window applies to: HU, or histogram-normalized values.

    Parameters
    ----------
    array : ndarray
        The image in HU.
    normalization : dict
        The model's ``normalization`` metadata; ``input`` is ``"hu"`` or ``"histogram"``.
    normalized : ndarray, optional
        The histogram-normalized image when already computed (the preprocessing stage's
        ``Preprocessed.normalized``); computed here when needed and not given.
    """
    kind = normalization["input"]
    if kind == "hu":
        return array
    if kind == "histogram":
        return histogram_normalized(array) if normalized is None else normalized
    raise ValueError(f"unknown network input normalization {kind!r}")


# --- grids and resampling ---------------------------------------------------------------

def grid_shape(shape, spacing, target_spacing) -> tuple[int, ...]:
    """Shape of the working grid over the same extent: ``round(extent / target)``, >= 1."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing))


def _axis_taps(n_in: int, n_out: int, out_index: np.ndarray, antialias: bool):
    """Source indices and weights of linear (triangle-filter) resampling along one axis."""
    scale = n_in / n_out
    support = max(scale, 1.0) if antialias else 1.0
    centre = (out_index + 0.5) * scale - 0.5
    first = np.floor(centre - support).astype(int) + 1
    n_taps = int(math.ceil(2 * support)) + 1
    index = first[:, None] + np.arange(n_taps)[None, :]
    weight = np.clip(1.0 - np.abs(index - centre[:, None]) / support, 0.0, None)
    weight /= weight.sum(axis=1, keepdims=True)
    return np.clip(index, 0, n_in - 1), weight.astype(np.float32)


def resample_linear(array: np.ndarray, out_shape, region=None, antialias: bool = True,
                    device=None):
    """Linear resampling of a 3D array onto a grid of the same extent.

    Parameters
    ----------
    array : ndarray (z, y, x)
    out_shape : tuple of 3 int
        Shape of the output grid (the whole grid, also when ``region`` is given).
    region : tuple of 3 slice, optional
        Part of the output grid to compute (steps of 1); default the whole grid.
    antialias : bool
        Widen the filter when shrinking an axis (a triangle filter over the input
        voxels that fall into one output voxel) so that noise and thin structures average
        instead of aliasing.
    device : torch.device, optional
        Where the arithmetic runs (a model's device: a GPU resamples a clinical image many
        times faster than the CPU); default the CPU.

    Returns
    -------
    ndarray of float32
        The output grid (or its ``region``).
    """
    import torch

    region = region or tuple(slice(0, n) for n in out_shape)
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if device is not None:
        x = x.to(device)
    # Shrinking axes first keeps the intermediate arrays small.
    for axis in sorted(range(3), key=lambda a: out_shape[a] / array.shape[a]):
        n_in, n_out = array.shape[axis], out_shape[axis]
        sel = region[axis]
        if n_in == n_out:
            x = x.narrow(axis, sel.start, sel.stop - sel.start)
            continue
        index, weight = _axis_taps(n_in, n_out, np.arange(sel.start, sel.stop), antialias)
        view = [1, 1, 1]
        view[axis] = -1
        acc = None
        for t in range(index.shape[1]):
            term = x.index_select(axis, torch.from_numpy(index[:, t]).to(x.device))
            term *= torch.from_numpy(weight[:, t]).to(x.device).view(view)
            acc = term if acc is None else acc.add_(term)
        x = acc
    return x.cpu().numpy()


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output voxel for nearest-neighbour resampling along an axis."""
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(int), n_in - 1)


def resample_nearest(labels: np.ndarray, out_shape, region=None) -> np.ndarray:
    """Nearest-neighbour resampling of a label map onto a grid of the same extent.

    ``region`` (tuple of 3 slice, optional) restricts the output to part of the grid.
    """
    region = region or tuple(slice(0, n) for n in out_shape)
    index = [nearest_index(n, m)[r] for n, m, r in zip(labels.shape, out_shape, region)]
    return labels[np.ix_(*index)]


def resample_majority(labels: np.ndarray, out_shape, n_classes: int,
                      min_fraction: dict[int, float] | None = None) -> np.ndarray:
    """Label map on another grid by the largest class fraction per voxel.

    Fractions are the one-hot masks resampled by :func:`resample_linear` (weighted by its
    triangle filter when shrinking).

    Parameters
    ----------
    labels : ndarray (z, y, x) of int
        Values ``0 .. n_classes - 1``.
    out_shape : tuple of 3 int
    n_classes : int
    min_fraction : dict of int to float, optional
        Classes that win a voxel wherever their fraction reaches this value (applied in
        increasing class order after the majority vote): keeps thin structures visible
        on a coarse grid.
    """
    best = np.zeros(out_shape, dtype=np.float32)
    out = np.zeros(out_shape, dtype=np.uint8)
    forced = []
    for c in range(n_classes):
        fraction = resample_linear((labels == c).astype(np.float32), out_shape)
        better = fraction > best
        out[better] = c
        np.maximum(best, fraction, out=best)
        if min_fraction and c in min_fraction:
            forced.append((c, fraction >= min_fraction[c]))
    for c, mask in forced:
        out[mask] = c
    return out


def upsample_labels(probabilities: np.ndarray, out_shape, region=None, classes=None,
                    device=None):
    """Label map on a finer grid from class probabilities on a working grid.

    A voxel is foreground where the linearly up-sampled probability of the foreground
    classes reaches 0.5 (the argmax of foreground against background); it takes the most
    probable foreground class of its nearest working voxel.

    Parameters
    ----------
    probabilities : ndarray (classes, z, y, x)
        On a working grid; class 0 is the background.
    out_shape : tuple of 3 int
        The target grid's shape.
    region : tuple of 3 slice, optional
        Part of the target grid to compute.
    classes : sequence of int, optional
        The foreground classes; default all but 0.
    device : torch.device, optional
        Where the up-sampling runs (see :func:`resample_linear`).

    Returns
    -------
    labels : ndarray of uint8
        Class index per voxel of the region (0 = background).
    foreground : ndarray of float32
        Up-sampled probability of the foreground classes per voxel of the region.
    """
    classes = np.asarray(classes if classes is not None else range(1, len(probabilities)))
    foreground = resample_linear(probabilities[classes].sum(axis=0), out_shape, region,
                                 antialias=False, device=device)
    winner = classes[probabilities[classes].argmax(axis=0)].astype(np.uint8)
    labels = resample_nearest(winner, out_shape, region)
    labels[foreground < 0.5] = 0
    return labels, foreground


def stack_slices(image: np.ndarray, index, k: int) -> np.ndarray:
    """2.5D input: for each slice in ``index`` the slices ``i-k .. i+k`` as channels.

    Slices beyond the volume's ends repeat the first or last slice.

    Returns
    -------
    ndarray (len(index), 2k + 1, y, x)
    """
    index = np.asarray(index)
    rows = np.clip(index[:, None] + np.arange(-k, k + 1)[None, :], 0, image.shape[0] - 1)
    return image[rows]


def grid_geometry(volume: Volume, out_shape) -> Volume:
    """A volume (zero array) describing the grid of ``out_shape`` over ``volume``'s extent."""
    spacing = tuple(s * n / m for s, n, m in zip(volume.spacing, volume.shape, out_shape))
    shift_xyz = np.array([(o - s) / 2 for o, s in zip(spacing, volume.spacing)])[::-1]
    origin = np.asarray(volume.origin) + volume.direction @ shift_xyz
    return Volume(np.zeros(out_shape, np.uint8), spacing, tuple(origin), volume.direction.copy())


# --- the passes -------------------------------------------------------------------------

@dataclass
class NetworkSegmentation:
    """What the networks found, on the image grid.

    Attributes
    ----------
    aorta : ndarray (z, y, x) of bool
    coronary : ndarray (z, y, x) of uint8
        Index into ``coronary_classes`` (0 = background).
    coronary_classes : tuple of str
        :data:`VESSEL_CLASSES` or :data:`BINARY_CLASSES`.
    coronary_probability : ndarray (z, y, x) of float16
        ``1 - P(background)`` of the coronary network (0 outside ``heart_box``).
    heart_box : tuple of 3 slice
        The crop the coronary network ran on.
    heart_found : bool
        False when the aorta pass found no coronary region (the whole image was used).
    timings_s : dict
        Seconds per step.
    """

    aorta: np.ndarray
    coronary: np.ndarray
    coronary_classes: tuple[str, ...]
    coronary_probability: np.ndarray
    heart_box: tuple
    heart_found: bool
    timings_s: dict = field(default_factory=dict)

    def labelmap(self) -> np.ndarray:
        """AutoCAC's label map: Aorta and the named vessels (calcium not separated).

        Raises
        ------
        ValueError
            For a binary coronary model (its vessels get names in post-processing).
        """
        if tuple(self.coronary_classes) != VESSEL_CLASSES:
            raise ValueError("the coronary model has no vessel names; label the tree first")
        lut = np.array([0] + [VESSEL_LABEL[v] for v in VESSEL_CLASSES[1:]], dtype=np.uint8)
        labels = np.where(self.aorta, np.uint8(AORTA_LABEL), np.uint8(0))
        vessel = self.coronary > 0
        labels[vessel] = lut[self.coronary[vessel]]
        return labels


def prepare_input(model_meta: dict, source: np.ndarray, spacing, device=None) -> np.ndarray:
    """Network input: ``source`` (see :func:`network_source`) resampled to the model's
    working grid (on ``device``, default the CPU) and windowed to 0..1."""
    shape = grid_shape(source.shape, spacing, model_meta["spacing_mm"])
    norm = model_meta["normalization"]
    return window(resample_linear(source, shape, device=device), norm["low"], norm["high"])


def heart_box_from_mask(mask: np.ndarray, in_shape, spacing, margin_mm: float,
                        min_voxels: int = 1):
    """Bounding box on the image grid of a mask on a coarse grid, widened by a margin.

    Parameters
    ----------
    mask : ndarray (z, y, x) of bool
        On a grid of the same extent as the image.
    in_shape : tuple of 3 int
        The image's shape.
    spacing : tuple of 3 float
        The image's spacing (mm).
    margin_mm : float
    min_voxels : int
        Connected components of the mask smaller than this are ignored.

    Returns
    -------
    tuple of 3 slice, or None when the mask is empty
    """
    from scipy import ndimage

    components, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = np.bincount(components.ravel())[1:]
    keep = np.isin(components, np.flatnonzero(sizes >= min_voxels) + 1)
    if not keep.any():
        keep = mask
    box = []
    for axis, (n_image, s) in enumerate(zip(in_shape, spacing)):
        hit = np.flatnonzero(keep.any(axis=tuple(a for a in range(3) if a != axis)))
        factor = n_image / mask.shape[axis]
        pad = int(math.ceil(margin_mm / s))
        box.append(slice(max(0, int(hit[0] * factor) - pad),
                         min(n_image, int(math.ceil((hit[-1] + 1) * factor)) + pad)))
    return tuple(box)


def segment_networks(volume: Volume, normalized: np.ndarray | None = None,
                     models_dir: str | os.PathLike | None = None, device: str = "auto",
                     models: dict[str, Model] | None = None, heart_margin_mm: float = 12.0,
                     batch_size: int | None = None, progress: Progress | None = None
                     ) -> NetworkSegmentation:
    """Run the aorta pass, crop the heart and run the coronary pass.

    Parameters
    ----------
    volume : Volume
        The CCTA (HU).
    normalized : ndarray (z, y, x), optional
        The preprocessing stage's histogram-normalized image, for models trained on it;
        computed when needed and not given.
    models_dir : path-like, optional
        Where ``aorta`` and ``coronary`` are read from; default :func:`default_models_dir`.
    device : {'auto', 'cpu', 'cuda'}
    models : dict of str to Model, optional
        Already loaded models by name (``aorta``, ``coronary``), instead of reading files.
    heart_margin_mm : float
        Margin around the coarse coronary region for the crop.
    batch_size : int, optional
        Slices per forward pass (default: :meth:`Model.predict`'s).
    progress : callable(message, fraction), optional

    Returns
    -------
    NetworkSegmentation
    """
    progress = progress or (lambda message, fraction: None)
    models = dict(models or {})
    for name in (AORTA_MODEL, CORONARY_MODEL):
        if name not in models:
            models[name] = load_model(name, models_dir, device)
    if normalized is not None and normalized.shape != volume.shape:
        raise ValueError(f"normalized image shape {normalized.shape} differs from {volume.shape}")
    timings = {}

    aorta_model = models[AORTA_MODEL]
    coronary_model = models[CORONARY_MODEL]
    if "histogram" in (m.meta["normalization"]["input"] for m in models.values()) \
            and normalized is None:
        t0 = time.perf_counter()
        progress("histogram normalization", 0.0)
        normalized = histogram_normalized(volume.array)
        timings["histogram_normalization"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    progress("aorta network", 0.05)
    x = prepare_input(aorta_model.meta, network_source(volume.array, aorta_model.meta[
        "normalization"], normalized), volume.spacing, aorta_model.device)
    probabilities = aorta_model.predict(x, batch_size)
    coarse = probabilities.argmax(axis=0)
    aorta_index = aorta_model.classes.index("Aorta")
    present = probabilities[aorta_index] > 0.05
    aorta = np.zeros(volume.shape, dtype=bool)
    if present.any():
        box = heart_box_from_mask(present, volume.shape, volume.spacing, 2 * max(volume.spacing))
        labels, _ = upsample_labels(probabilities, volume.shape, box, [aorta_index],
                                    aorta_model.device)
        aorta[box] = labels > 0
    voxel_mm3 = float(np.prod(aorta_model.spacing))
    box = heart_box_from_mask(coarse == aorta_model.classes.index("Coronary"), volume.shape,
                              volume.spacing, heart_margin_mm,
                              min_voxels=max(1, int(round(20.0 / voxel_mm3))))
    heart_found = box is not None
    box = box or tuple(slice(0, n) for n in volume.shape)
    timings["aorta_network"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    progress("coronary network", 0.5)
    source = network_source(volume.array, coronary_model.meta["normalization"], normalized)
    x = prepare_input(coronary_model.meta, source[box], volume.spacing, coronary_model.device)
    probabilities = coronary_model.predict(x, batch_size)
    crop_shape = tuple(b.stop - b.start for b in box)
    labels, foreground = upsample_labels(probabilities, crop_shape,
                                         device=coronary_model.device)
    coronary = np.zeros(volume.shape, dtype=np.uint8)
    coronary[box] = labels
    probability = np.zeros(volume.shape, dtype=np.float16)
    probability[box] = foreground
    timings["coronary_network"] = time.perf_counter() - t0
    progress("networks done", 1.0)
    return NetworkSegmentation(aorta, coronary, coronary_model.classes, probability, box,
                               heart_found, timings)
