"""Stage 1: preprocessing of the CCTA before the networks see it.

Three steps, as in the paper:

1. a Gaussian-mixture model (GMM) of the attenuation histogram, fitted by
   expectation-maximization on the histogram counts (:func:`fit_gmm_histogram`);
2. an attenuation-histogram optimization (:func:`fit_histogram_normalization`): the GMM's
   soft-tissue and contrast blood-pool components are mapped piecewise-linearly onto fixed
   reference values, so that 80, 100 and 120 kVp scans and early or late bolus timings look
   alike;
3. a multi-scale Hessian vesselness for bright tubes (:func:`vesselness`, Frangi's measure),
   with scales in mm and anisotropic voxel spacing handled exactly.

:func:`preprocess` chains them. Arrays are indexed ``[z, y, x]`` and ``spacing`` is
``(z, y, x)`` in mm (see :mod:`AutoCACLib.volume`).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

_SQRT_2PI = np.sqrt(2.0 * np.pi)


# --- Gaussian mixture on the histogram ---------------------------------------------------

@dataclass(frozen=True)
class GaussianMixture:
    """A 1D Gaussian mixture, components sorted by mean.

    Attributes
    ----------
    means, sigmas, weights : ndarray, shape (K,)
        Component means and standard deviations (HU) and mixing weights (sum 1).
    log_likelihood : float
        Mean log-likelihood per voxel (density in 1/HU) of the fitted values.
    n_iter : int
        EM iterations run.
    converged : bool
        Whether the log-likelihood gain fell below the tolerance.
    """

    means: np.ndarray
    sigmas: np.ndarray
    weights: np.ndarray
    log_likelihood: float
    n_iter: int
    converged: bool

    def component_densities(self, x: np.ndarray) -> np.ndarray:
        """Weighted component densities ``w_k N(x | mu_k, sigma_k)``, shape (K, len(x))."""
        x = np.asarray(x, dtype=float)[None, :]
        z = (x - self.means[:, None]) / self.sigmas[:, None]
        return self.weights[:, None] * np.exp(-0.5 * z * z) / (self.sigmas[:, None] * _SQRT_2PI)


def _em(x, n, means, sigmas, weights, min_sigma, max_iter, tol) -> GaussianMixture:
    """EM iterations of a 1D mixture on histogram bins ``x`` with counts ``n``."""
    total = n.sum()
    tiny = np.finfo(float).tiny
    gmm = GaussianMixture(means, sigmas, weights, -np.inf, 0, False)
    previous = -np.inf
    for it in range(1, max_iter + 1):
        dens = gmm.component_densities(x)
        mix = np.maximum(dens.sum(axis=0), tiny)
        loglik = float(np.sum(n * np.log(mix)) / total)
        if loglik - previous < tol:
            return GaussianMixture(gmm.means, gmm.sigmas, gmm.weights, loglik, it, True)
        previous = loglik
        resp = dens / mix * n  # expected counts, (K, B)
        nk = np.maximum(resp.sum(axis=1), tiny)
        means = (resp @ x) / nk
        var = (resp * (x[None, :] - means[:, None]) ** 2).sum(axis=1) / nk
        gmm = GaussianMixture(means, np.maximum(np.sqrt(var), min_sigma), nk / nk.sum(),
                              loglik, it, False)
    dens = gmm.component_densities(x)
    loglik = float(np.sum(n * np.log(np.maximum(dens.sum(axis=0), tiny))) / total)
    return GaussianMixture(gmm.means, gmm.sigmas, gmm.weights, loglik, max_iter, False)


def fit_gmm_histogram(values: np.ndarray, n_components: int = 4,
                      value_range: tuple[float, float] | None = None, bin_width: float = 4.0,
                      max_iter: int = 300, tol: float = 1e-7) -> GaussianMixture:
    """Fit a Gaussian mixture to the histogram of ``values`` by expectation-maximization.

    EM runs on the histogram bins weighted by their counts, so its cost depends on the number
    of bins, not of voxels. Initialization is deterministic, in three variants of which the
    fit with the highest likelihood is kept: means at the ``(k + 0.5) / K`` quantiles (good
    for components of similar weight), means evenly spread between the 0.5% and 99.5%
    quantiles (good for a light component far from the others, such as bone), and means at
    the K highest peaks of the smoothed histogram (CT tissue classes make distinct peaks),
    completed by quantiles. Each sigma starts at half the distance to the nearest other
    mean, weights equal.

    Parameters
    ----------
    values : ndarray
        Attenuation values (any shape; a masked selection of an image).
    n_components : int
        Number of Gaussian components K.
    value_range : (float, float), optional
        Only values in this closed range are fitted (default: all of them).
    bin_width : float
        Histogram bin width in HU. Sigmas are kept at least one bin wide.
    max_iter : int
        Maximum number of EM iterations per initialization.
    tol : float
        Stop when the mean log-likelihood gains less than this.

    Returns
    -------
    GaussianMixture
        Components sorted by mean.
    """
    v = np.asarray(values, dtype=np.float32).ravel()
    if value_range is not None:
        v = v[(v >= value_range[0]) & (v <= value_range[1])]
    if v.size < n_components:
        raise ValueError(f"too few values ({v.size}) to fit {n_components} components")
    lo = float(v.min())
    counts = np.bincount(((v - lo) / bin_width).astype(np.int64)).astype(float)
    keep = counts > 0
    x = (lo + (np.arange(counts.size) + 0.5) * bin_width)[keep]
    n = counts[keep]

    cdf = np.cumsum(n) / n.sum()

    def quantile(q):
        return x[np.minimum(np.searchsorted(cdf, q), x.size - 1)].astype(float)

    k = n_components
    smoothed = ndi.gaussian_filter1d(counts, max(1.0, 10.0 / bin_width))
    peaks = np.flatnonzero((smoothed[1:-1] > smoothed[:-2]) & (smoothed[1:-1] >= smoothed[2:]))
    peaks = peaks[np.argsort(smoothed[peaks + 1])[::-1][:k]] + 1
    peak_means = lo + (np.sort(peaks) + 0.5) * bin_width
    fill = quantile((np.arange(k) + 0.5) / k)
    inits = [fill, np.linspace(*quantile(np.array([0.005, 0.995])), k),
             np.sort(np.concatenate([peak_means, fill[: k - peak_means.size]]))]
    fits = []
    for means in inits:
        gaps = np.diff(means)
        near = np.minimum(np.concatenate([[np.inf], gaps]), np.concatenate([gaps, [np.inf]]))
        sigmas = np.clip(0.5 * near, bin_width, max(x[-1] - x[0], bin_width))
        fits.append(_em(x, n, means, sigmas, np.full(k, 1.0 / k), bin_width, max_iter, tol))
    best = max(fits, key=lambda g: g.log_likelihood)
    order = np.argsort(best.means)
    return GaussianMixture(best.means[order], best.sigmas[order], best.weights[order],
                           best.log_likelihood, best.n_iter, best.converged)


# --- Attenuation-histogram optimization ---------------------------------------------------

@dataclass(frozen=True)
class HistogramNormalization:
    """Piecewise-linear intensity map anchored on soft tissue and the contrast blood pool.

    Below the soft-tissue anchor the map is a shift (slope 1), so fat and air keep their
    spread; from soft tissue upward it is one straight line through both anchors. Iodine
    sets the slope; calcium, which brightens less than iodine at low kVp, comes out somewhat
    darker after the map at 80 kVp than at 120 kVp (still far above the blood pool).

    Attributes
    ----------
    soft_tissue_hu, blood_pool_hu : float
        The anchors found in the image (GMM component means), in HU.
    reference_soft_tissue, reference_blood_pool : float
        Where they land after the map.
    contrast_found : bool
        False when no blood-pool component stood out; the map is then a plain shift.
    """

    soft_tissue_hu: float
    blood_pool_hu: float
    reference_soft_tissue: float
    reference_blood_pool: float
    contrast_found: bool = True

    @property
    def slope(self) -> float:
        """Slope of the map above the soft-tissue anchor."""
        if not self.contrast_found:
            return 1.0
        return ((self.reference_blood_pool - self.reference_soft_tissue)
                / (self.blood_pool_hu - self.soft_tissue_hu))

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Map HU values to normalized intensities (float32)."""
        a = np.asarray(image, dtype=np.float32)
        d = a - np.float32(self.soft_tissue_hu)
        out = np.where(d > 0, d * np.float32(self.slope), d)
        out += np.float32(self.reference_soft_tissue)
        return out.astype(np.float32, copy=False)

    def invert(self, values: np.ndarray) -> np.ndarray:
        """Map normalized intensities back to HU."""
        d = np.asarray(values, dtype=float) - self.reference_soft_tissue
        return np.where(d > 0, d / self.slope, d) + self.soft_tissue_hu


