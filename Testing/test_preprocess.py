"""Preprocessing: histogram GMM, kVp normalization, Hessian vesselness."""

import numpy as np
import pytest
from scipy.special import erfc

from AutoCACLib.preprocess import (PreprocessParams, fit_gmm_histogram,
                                   fit_histogram_normalization, preprocess, vesselness)


def _grid(shape, spacing):
    axes = [np.arange(n) * s for n, s in zip(shape, spacing)]
    return np.meshgrid(*axes, indexing="ij", sparse=True)


def _tube_along_x(shape, spacing, radius_mm, inside=400.0, outside=50.0):
    """A tube with a smooth (partial-volume) edge, so every sampling shows the same object."""
    z, y, _ = _grid(shape, spacing)
    zc, yc = (shape[0] - 1) * spacing[0] / 2, (shape[1] - 1) * spacing[1] / 2
    d = np.sqrt((z - zc) ** 2 + (y - yc) ** 2) + np.zeros(shape)
    return (outside + (inside - outside) * 0.5 * erfc((d - radius_mm) / (0.3 * np.sqrt(2)))
            ).astype(np.float32)


def test_gmm_recovers_known_mixture():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(-90, 25, 40000), rng.normal(45, 20, 60000),
                             rng.normal(380, 35, 30000), rng.normal(900, 80, 5000)])
    gmm = fit_gmm_histogram(values, n_components=4, value_range=(-300, 1300), bin_width=2)
    np.testing.assert_allclose(gmm.means, [-90, 45, 380, 900], atol=6)
    np.testing.assert_allclose(gmm.sigmas, [25, 20, 35, 80], rtol=0.12)
    np.testing.assert_allclose(gmm.weights, np.array([40, 60, 30, 5]) / 135, atol=0.02)
    assert gmm.converged and np.isfinite(gmm.log_likelihood)
    # More components cannot fit worse than one.
    one = fit_gmm_histogram(values, n_components=1, value_range=(-300, 1300), bin_width=2)
    assert gmm.log_likelihood > one.log_likelihood


def _heart_like(kvp_blood, soft, fat, calcium, seed):
    """The same anatomy with kVp-dependent attenuations; returns image and class masks."""
    shape, spacing = (40, 64, 64), (0.5, 0.5, 0.5)
    z, y, x = _grid(shape, spacing)
    heart = ((z - 10) ** 2 / 9 ** 2 + (y - 16) ** 2 / 13 ** 2 + (x - 16) ** 2 / 13 ** 2) < 1
    pool = ((z - 10) ** 2 / 6 ** 2 + (y - 16) ** 2 / 8 ** 2 + (x - 14) ** 2 / 7 ** 2) < 1
    calc = ((z - 10) ** 2 + (y - 16) ** 2 + (x - 24) ** 2) < 1.5 ** 2
    image = np.full(shape, fat, np.float32)
    image[heart] = soft
    image[pool] = kvp_blood
    image[calc] = calcium
    image += np.random.default_rng(seed).normal(0, 20, shape).astype(np.float32)
    return image, {"fat": ~heart, "soft": heart & ~pool & ~calc, "blood": pool, "calc": calc}


def test_normalization_maps_two_kvps_alike():
    # 120 kVp-like and 80 kVp-like: iodine and calcium much brighter at 80 kVp.
    img120, masks = _heart_like(kvp_blood=330, soft=45, fat=-95, calcium=700, seed=2)
    img80, _ = _heart_like(kvp_blood=580, soft=60, fat=-110, calcium=1030, seed=3)
    before = abs(img80[masks["blood"]].mean() - img120[masks["blood"]].mean())
    out = {}
    for name, img in (("120", img120), ("80", img80)):
        pre = preprocess(img, (0.5, 0.5, 0.5), params=PreprocessParams(sigmas_mm=(1.0,)))
        out[name] = pre.normalized
        assert pre.normalization.contrast_found and not pre.warnings
    assert pre.blood_pool_hu == pytest.approx(580, abs=10)
    assert before > 200
    for cls, tol in (("soft", 8), ("blood", 10)):
        a, b = out["120"][masks[cls]].mean(), out["80"][masks[cls]].mean()
        assert abs(a - b) < tol, (cls, a, b)
    assert out["80"][masks["blood"]].mean() == pytest.approx(400, abs=10)
    # Calcium brightens less than iodine at low kVp, so one line cannot align both; it
    # stays well above the blood pool.
    for img in out.values():
        assert img[masks["calc"]].mean() > 1.5 * img[masks["blood"]].mean()


