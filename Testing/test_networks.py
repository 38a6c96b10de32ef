"""Networks and inference: shapes, determinism, 2.5D stacking, resampling, devices."""

import subprocess
import sys

import numpy as np
import pytest

import torch  # noqa: E402  (installed by scripts/setup)

from AutoCACLib.errors import InputError  # noqa: E402
from AutoCACLib.inference import (AORTA_CLASSES, VESSEL_CLASSES, MissingModelError, Model,  # noqa: E402
                                  grid_geometry, grid_shape, heart_box_from_mask, load_model,
                                  prepare_input, resample_linear, resample_majority,
                                  resample_nearest, resolve_device, segment_networks,
                                  stack_slices, upsample_labels, window)
from AutoCACLib.networks import build_network  # noqa: E402
from AutoCACLib.volume import Volume  # noqa: E402

NETS = [("vnet2d", {"base": 4, "depth": 3}), ("deeplabv3plus", {"base": 4})]


def tiny_model(architecture, kwargs, classes, k, spacing, seed=0):
    """An untrained model with metadata, as load_model returns it."""
    torch.manual_seed(seed)
    kwargs = dict(kwargs, in_channels=2 * k + 1, n_classes=len(classes))
    meta = {"name": architecture, "architecture": architecture, "kwargs": kwargs,
            "classes": list(classes), "context_slices": k, "spacing_mm": list(spacing),
            "normalization": {"input": "hu", "low": -300.0, "high": 900.0}}
    return Model(build_network(architecture, **kwargs).eval(), meta, torch.device("cpu"))


@pytest.mark.parametrize("architecture,kwargs", NETS)
@pytest.mark.parametrize("size", [(37, 53), (16, 16), (9, 70)])
def test_output_shape_and_classes_for_odd_sizes(architecture, kwargs, size):
    net = build_network(architecture, in_channels=3, n_classes=5, **kwargs)
    for mode in (net.train, net.eval):
        mode()
        assert net(torch.zeros(2, 3, *size)).shape == (2, 5, *size)


@pytest.mark.parametrize("architecture,kwargs", NETS)
def test_same_seed_same_network_and_repeatable_prediction(architecture, kwargs):
    x = torch.rand(2, 3, 40, 40)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        net = build_network(architecture, in_channels=3, n_classes=2, **kwargs).eval()
        with torch.no_grad():
            outs += [net(x), net(x)]
    for out in outs[1:]:
        assert torch.equal(out, outs[0])


def test_stack_slices_repeats_edge_slices():
    image = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 2, 3), np.float32)
    stack = stack_slices(image, [0, 2, 4], k=2)
    assert stack.shape == (3, 5, 2, 3)
    np.testing.assert_array_equal(stack[:, :, 0, 0], [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4],
                                                       [2, 3, 4, 4, 4]])
    np.testing.assert_array_equal(stack_slices(image[:1], [0], 1)[0, :, 0, 0], [0, 0, 0])