def fit_histogram_normalization(gmm: GaussianMixture, reference_soft_tissue: float = 50.0,
                                reference_blood_pool: float = 400.0,
                                soft_tissue_range: tuple[float, float] = (-30.0, 200.0),
                                min_contrast_hu: float = 100.0,
                                max_blood_pool_hu: float = 1000.0) -> HistogramNormalization:
    """Find the soft-tissue and blood-pool components of a GMM and build the intensity map.

    Soft tissue is the heaviest component whose mean lies in ``soft_tissue_range`` (or the
    one closest to 60 HU when none does). The blood pool is the heaviest component whose
    mean lies at least ``min_contrast_hu`` above soft tissue and at most
    ``max_blood_pool_hu`` (bone and metal lie above it).

    Parameters
    ----------
    gmm : GaussianMixture
        Fitted on the image's attenuation histogram (e.g. -200 to 1200 HU).
    reference_soft_tissue, reference_blood_pool : float
        Target values of the two anchors.
    soft_tissue_range : (float, float)
        Where a soft-tissue (myocardium) component may lie, HU.
    min_contrast_hu : float
        Minimal blood-pool enhancement above soft tissue for a contrast scan.
    max_blood_pool_hu : float
        Highest credible blood-pool mean, HU.

    Returns
    -------
    HistogramNormalization
        With ``contrast_found=False`` when no component qualifies as blood pool.
    """
    means, weights = gmm.means, gmm.weights
    in_soft = (means >= soft_tissue_range[0]) & (means <= soft_tissue_range[1])
    if in_soft.any():
        soft = int(np.flatnonzero(in_soft)[np.argmax(weights[in_soft])])
    else:
        soft = int(np.argmin(np.abs(means - 60.0)))
    soft_hu = float(means[soft])
    bright = (means >= soft_hu + min_contrast_hu) & (means <= max_blood_pool_hu)
    if not bright.any():
        return HistogramNormalization(soft_hu, soft_hu + reference_blood_pool
                                      - reference_soft_tissue, reference_soft_tissue,
                                      reference_blood_pool, contrast_found=False)
    blood = int(np.flatnonzero(bright)[np.argmax(weights[bright])])
    return HistogramNormalization(soft_hu, float(means[blood]), reference_soft_tissue,
                                  reference_blood_pool)