def test_normalization_without_contrast_is_flagged_and_invertible():
    rng = np.random.default_rng(4)
    values = np.concatenate([rng.normal(-100, 20, 5000), rng.normal(45, 15, 8000)])
    norm = fit_histogram_normalization(fit_gmm_histogram(values, 3, (-200, 1200)))
    assert not norm.contrast_found
    assert norm.slope == 1.0
    x = np.array([-500.0, 0.0, 45.0, 300.0, 900.0])
    np.testing.assert_allclose(norm.invert(norm.apply(x)), x, atol=1e-3)


def test_vesselness_prefers_tubes_to_plates_and_blobs():
    spacing = (0.5, 0.5, 0.5)
    shape = (41, 41, 41)
    z, y, x = _grid(shape, spacing)
    c = 10.0
    tube = np.sqrt((z - c) ** 2 + (y - c) ** 2) + 0 * x <= 1.5
    plate = np.abs(z - c) + 0 * y + 0 * x <= 1.5
    blob = np.sqrt((z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2) <= 3.0
    center = (20, 20, 20)
    responses = {}
    for name, m in (("tube", tube), ("plate", plate), ("blob", blob)):
        image = np.where(m, 400.0, 50.0).astype(np.float32)
        responses[name] = vesselness(image, spacing, sigmas_mm=(0.9, 1.3, 1.8))[center]
    assert responses["tube"] > 0.5
    assert responses["plate"] < 0.2 * responses["tube"]
    assert responses["blob"] < 0.2 * responses["tube"]


@pytest.mark.parametrize("radius", [0.8, 1.5, 2.5])
def test_vesselness_scale_in_mm_under_anisotropic_spacing(radius):
    sigmas = (0.4, 0.6, 0.9, 1.3, 1.8, 2.5)
    best, peak = {}, {}
    for spacing in ((0.5, 0.5, 0.5), (0.8, 0.4, 0.5), (0.4, 0.8, 0.5)):
        shape = tuple(int(20 / s) | 1 for s in spacing)
        image = _tube_along_x(shape, spacing, radius)
        center = tuple(n // 2 for n in shape)
        # Large c: the response grows with the structure strength, so its peak picks a scale.
        r = [vesselness(image, spacing, sigmas_mm=(s,), c=300.0, workers=1)[center]
             for s in sigmas]
        best[spacing] = int(np.argmax(r))
        peak[spacing] = vesselness(image, spacing, sigmas_mm=sigmas)[center]
    assert max(best.values()) - min(best.values()) <= 1, best
    assert 0.55 * radius <= sigmas[best[(0.5, 0.5, 0.5)]] <= 0.95 * radius
    iso = peak[(0.5, 0.5, 0.5)]
    for spacing, value in peak.items():
        assert value == pytest.approx(iso, rel=0.1), (spacing, value, iso)


def test_vesselness_mask_and_min_intensity_restrict_work():
    spacing = (0.5, 0.5, 0.5)
    image = _tube_along_x((31, 31, 31), spacing, 1.5)
    full = vesselness(image, spacing, sigmas_mm=(1.0,))
    bright = vesselness(image, spacing, sigmas_mm=(1.0,), min_intensity=200)
    assert bright[15, 15, 15] == pytest.approx(full[15, 15, 15])
    assert np.all(bright[image < 100] == 0)
    mask = np.zeros(image.shape, bool)
    mask[:, :, :10] = True
    masked = vesselness(image, spacing, sigmas_mm=(1.0,), mask=mask)
    assert np.all(masked[:, :, 10:] == 0) and masked[15, 15, 5] > 0