def test_resample_linear_matches_torch_when_enlarging_and_keeps_means_when_shrinking():
    rng = np.random.default_rng(0)
    a = rng.random((6, 7, 9)).astype(np.float32)
    ours = resample_linear(a, (11, 14, 20))
    ref = torch.nn.functional.interpolate(torch.from_numpy(a)[None, None], size=(11, 14, 20),
                                          mode="trilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    big = rng.random((30, 40, 40)).astype(np.float32)
    small = resample_linear(big, (10, 10, 10))
    assert small.shape == (10, 10, 10)
    assert abs(small.mean() - big.mean()) < 0.01
    assert small.std() < big.std() / 3  # anti-aliased: noise averages out
    np.testing.assert_allclose(resample_linear(np.full((5, 8, 8), 7.0), (3, 3, 3)), 7.0, rtol=1e-6)


def test_resample_region_equals_part_of_whole():
    a = np.random.default_rng(1).random((5, 6, 7)).astype(np.float32)
    region = (slice(2, 9), slice(1, 4), slice(5, 14))
    whole = resample_linear(a, (10, 12, 14))
    np.testing.assert_allclose(resample_linear(a, (10, 12, 14), region), whole[region], atol=1e-6)
    labels = (a > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(resample_nearest(labels, (10, 12, 14), region),
                                  resample_nearest(labels, (10, 12, 14))[region])


def test_label_round_trip_keeps_labels_and_geometry():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 5, (7, 9, 11)).astype(np.uint8)
    vol = Volume(labels, (0.5, 0.4, 0.4), origin=(10.0, -20.0, 30.0),
                 direction=np.diag([1.0, -1.0, 1.0]))
    fine_shape = (14, 27, 22)
    fine = grid_geometry(vol, fine_shape)
    back = grid_geometry(fine, vol.shape)
    assert back.same_geometry(vol)
    np.testing.assert_array_equal(resample_nearest(resample_nearest(labels, fine_shape),
                                                   labels.shape), labels)
    # Voxel centres: the fine grid's first voxel lies half a fine voxel inside the image edge.
    edge = np.array(vol.origin) - vol.direction @ (np.array(vol.spacing[::-1]) / 2)
    fine_edge = np.array(fine.origin) - fine.direction @ (np.array(fine.spacing[::-1]) / 2)
    np.testing.assert_allclose(edge, fine_edge)
    assert grid_shape((280, 512, 512), (0.5, 0.4, 0.4), (2.0, 1.2, 1.2)) == (70, 171, 171)


def test_majority_keeps_thin_class_when_asked():
    labels = np.zeros((4, 12, 12), np.uint8)
    labels[:, 4, 4] = 1  # a one-voxel line through coarse voxel centres: 1/9 of the weight
    assert not resample_majority(labels, (4, 4, 4), 2).any()
    assert resample_majority(labels, (4, 4, 4), 2, {1: 0.1})[:, 1, 1].all()


def test_upsampled_labels_follow_probabilities():
    p = np.zeros((3, 2, 4, 4), np.float32)
    p[0] = 1.0
    p[:, :, 1:3, 1:3] = np.array([0.1, 0.3, 0.6])[:, None, None, None]
    labels, foreground = upsample_labels(p, (4, 8, 8))
    assert labels.shape == foreground.shape == (4, 8, 8)
    assert set(np.unique(labels)) == {0, 2}
    assert labels[:, 3:5, 3:5].all() and not labels[:, 0].any()
    only_first, _ = upsample_labels(p, (4, 8, 8), classes=[1])
    assert not only_first.any()  # 0.3 < 0.5


def test_heart_box_from_coarse_mask():
    mask = np.zeros((10, 10, 10), bool)
    mask[4:6, 2:4, 7] = True
    mask[0, 0, 0] = True  # a speck, below the size limit
    box = heart_box_from_mask(mask, (20, 40, 40), (1.0, 0.5, 0.5), margin_mm=1.0, min_voxels=2)
    assert box == (slice(7, 13), slice(6, 18), slice(26, 34))
    assert heart_box_from_mask(np.zeros((3, 3, 3), bool), (3, 3, 3), (1, 1, 1), 1.0) is None


def test_window():
    np.testing.assert_allclose(window(np.array([-1000.0, -300, 300, 900, 2000]), -300, 900),
                               [0, 0, 0.5, 1, 1])


def test_cuda_without_gpu_is_an_input_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(InputError, match="cuda") as err:
        resolve_device("cuda")
    assert "\n" not in str(err.value)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(InputError):
        resolve_device("tpu")


def test_missing_weights_give_one_line_error(tmp_path):
    with pytest.raises(MissingModelError, match="coronary") as err:
        load_model("coronary", tmp_path, device="cpu")
    assert "\n" not in str(err.value)


def test_segment_networks_shapes_on_odd_volume():
    rng = np.random.default_rng(0)
    vol = Volume(rng.normal(0, 300, (21, 45, 39)).astype(np.float32), (1.0, 0.7, 0.7))
    models = {"aorta": tiny_model("deeplabv3plus", {"base": 4}, AORTA_CLASSES, 1, (2.0, 1.2, 1.2)),
              "coronary": tiny_model("vnet2d", {"base": 4, "depth": 3}, VESSEL_CLASSES, 2,
                                     (0.8, 0.6, 0.6))}
    seg = segment_networks(vol, models=models)
    assert seg.aorta.shape == seg.coronary.shape == seg.coronary_probability.shape == vol.shape
    assert seg.aorta.dtype == bool and seg.coronary.max() < len(VESSEL_CLASSES)
    assert set(np.unique(seg.labelmap())) <= {0, 1, 2, 3, 4, 5}
    again = segment_networks(vol, models=models)
    np.testing.assert_array_equal(again.coronary, seg.coronary)
    x = prepare_input(models["coronary"].meta, vol.array, vol.spacing)
    assert x.shape == (26, 52, 46) and 0 <= x.min() and x.max() <= 1


def test_importing_the_library_does_not_import_torch():
    code = ("import sys, AutoCACLib, AutoCACLib.inference, AutoCACLib.training, "
            "AutoCACLib.networks; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cpu_threads_follow_omp_num_threads(monkeypatch):
    # A process that shares the CPU (a worker of evaluate --jobs, a training run beside
    # another job) asks for fewer threads; torch must not be given more than that.
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        resolve_device("cpu")
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        resolve_device("cpu")
        assert torch.get_num_threads() >= 1
    finally:
        torch.set_num_threads(before)