# --- Hessian vesselness --------------------------------------------------------------------

def _symmetric_eigenvalues(a11, a22, a33, a12, a13, a23):
    """Eigenvalues (descending) of symmetric 3x3 matrices given by their six entries.

    Closed form (trigonometric solution of the characteristic cubic), vectorized.
    """
    q = (a11 + a22 + a33) / 3.0
    d11, d22, d33 = a11 - q, a22 - q, a33 - q
    p1 = a12 * a12 + a13 * a13 + a23 * a23
    p = np.sqrt((d11 * d11 + d22 * d22 + d33 * d33 + 2.0 * p1) / 6.0)
    det = (d11 * (d22 * d33 - a23 * a23) - a12 * (a12 * d33 - a23 * a13)
           + a13 * (a12 * a23 - d22 * a13))
    safe = np.where(p > 0, p, 1.0)
    r = np.clip(det / (2.0 * safe ** 3), -1.0, 1.0)
    phi = np.arccos(r) / 3.0
    e1 = q + 2.0 * p * np.cos(phi)
    e3 = q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0)
    e2 = 3.0 * q - e1 - e3
    return e1, e2, e3


def _frangi_at_scale(image, spacing, sigma_mm, candidates, alpha, beta, c, min_intensity):
    """Frangi bright-tube vesselness at one scale, inside the boolean mask ``candidates``.

    Returns the flat indices where the measure was computed and its values there.
    """
    sp = np.asarray(spacing, dtype=float)
    # The central second difference acts like extra Gaussian smoothing of variance h^2/12
    # along its axis; take it off the filter so every axis sees sigma in mm, whatever its
    # voxel size.
    axis_sigma_mm = np.sqrt(np.maximum(sigma_mm ** 2 - sp ** 2 / 12.0, (0.25 * sp) ** 2))
    smooth3d = ndi.gaussian_filter(image, axis_sigma_mm / sp, mode="nearest")
    if min_intensity is not None:
        candidates = candidates & (smooth3d >= min_intensity)
    idx = np.flatnonzero(candidates)
    smooth = smooth3d.ravel()
    strides = np.array([image.shape[1] * image.shape[2], image.shape[2], 1])
    # Neighbour values are read through shifted views of the flat image, all indexed by the
    # same array (counted from the lowest neighbour), without building index arrays.
    base = int(strides.sum())
    low = idx - base

    def at(offset):
        return smooth[base + offset:][low]

    center = at(0)
    # Second derivatives by central differences of the Gaussian-smoothed image, in 1/mm^2,
    # normalized by sigma^2 (mm) so that responses compare across scales.
    norm = np.float32(sigma_mm ** 2)
    diag = [(at(st) + at(-st) - 2.0 * center) * np.float32(norm / sp[ax] ** 2)
            for ax, st in enumerate(strides)]
    # A bright tube (l2, l3 < 0, |l1| <= |l2|) has -trace >= |l3| >= S / sqrt(3), S the
    # Frobenius norm; where -trace < 0.1 c the response is below 1 - exp(-0.015) < 0.015 and
    # is left at 0 without computing the eigenvalues.
    neg = (diag[0] + diag[1] + diag[2]) < -0.1 * c
    idx, low = idx[neg], low[neg]
    hzz, hyy, hxx = (d[neg] for d in diag)
    mixed = []
    for a, b in ((0, 1), (0, 2), (1, 2)):
        sa, sb = strides[a], strides[b]
        mixed.append((at(sa + sb) - at(sa - sb) - at(sb - sa) + at(-sa - sb))
                     * np.float32(norm / (4.0 * sp[a] * sp[b])))
    e1, e2, e3 = _symmetric_eigenvalues(hzz, hyy, hxx, *mixed)
    # Magnitude order |l1| <= |l2| <= |l3| with l2, l3 < 0 means: e2 < 0 and |e1| <= |e2|
    # (then l1 = e1, l2 = e2, l3 = e3).
    tube = (e2 < 0) & (e1 <= -e2)
    idx, l1, l2, l3 = idx[tube], e1[tube], e2[tube], e3[tube]
    ra2 = (l2 / l3) ** 2
    rb2 = l1 * l1 / (l2 * l3)
    s2 = l1 * l1 + l2 * l2 + l3 * l3
    v = ((1.0 - np.exp(-ra2 / (2.0 * alpha ** 2))) * np.exp(-rb2 / (2.0 * beta ** 2))
         * (1.0 - np.exp(-s2 / (2.0 * c ** 2))))
    return idx, v.astype(np.float32)


