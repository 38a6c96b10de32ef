"""Training of the aorta and coronary networks on CT images with label maps.

Data
----
:func:`find_cases` accepts, in any mix:

* AutoCAC case folders (``ccta.nrrd`` + ``labels.seg.nrrd``, as the phantom generator's
  ``write_cohort`` writes them), or a folder of such folders;
* image/label pairs given as ``(image_path, label_path)`` tuples;
* folders of image/label pairs in NIfTI, NRRD or MetaImage, found recursively:
  ``<id>.img.<ext>`` beside ``<id>.label.<ext>`` (ImageCAS), or sibling folders
  ``CTCA``/``Annotations`` (ASOCA), ``images``/``labels`` or ``imagesTr``/``labelsTr``
  (nnU-Net, whose ``_0000`` channel suffix is ignored), matched by file name.

Public coronary data sets label the tree without vessel names (one value for all
coronary voxels). Their labels are read as "coronary, unnamed" unless ``label_remap``
maps label values to segment names (``{1: "LAD", 2: "RCA", 3: "Aorta"}``; the names of
:mod:`AutoCACLib.segments` or ``"Coronary"``; unlisted values become background). When any
training case has unnamed coronary voxels, the coronary model is trained binary
(classes ``background, Coronary``) and the pipeline names the vessels afterwards. The
aorta model needs aorta labels: it is trained only on cases that have them and skipped
when none do.

Training
--------
Each case is resampled to the model's working grid (image: anti-aliased linear; labels:
the largest class fraction per voxel, where thin coronary vessels on the aorta model's
coarse grid win a voxel from 25% of its volume). The coronary model sees the heart crop
(the coronary labels' bounding box plus a margin, as the aorta pass gives it at
inference). Batches are 2.5D patches; a share of them is centred on a foreground voxel of a
randomly chosen class present in the case (class balance: the short LM is seen as often as
the LAD), the rest anywhere. Intensity augmentation (gain, offset, noise) covers contrast
differences between tube voltages and bolus timings, random in-plane rotation (up to 15
degrees) and zoom (up to 15%) covers anatomy; no flips (left and right coronaries differ). Loss: cross-entropy + soft Dice over the foreground classes; Adam with cosine
learning-rate decay; seeds fix the split, the initialisation and the sampling.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import InputError
from .evaluation import dice
from .inference import (AORTA_CLASSES, AORTA_MODEL, BINARY_CLASSES, CORONARY_MODEL,
                        FORMAT_VERSION, VESSEL_CLASSES, Model, Progress, heart_box_from_mask,
                        load_model, model_paths, network_source, prepare_input,
                        resample_majority, resolve_device, segment_networks, stack_slices,
                        upsample_labels)
from .segments import AORTA_LABEL, CALCIUM_LABEL, SEGMENT_BY_NAME, VESSEL_LABEL, VESSELS
from .volume import IMAGE_SUFFIXES, Volume, read_volume

#: Internal label value of coronary voxels without a vessel name.
UNNAMED_CORONARY = 10
_N_LABELS = UNNAMED_CORONARY + 1
#: Sibling folder names (image folder, label folder) recognised as a data set of pairs.
PAIR_FOLDERS = (("ctca", "annotations"), ("images", "labels"), ("imagestr", "labelstr"),
                ("image", "label"), ("img", "label"))
CASE_IMAGE, CASE_LABELS = "ccta.nrrd", "labels.seg.nrrd"
#: Initial Adam learning rate.
LEARNING_RATE = 2e-3


# --- data -------------------------------------------------------------------------------

@dataclass(frozen=True)
class CaseRef:
    """One training case on disk.

    Attributes
    ----------
    name : str
    image : Path
    labels : Path
        A ``.seg.nrrd`` with AutoCAC's segment names, or a label map image.
    """

    name: str
    image: Path
    labels: Path


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    for tail in (".img", "_0000"):
        if name.lower().endswith(tail):
            name = name[: -len(tail)]
    return name


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))


def _pairs_in_folder(root: Path) -> list[CaseRef]:
    """The cases below ``root``, ordered by folder path; symbolic links to folders are
    followed (each real folder read once, so link loops end)."""
    by_folder, seen = {}, set()
    for folder, dirs, _ in os.walk(root, followlinks=True):
        folder = Path(folder)
        dirs.sort()
        real = folder.resolve()
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        by_folder[str(folder)] = cases = []
        if (folder / CASE_IMAGE).is_file() and (folder / CASE_LABELS).is_file():
            cases.append(CaseRef(folder.name, folder / CASE_IMAGE, folder / CASE_LABELS))
            continue
        files = _image_files(folder)
        by_name = {p.name.lower(): p for p in files}
        for p in files:
            low = p.name.lower()
            if ".img." in low:
                label = by_name.get(low.replace(".img.", ".label.", 1))
                if label is not None:
                    cases.append(CaseRef(_stem(p), p, label))
        lower = {d.lower(): d for d in dirs}
        for image_dir, label_dir in PAIR_FOLDERS:
            if image_dir in lower and label_dir in lower:
                labels = {_stem(p): p for p in _image_files(folder / lower[label_dir])}
                for p in _image_files(folder / lower[image_dir]):
                    if _stem(p) in labels:
                        cases.append(CaseRef(_stem(p), p, labels[_stem(p)]))
                dirs.remove(lower[image_dir])
                dirs.remove(lower[label_dir])
    return [case for folder in sorted(by_folder) for case in by_folder[folder]]


def find_cases(sources) -> list[CaseRef]:
    """Training cases from folders and image/label pairs (see the module docstring).

    Parameters
    ----------
    sources : path-like, (image, labels) tuple, or a list of these

    Raises
    ------
    InputError
        A path that does not exist, or no case found at all.
    """
    if isinstance(sources, (str, os.PathLike, tuple)):
        sources = [sources]
    cases = []
    for source in sources:
        if isinstance(source, tuple):
            image, labels = (Path(p) for p in source)
            for p in (image, labels):
                if not p.is_file():
                    raise InputError(f"training file not found: {p}")
            cases.append(CaseRef(_stem(image), image, labels))
            continue
        source = Path(source)
        if not source.is_dir():
            raise InputError(f"training data folder not found: {source}")
        cases.extend(_pairs_in_folder(source))
    if not cases:
        raise InputError("no training cases found (expected case folders with ccta.nrrd and "
                         "labels.seg.nrrd, or image/label pairs)")
    return cases


def _remap(labels: np.ndarray, label_remap: dict) -> np.ndarray:
    values = {**{name: spec.label for name, spec in SEGMENT_BY_NAME.items()},
              "Coronary": UNNAMED_CORONARY}
    lut = np.zeros(int(max(labels.max(), max(label_remap))) + 1, dtype=np.uint8)
    for source, name in label_remap.items():
        if name not in values:
            raise InputError(f"label_remap: unknown segment name {name!r}; use one of "
                             f"{sorted(values)}")
        lut[int(source)] = values[name]
    return lut[labels]


def has_vessel_names(case: CaseRef, label_remap: dict | None = None) -> bool:
    """Whether a case's coronary labels name the vessels.

    True for ``.seg.nrrd`` files (AutoCAC's named segments) and for label maps read with a
    ``label_remap`` that maps no value to ``"Coronary"``.
    """
    from .segmentation_io import is_segmentation_file

    if is_segmentation_file(case.labels):
        return True
    return bool(label_remap) and "Coronary" not in label_remap.values()


def load_case(case: CaseRef, label_remap: dict | None = None) -> tuple[Volume, np.ndarray]:
    """Image and label map of a case, labels in AutoCAC's values.

    Coronary voxels without a vessel name get :data:`UNNAMED_CORONARY`.

    Parameters
    ----------
    case : CaseRef
    label_remap : dict of int to str, optional
        Label value -> segment name, for label map images; default: any non-zero value
        is an unnamed coronary voxel. Ignored for ``.seg.nrrd`` files (named segments).

    Raises
    ------
    InputError
        Unreadable files or an image and label map of different shapes.
    """
    from .segmentation_io import (is_segmentation_file, masks_to_labels, read_labelmap,
                                  read_segment_masks)

    image = read_volume(case.image)
    if is_segmentation_file(case.labels):
        masks, geometry = read_segment_masks(case.labels)
        labels = masks_to_labels(masks, geometry.shape)
    else:
        labels = read_labelmap(case.labels).array
        labels = (_remap(labels, label_remap) if label_remap
                  else np.where(labels > 0, UNNAMED_CORONARY, 0).astype(np.uint8))
    if labels.shape != image.shape:
        raise InputError(f"case {case.name}: label map shape {labels.shape} differs from "
                         f"image shape {image.shape}")
    return image, labels.astype(np.uint8)


# --- what each model learns -------------------------------------------------------------

def _lut(pairs: dict[int, int]) -> np.ndarray:
    lut = np.zeros(_N_LABELS, dtype=np.uint8)
    for value, target in pairs.items():
        lut[value] = target
    return lut


_CORONARY_VALUES = [*VESSEL_LABEL.values(), *CALCIUM_LABEL.values(), UNNAMED_CORONARY]
#: AutoCAC label value -> class index, per model's class list (calcium counts as its vessel).
TARGETS = {
    AORTA_CLASSES: _lut({AORTA_LABEL: 1, **{v: 2 for v in _CORONARY_VALUES}}),
    VESSEL_CLASSES: _lut({**{VESSEL_LABEL[v]: i + 1 for i, v in enumerate(VESSELS)},
                          **{CALCIUM_LABEL[v]: i + 1 for i, v in enumerate(VESSELS)}}),
    BINARY_CLASSES: _lut({v: 1 for v in _CORONARY_VALUES}),
}


@dataclass
class ModelConfig:
    """How one network is built and trained.

    Attributes
    ----------
    name : str
        File name (``<name>.pt``, ``<name>.json``, ``<name>.md``).
    architecture : str
        A key of :data:`AutoCACLib.networks.ARCHITECTURES`.
    kwargs : dict
        Architecture arguments besides ``in_channels`` and ``n_classes``.
    classes : tuple of str
    context : int
        k: the input stacks ``2k + 1`` slices.
    spacing_mm : tuple of 3 float
        Working grid spacing (z, y, x).
    patch : int
        Training patch size (pixels, square).
    positive_fraction : float
        Share of patches centred on a foreground voxel.
    window : tuple of 2 float
        Input window (HU, or histogram-normalized units where soft tissue is 50 and the
        contrast blood pool 400) mapped to 0..1.
    crop_to_coronaries : bool
        Train on the heart crop (the coronary labels' box plus ``crop_margin_mm``).
    crop_margin_mm : float
    coarse_fraction : dict of int to float
        Class index -> fraction of a working voxel from which that class wins it.
    """

    name: str
    architecture: str
    kwargs: dict
    classes: tuple[str, ...]
    context: int
    spacing_mm: tuple[float, float, float]
    patch: int
    positive_fraction: float
    window: tuple[float, float] = (-300.0, 900.0)
    crop_to_coronaries: bool = False
    crop_margin_mm: float = 12.0
    coarse_fraction: dict = field(default_factory=dict)


def default_configs(coronary_classes=VESSEL_CLASSES, base: int = 8) -> dict[str, ModelConfig]:
    """The shipped models' configurations (``base``: width of the first stage)."""
    return {
        AORTA_MODEL: ModelConfig(AORTA_MODEL, "deeplabv3plus", {"base": base}, AORTA_CLASSES,
                                 context=1, spacing_mm=(2.0, 1.2, 1.2), patch=128,
                                 positive_fraction=0.6, coarse_fraction={2: 0.25}),
        CORONARY_MODEL: ModelConfig(CORONARY_MODEL, "vnet2d", {"base": base},
                                    tuple(coronary_classes), context=2,
                                    spacing_mm=(0.8, 0.6, 0.6), patch=96,
                                    positive_fraction=0.7, crop_to_coronaries=True),
    }


@dataclass
class PreparedCase:
    """A case on a model's working grid: normalized image (float16) and class targets."""

    name: str
    image: np.ndarray
    target: np.ndarray
    foreground: dict = field(default_factory=dict)


def _normalization(config: ModelConfig, input_normalization: str) -> dict:
    return {"input": input_normalization, "low": config.window[0], "high": config.window[1]}


def _model_box(config: ModelConfig, image: Volume, labels: np.ndarray):
    if not config.crop_to_coronaries:
        return tuple(slice(0, n) for n in image.shape)
    coronary = TARGETS[BINARY_CLASSES][labels] > 0
    return heart_box_from_mask(coronary, image.shape, image.spacing, config.crop_margin_mm) \
        or tuple(slice(0, n) for n in image.shape)


def prepare_case(config: ModelConfig, name: str, image: Volume, labels: np.ndarray,
                 input_normalization: str = "histogram") -> PreparedCase:
    """Resample, crop and normalize one case for one model.

    Parameters
    ----------
    config : ModelConfig
    name : str
    image : Volume
        HU image.
    labels : ndarray (z, y, x) of uint8
        AutoCAC label values (:func:`load_case`).
    input_normalization : {'histogram', 'hu'}
        Window the preprocessing stage's histogram-normalized values or plain HU.
    """
    box = _model_box(config, image, labels)
    norm = _normalization(config, input_normalization)
    meta = {"spacing_mm": config.spacing_mm, "normalization": norm}
    x = prepare_input(meta, network_source(image.array, norm)[box], image.spacing)
    shape = x.shape
    target = resample_majority(TARGETS[config.classes][labels[box]], shape, len(config.classes),
                               config.coarse_fraction)
    # Slices smaller than a patch are padded once (with what the network pads with: zeros).
    pad = [(0, 0)] + [(0, max(0, config.patch - n)) for n in shape[1:]]
    x, target = np.pad(x, pad), np.pad(target, pad)
    foreground = {c: np.flatnonzero(target == c) for c in range(1, len(config.classes))}
    return PreparedCase(name, x.astype(np.float16), target,
                        {c: v for c, v in foreground.items() if v.size})


def sample_batch(cases: list[PreparedCase], config: ModelConfig, batch_size: int,
                 rng: np.random.Generator, augment: bool = True):
    """A batch of 2.5D patches and their targets.

    Returns
    -------
    x : ndarray (batch, 2k + 1, patch, patch) of float32
    y : ndarray (batch, patch, patch) of int64
    """
    p, k = config.patch, config.context
    xs, ys = [], []
    for _ in range(batch_size):
        case = cases[rng.integers(len(cases))]
        nz, ny, nx = case.target.shape
        if case.foreground and rng.random() < config.positive_fraction:
            voxels = case.foreground[list(case.foreground)[rng.integers(len(case.foreground))]]
            z, cy, cx = np.unravel_index(voxels[rng.integers(voxels.size)], case.target.shape)
            y0 = int(np.clip(cy - p // 2 + rng.integers(-p // 4, p // 4 + 1), 0, ny - p))
            x0 = int(np.clip(cx - p // 2 + rng.integers(-p // 4, p // 4 + 1), 0, nx - p))
        else:
            z, y0, x0 = rng.integers(nz), rng.integers(ny - p + 1), rng.integers(nx - p + 1)
        window = (slice(y0, y0 + p), slice(x0, x0 + p))
        xs.append(stack_slices(case.image[(slice(None),) + window], [z], k)[0])
        ys.append(case.target[(z,) + window])
    x = np.stack(xs).astype(np.float32)
    if augment:
        gain = rng.uniform(0.85, 1.15, (batch_size, 1, 1, 1))
        offset = rng.uniform(-0.05, 0.05, (batch_size, 1, 1, 1))
        noise = rng.uniform(0.0, 0.03, (batch_size, 1, 1, 1))
        x = (x * gain + offset + noise * rng.standard_normal(x.shape)).astype(np.float32)
    return x, np.stack(ys).astype(np.int64)


def random_affine(x, y, rng: np.random.Generator, max_degrees: float = 15.0,
                  max_scale: float = 0.15):
    """Rotate and scale each patch of a batch in-plane by a random amount.

    Parameters
    ----------
    x : Tensor (batch, channels, h, w)
        Images (bilinear interpolation, zeros outside).
    y : Tensor (batch, h, w) of int64
        Targets (nearest neighbour, background outside).
    rng : numpy.random.Generator
    max_degrees, max_scale : float
        Largest rotation and relative zoom.
    """
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    angle = np.radians(rng.uniform(-max_degrees, max_degrees, n))
    scale = rng.uniform(1 - max_scale, 1 + max_scale, n)
    theta = np.zeros((n, 2, 3), np.float32)
    theta[:, 0, 0] = theta[:, 1, 1] = np.cos(angle) * scale
    theta[:, 0, 1] = -np.sin(angle) * scale
    theta[:, 1, 0] = np.sin(angle) * scale
    grid = F.affine_grid(torch.from_numpy(theta).to(x.device), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", align_corners=False)
    y = F.grid_sample(y[:, None].float(), grid, mode="nearest", align_corners=False)
    return x, y[:, 0].long()


def dice_ce_loss(logits, target):
    """Cross-entropy plus (1 - mean soft Dice over the foreground classes of the batch)."""
    import torch
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, target)
    prob = torch.softmax(logits, dim=1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(prob.dtype)
    inter = (prob * onehot).sum(dim=(0, 2, 3))
    denom = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return ce + 1.0 - ((2 * inter + 1.0) / (denom + 1.0)).mean()


# --- saving -----------------------------------------------------------------------------

def save_model(network, meta: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``<name>.pt`` (float16 state dict), ``<name>.json`` and ``<name>.md``.

    Returns
    -------
    dict of str to Path
        The written files by kind (``weights``, ``metadata``, ``card``).
    """
    import torch

    weights, meta_path = model_paths(meta["name"], out_dir)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()
             for k, v in network.state_dict().items()}
    torch.save(state, weights)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    card = weights.with_suffix(".md")
    card.write_text(model_card(meta, weights.stat().st_size))
    return {"weights": weights, "metadata": meta_path, "card": card}


def round_to_float16(network) -> None:
    """Round a network's floating-point parameters and buffers to float16 precision in place.

    Evaluated after this, a network gives what its saved (float16) weights will give.
    """
    import torch

    with torch.no_grad():
        for tensor in list(network.parameters()) + list(network.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())


def _fmt_dice(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _initialized_row(training: dict) -> str:
    """Model card row naming the model a fine-tuned network started from ('' if none)."""
    start = training.get("initialized_from")
    if not start:
        return ""
    return (f"| Initialized from | the model in `{start['models_dir']}` ({start['n_train_cases']} "
            f"cases, {start['epochs']} epochs: {start['data']}) |\n")


def model_card(meta: dict, weights_bytes: int | None = None) -> str:
    """Markdown model card from a model's metadata."""
    t = meta["training"]
    dice_rows = "\n".join(f"| {k} | {_fmt_dice(v)} |" for k, v in t["held_out_dice"].items())
    size = f"{weights_bytes / 1e6:.2f} MB (float16)" if weights_bytes else "float16 state dict"
    norm = meta["normalization"]
    norm_text = (f"{'HU' if norm['input'] == 'hu' else 'histogram-normalized values (soft tissue 50, blood pool 400)'}"
                 f", window {norm['low']:g} to {norm['high']:g} mapped to 0..1")
    return f"""# AutoCAC model card: `{meta['name']}`

| | |
|---|---|
| Task | {meta['task']} |
| Architecture | `{meta['architecture']}` {json.dumps(meta['kwargs'])} ({t['parameters']:,} parameters, {size}) |
| Classes | {', '.join(meta['classes'])} |
| Input | 2.5D: {2 * meta['context_slices'] + 1} neighbouring axial slices as channels, working grid {' x '.join(f'{s:g}' for s in meta['spacing_mm'])} mm (z, y, x) |
| Normalization | {norm_text} |
| Training data | {t['n_train_cases']} cases: {t['data']} |
{_initialized_row(t)}| Held-out data | {t['n_held_out_cases']} cases ({'never used in training' if t['held_out'] else 'none: the training cases themselves'}) |
| Seed | {t['seed']} |
| Epochs | {t['epochs']} x {t['steps_per_epoch']} iterations, batch {t['batch_size']}, patch {t['patch']} px, Adam lr {t['learning_rate']:g} (cosine decay) |
| Loss | cross-entropy + soft Dice; final training loss {t['final_loss']:.4f} |
| Runtime | {t['runtime_s']:.0f} s training on {t['device']} ({t['threads']} thread{'' if t['threads'] == 1 else 's'}), {t['platform']} |
| Software | torch {t['torch']}, AutoCAC {t['autocac']} |

## Held-out Dice (on the image grid, after resampling back)

| Class | Dice |
|---|---|
{dice_rows}

## Intended use and limits
Part of the AutoCAC pipeline (coronary calcium scoring on contrast CCTA); research use only,
not a medical device. Trained on {t['data_kind']}; performance on scanners, protocols and
anatomy unlike the training data is unknown until measured. Calcium voxels are learned as
part of their vessel; the calcium itself is found by the adaptive threshold downstream.
"""


# --- training ---------------------------------------------------------------------------

def _evaluate(model: Model, config: ModelConfig, case: CaseRef, label_remap):
    image, labels = load_case(case, label_remap)
    box = _model_box(config, image, labels)
    crop = tuple(b.stop - b.start for b in box)
    source = network_source(image.array, model.meta["normalization"])
    x = prepare_input(model.meta, source[box], image.spacing)
    probabilities = model.predict(x)
    target = TARGETS[config.classes][labels[box]]
    if config.name == AORTA_MODEL:
        aorta = config.classes.index("Aorta")
        predicted, _ = upsample_labels(probabilities, crop, classes=[aorta])
        return {"Aorta": dice(predicted > 0, target == aorta)}
    predicted, _ = upsample_labels(probabilities, crop)
    scores = {name: dice(predicted == c, target == c)
              for c, name in enumerate(config.classes) if c > 0}
    if len(config.classes) > 2:
        scores["Coronary (all vessels)"] = dice(predicted > 0, target > 0)
    return scores


def _mean_scores(per_case: list[dict]) -> dict:
    keys = per_case[0].keys() if per_case else []
    means = {}
    for k in keys:
        values = [s[k] for s in per_case if s[k] is not None]
        means[k] = float(np.mean(values)) if values else None
    return means


def train_network(config: ModelConfig, train: list[PreparedCase], iterations: int,
                  batch_size: int, device, seed: int, learning_rate: float = LEARNING_RATE,
                  progress: Callable[[int, float], None] | None = None, initial=None):
    """Train one network, from scratch or from a trained network's weights.

    Parameters
    ----------
    config : ModelConfig
    train : list of PreparedCase
    iterations : int
    batch_size : int
    device : torch.device
    seed : int
        Seeds the initialisation and the batch sampling.
    learning_rate : float
        Initial Adam learning rate (cosine decay to 1% of it).
    progress : callable(iteration, loss), optional
    initial : torch.nn.Module, optional
        Trained network of the same architecture whose weights are the starting point
        (fine-tuning); default a random initialisation.

    Returns
    -------
    network : torch.nn.Module
        In evaluation mode.
    losses : list of float
        Training loss per iteration.
    """
    import torch

    from .networks import build_network

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = build_network(config.architecture, in_channels=2 * config.context + 1,
                            n_classes=len(config.classes), **config.kwargs).to(device)
    if initial is not None:
        network.load_state_dict(initial.state_dict())
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * i / max(1, iterations))))
    network.train()
    losses = []
    for i in range(iterations):
        x, y = sample_batch(train, config, batch_size, rng)
        x, y = random_affine(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device), rng)
        loss = dice_ce_loss(network(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if progress:
            progress(i, losses[-1])
    return network.eval(), losses


def _describe(sources) -> str:
    if isinstance(sources, (str, os.PathLike, tuple)):
        sources = [sources]
    text = "; ".join(" + ".join(map(str, s)) if isinstance(s, tuple) else str(s) for s in sources)
    return text if len(text) <= 300 else text[:297] + "..."


def _split(cases: list[CaseRef], fraction: float, seed: int):
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = int(round(len(cases) * fraction)) if len(cases) > 1 else 0
    n_val = min(max(n_val, 1 if fraction > 0 and len(cases) > 1 else 0), len(cases) - 1)
    return [cases[i] for i in order[n_val:]], [cases[i] for i in order[:n_val]]


def _prepare_for_models(ref: CaseRef, configs: dict, label_remap,
                        input_normalization: str) -> dict[str, PreparedCase]:
    """One case on each model's working grid (the aorta model only where aorta is labelled)."""
    image, labels = load_case(ref, label_remap)
    return {name: prepare_case(config, ref.name, image, labels, input_normalization)
            for name, config in configs.items()
            if name != AORTA_MODEL or (labels == AORTA_LABEL).any()}


def _single_thread_worker() -> None:
    """Worker start-up: one torch thread per process (``jobs`` workers share the cores)."""
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def _map_jobs(function, items: list, jobs: int):
    """``function`` over ``items`` in order, in ``jobs`` processes when more than one.

    Workers are spawned, not forked: this process may hold a CUDA context and torch threads.
    """
    if jobs <= 1 or len(items) <= 1:
        yield from map(function, items)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(jobs, len(items)), multiprocessing.get_context("spawn"),
                             initializer=_single_thread_worker) as pool:
        yield from pool.map(function, items)


def _network_meta(config: ModelConfig, named: bool, input_normalization: str) -> dict:
    """A trained network's metadata, less its training record."""
    return {
        "name": config.name, "format_version": FORMAT_VERSION,
        "task": ("ascending and descending aorta (and a coarse coronary class that "
                 "places the heart crop)" if config.name == AORTA_MODEL else
                 "coronary tree" + (" by vessel" if named else " (binary)")),
        "architecture": config.architecture,
        "kwargs": {"in_channels": 2 * config.context + 1, "n_classes": len(config.classes),
                   **config.kwargs},
        "classes": list(config.classes), "context_slices": config.context,
        "spacing_mm": list(config.spacing_mm),
        "normalization": _normalization(config, input_normalization),
    }


def _starting_model(name: str, models_dir, meta: dict, device) -> Model:
    """The trained model ``name`` in ``models_dir`` that fine-tuning starts from.

    Raises
    ------
    InputError
        Its architecture, width, classes, input or working grid differ from ``meta``.
    """
    model = load_model(name, models_dir, str(device.type))
    keys = ("architecture", "kwargs", "classes", "context_slices", "spacing_mm",
            "normalization")
    different = [k for k in keys if model.meta.get(k) != meta[k]]
    if different:
        raise InputError(f"cannot fine-tune '{name}' from {models_dir}: its "
                         f"{', '.join(different)} differ from this training's (same --base, "
                         f"label classes and input needed)")
    return model


def train_models(sources, out_dir: str | os.PathLike, epochs: int = 20, device: str = "auto",
                 seed: int = 0, progress: Progress | None = None, *,
                 label_remap: dict | None = None, models=(AORTA_MODEL, CORONARY_MODEL),
                 held_out_fraction: float = 0.2, steps_per_epoch: int = 100,
                 batch_size: int = 8, base: int = 8, input_normalization: str = "histogram",
                 overrides: dict[str, dict] | None = None,
                 data_description: str | None = None, jobs: int = 1,
                 init_from: str | os.PathLike | None = None,
                 learning_rate: float = LEARNING_RATE) -> dict:
    """Train the aorta and coronary networks and write them to ``out_dir``.

    Parameters
    ----------
    sources : path-like, (image, labels) tuple, or a list of these
        Case folders, folders of pairs, or pairs (:func:`find_cases`).
    out_dir : path-like
        Receives ``<name>.pt``, ``<name>.json`` and ``<name>.md`` per model
        (``Resources/Models`` to replace the shipped models).
    epochs : int
        Training length: ``epochs * steps_per_epoch`` iterations per model.
    device : {'auto', 'cpu', 'cuda'}
    seed : int
        Fixes the held-out split, the initialisation and the sampling.
    progress : callable(message, fraction), optional
    label_remap : dict of int to str, optional
        For label map images: label value -> segment name (see :func:`load_case`).
    models : sequence of str
        Which models to train (``aorta``, ``coronary``).
    held_out_fraction : float
        Share of the cases kept for validation (at least one when there are two or more).
    steps_per_epoch, batch_size : int
    base : int
        Width of the networks' first stage.
    input_normalization : {'histogram', 'hu'}
        The networks' input: the preprocessing stage's histogram normalization (robust
        to tube voltage and bolus timing) or plain HU, then a window; recorded in the
        metadata.
    overrides : dict of str to dict, optional
        Per model name, :class:`ModelConfig` fields to change (``{"coronary": {"patch":
        64, "spacing_mm": (1.0, 0.7, 0.7)}}``).
    data_description : str, optional
        Text for the model cards; default the case sources.
    jobs : int
        Training cases read and resampled in parallel (processes, about 3 GB each for a
        clinical-size case).
    init_from : path-like, optional
        Folder of trained models (``Resources/Models`` for the shipped ones) whose weights
        start the training (fine-tuning on new data); each model trained must be there with
        the same architecture, width, classes, input and working grid.
    learning_rate : float
        Initial Adam learning rate (a quarter of the default or less suits fine-tuning).

    Returns
    -------
    dict
        Per model: ``held_out_dice`` (class -> mean Dice), ``final_loss``, ``runtime_s``,
        ``n_train_cases``, ``n_held_out_cases``, ``files``; or ``skipped`` with the reason.
        With both models trained and held-out cases, ``pipeline_dice``: Dice of the full
        network pass (aorta pass, heart crop, coronary pass).
    """
    import torch

    from . import __version__

    progress = progress or (lambda message, fraction: None)
    cases = find_cases(sources)
    train_refs, val_refs = _split(cases, held_out_fraction, seed)
    torch_device = resolve_device(device)
    named = all(has_vessel_names(ref, label_remap) for ref in cases)
    configs = default_configs(VESSEL_CLASSES if named else BINARY_CLASSES, base)
    for name, changes in (overrides or {}).items():
        configs[name] = replace(configs[name], **changes)
    metas = {name: _network_meta(configs[name], named, input_normalization) for name in models}
    starts = ({name: _starting_model(name, init_from, metas[name], torch_device)
               for name in models} if init_from is not None else {})
    # Each case is read once and kept only on the working grids (float16 images).
    prepared = {name: [] for name in models}
    reader = partial(_prepare_for_models, configs={n: configs[n] for n in models},
                     label_remap=label_remap, input_normalization=input_normalization)
    for i, per_model in enumerate(_map_jobs(reader, train_refs, jobs)):
        progress(f"read training case {train_refs[i].name}", 0.15 * (i + 1) / len(train_refs))
        for name, case in per_model.items():
            prepared[name].append(case)
    metrics, trained = {}, {}
    for m, name in enumerate(models):
        config = configs[name]
        t0 = time.perf_counter()
        cases_used = [c.name for c in prepared[name]]
        if not cases_used:
            metrics[name] = {"skipped": "no training case has aorta labels"}
            continue
        iterations = epochs * steps_per_epoch

        def report(i, loss, m=m, name=name):
            if i % max(1, steps_per_epoch // 4) == 0 or i == iterations - 1:
                progress(f"{name}: iteration {i + 1}/{iterations}, loss {loss:.3f}",
                         round(0.15 + 0.8 * (m + (i + 1) / iterations) / len(models), 6))

        start = starts.get(name)
        network, losses = train_network(config, prepared.pop(name), iterations, batch_size,
                                        torch_device, seed, learning_rate, report,
                                        start.network if start else None)
        round_to_float16(network)
        meta = metas[name]
        model = Model(network, meta, torch_device)
        val_scores = [_evaluate(model, config, ref, label_remap) for ref in val_refs]
        if not val_refs:
            val_scores = [_evaluate(model, config, ref, label_remap)
                          for ref in train_refs if ref.name in cases_used]
        runtime = time.perf_counter() - t0
        meta["training"] = {
            "data": data_description or _describe(sources),
            "data_kind": "synthetic phantoms" if named else "user-supplied image/label pairs",
            "n_train_cases": len(cases_used), "n_held_out_cases": len(val_refs),
            "held_out": bool(val_refs), "held_out_cases": [r.name for r in val_refs],
            "seed": seed, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
            "batch_size": batch_size, "patch": config.patch, "learning_rate": learning_rate,
            "final_loss": float(np.mean(losses[-max(1, steps_per_epoch // 2):])),
            "held_out_dice": _mean_scores(val_scores), "runtime_s": runtime,
            "device": str(torch_device), "threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in network.parameters()),
            "platform": f"{platform.system()} {platform.machine()}",
            "torch": torch.__version__, "autocac": __version__,
        }
        if start:
            before = start.meta["training"]
            meta["training"]["initialized_from"] = {
                "models_dir": str(init_from), "data": before["data"],
                "n_train_cases": before["n_train_cases"], "epochs": before["epochs"]}
        files = save_model(network, meta, out_dir)
        trained[name] = model
        metrics[name] = {k: meta["training"][k] for k in
                         ("held_out_dice", "final_loss", "runtime_s", "n_train_cases",
                          "n_held_out_cases")}
        metrics[name]["files"] = {k: str(v) for k, v in files.items()}
    if len(trained) == 2 and val_refs:
        progress("held-out pipeline Dice", 0.95)
        metrics["pipeline_dice"] = _mean_scores(
            [_pipeline_scores(trained, ref, label_remap) for ref in val_refs])
    progress("training done", 1.0)
    return metrics


def _pipeline_scores(models: dict, case: CaseRef, label_remap) -> dict:
    image, labels = load_case(case, label_remap)
    seg = segment_networks(image, models=models)
    classes = seg.coronary_classes
    target = TARGETS[tuple(classes)][labels]
    scores = {"Aorta": dice(seg.aorta, labels == AORTA_LABEL),
              "Coronary (all vessels)": dice(seg.coronary > 0, target > 0)}
    scores.update({name: dice(seg.coronary == c, target == c)
                   for c, name in enumerate(classes) if c > 0})
    return scores