def vesselness(image: np.ndarray, spacing, sigmas_mm=(0.6, 0.9, 1.3, 1.8), alpha: float = 0.5,
               beta: float = 0.5, c: float = 60.0, min_intensity: float | None = None,
               mask: np.ndarray | None = None, workers: int = 2) -> np.ndarray:
    """Multi-scale Frangi vesselness for bright tubular structures.

    At each scale the image is smoothed by a Gaussian whose width is ``sigma`` mm along
    every axis (``sigma / spacing`` voxels per axis), the Hessian is taken by central
    differences in mm and normalized by ``sigma**2``; Frangi's measure of the eigenvalues
    is kept where the two largest are negative (a bright tube); the result is the maximum
    over scales. A tube of radius r responds most near ``sigma ~ 0.6 r`` to ``0.9 r``.

    Parameters
    ----------
    image : ndarray, shape (z, y, x)
        Intensities (HU or normalized HU).
    spacing : sequence of 3 float
        Voxel size (z, y, x) in mm.
    sigmas_mm : sequence of float
        Gaussian scales in mm. Scales below about one voxel are inaccurate.
    alpha, beta : float
        Frangi's sensitivities to the plate-vs-line ratio and the blob ratio.
    c : float
        Sensitivity to the structure strength (Frobenius norm of the scale-normalized
        Hessian), in image units. A fixed value (not the image's half maximum) keeps the
        output comparable between images of the same intensity scale.
    min_intensity : float, optional
        Skip voxels whose smoothed intensity is below this (the inside of a bright tube is
        bright): a large saving on CCTA. None computes everywhere.
    mask : ndarray of bool, optional
        Only compute inside this mask; 0 elsewhere.
    workers : int
        Scales processed in parallel threads (the filters release the GIL).

    Returns
    -------
    ndarray of float32, same shape as ``image``
        Vesselness in [0, 1]; 0 on the one-voxel border.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3 or min(img.shape) < 3:
        raise ValueError(f"expected a 3D image at least 3 voxels wide, got {img.shape}")
    inner = np.zeros(img.shape, dtype=bool)
    inner[1:-1, 1:-1, 1:-1] = True
    if mask is not None:
        inner &= np.asarray(mask, dtype=bool)
    out = np.zeros(img.size, dtype=np.float32)

    def run(sigma):
        return _frangi_at_scale(img, spacing, float(sigma), inner, alpha, beta, c,
                                min_intensity)

    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        for idx, v in pool.map(run, sigmas_mm):
            out[idx] = np.maximum(out[idx], v)
    return out.reshape(img.shape)


# --- The stage ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PreprocessParams:
    """Settings of :func:`preprocess` (see the functions it calls)."""

    n_components: int = 4
    fit_range_hu: tuple[float, float] = (-200.0, 1200.0)
    bin_width_hu: float = 4.0
    reference_soft_tissue: float = 50.0
    reference_blood_pool: float = 400.0
    sigmas_mm: tuple[float, ...] = (0.6, 0.9, 1.3, 1.8)
    alpha: float = 0.5
    beta: float = 0.5
    c: float = 60.0
    #: Vesselness is computed where the smoothed normalized image is above soft tissue plus
    #: this fraction of the soft-tissue-to-blood-pool step.
    vessel_min_fraction: float = 0.3
    workers: int = 2


@dataclass
class Preprocessed:
    """What :func:`preprocess` returns.

    Attributes
    ----------
    normalized : ndarray of float32
        The image after the histogram optimization.
    vesselness : ndarray of float32
        Frangi vesselness of ``normalized``, in [0, 1].
    gmm : GaussianMixture
        The histogram model.
    normalization : HistogramNormalization
        The intensity map (its ``blood_pool_hu`` is the blood pool found, in HU).
    warnings : list of str
    timings_s : dict
        Seconds per step.
    """

    normalized: np.ndarray
    vesselness: np.ndarray
    gmm: GaussianMixture
    normalization: HistogramNormalization
    warnings: list[str] = field(default_factory=list)
    timings_s: dict = field(default_factory=dict)

    @property
    def blood_pool_hu(self) -> float:
        """Mean attenuation of the contrast blood pool found, in HU."""
        return self.normalization.blood_pool_hu


def fit_attenuation_normalization(values: np.ndarray, params: PreprocessParams = PreprocessParams()
                                  ) -> tuple[GaussianMixture, HistogramNormalization]:
    """The histogram model of ``values`` (HU) and the normalization it gives (stage 1a-b).

    The networks are trained and applied on ``normalization.apply(image)``.
    """
    gmm = fit_gmm_histogram(values, params.n_components, params.fit_range_hu,
                            params.bin_width_hu)
    return gmm, fit_histogram_normalization(gmm, params.reference_soft_tissue,
                                            params.reference_blood_pool)


def preprocess(image: np.ndarray, spacing, mask: np.ndarray | None = None,
               params: PreprocessParams = PreprocessParams()) -> Preprocessed:
    """Normalize a CCTA's attenuation and compute its vesselness.

    Parameters
    ----------
    image : ndarray, shape (z, y, x)
        CCTA in HU.
    spacing : sequence of 3 float
        Voxel size (z, y, x) in mm.
    mask : ndarray of bool, optional
        Region whose histogram is modelled (e.g. a heart crop or the body); default all.
    params : PreprocessParams

    Returns
    -------
    Preprocessed
    """
    timings, warnings = {}, []
    t0 = time.perf_counter()
    values = image if mask is None else np.asarray(image)[np.asarray(mask, dtype=bool)]
    gmm, norm = fit_attenuation_normalization(values, params)
    if not norm.contrast_found:
        warnings.append("low contrast: no contrast-enhanced blood pool found in the "
                        "attenuation histogram")
    timings["gmm"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    normalized = norm.apply(image)
    timings["normalize"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    floor = params.reference_soft_tissue + params.vessel_min_fraction * (
        params.reference_blood_pool - params.reference_soft_tissue)
    ves = vesselness(normalized, spacing, params.sigmas_mm, params.alpha, params.beta,
                     params.c, min_intensity=floor, workers=params.workers)
    timings["vesselness"] = time.perf_counter() - t0
    return Preprocessed(normalized, ves, gmm, norm, warnings, timings)
