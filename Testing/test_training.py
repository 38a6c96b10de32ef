"""Training: data discovery, label handling, sampling, a tiny run, saved weights."""

import json

import numpy as np
import pytest

import torch  # noqa: E402  (installed by scripts/setup)

from AutoCACLib.errors import InputError  # noqa: E402
from AutoCACLib.inference import (AORTA_CLASSES, BINARY_CLASSES, VESSEL_CLASSES,  # noqa: E402
                                  load_model, prepare_input, segment_networks,
                                  stack_slices)
from AutoCACLib.networks import build_network  # noqa: E402
from AutoCACLib.segmentation_io import write_segmentation  # noqa: E402
from AutoCACLib.training import (UNNAMED_CORONARY, default_configs, dice,  # noqa: E402
                                 dice_ce_loss, find_cases, load_case, prepare_case,
                                 random_affine, round_to_float16, sample_batch, save_model, train_models,
                                 train_network)
from AutoCACLib.volume import Volume, write_volume  # noqa: E402

TINY = {"aorta": {"patch": 32}, "coronary": {"patch": 32, "kwargs": {"base": 4, "depth": 3}}}


def tube_case(seed=0, shape=(24, 64, 64), spacing=(1.0, 0.7, 0.7)):
    """A small CT with an aorta (a wide tube) and two coronaries (thin tubes), and labels."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij")
    labels = np.zeros(shape, np.uint8)
    labels[(y - 14) ** 2 + (x - 14) ** 2 < 7.0 ** 2] = 1                                  # aorta
    lad = (y - 28 - 0.2 * z - rng.uniform(-2, 2)) ** 2 + (x - 30) ** 2 < 1.6 ** 2
    labels[lad] = 3                                                                     # LAD
    labels[(y - 12) ** 2 + (x - 34 + 0.2 * z) ** 2 < 1.6 ** 2] = 5                        # RCA
    labels[lad & (z > 8) & (z < 11)] = 7                                                # calcium
    hu = np.select([labels == 7, labels > 0], [900.0, rng.uniform(350, 500)], -50.0 + 0 * z)
    hu += rng.normal(0, 25, shape)
    hu[:, :, :3] = -1000.0  # air at the side: a CT in HU
    return Volume(hu.astype(np.float32), spacing), labels


def write_as(volume, path):
    """Write an image under any name (ITK takes ``x.img.nii.gz`` for Analyze when writing)."""
    tmp = path.parent / ("tmp" + path.name[path.name.index("."):].replace(".img", "")
                         .replace(".label", ""))
    write_volume(volume, tmp)
    tmp.rename(path)


def write_case_folder(folder, seed):
    image, labels = tube_case(seed)
    write_volume(image, folder / "ccta.nrrd")
    write_segmentation(folder / "labels.seg.nrrd", labels, image)
    return image, labels


def test_finds_imagecas_asoca_nnunet_and_autocac_layouts(tmp_path):
    image, labels = tube_case()
    lab = Volume((labels > 1).astype(np.uint8), image.spacing)
    write_as(image, tmp_path / "imagecas" / "1.img.nii.gz")
    write_as(lab, tmp_path / "imagecas" / "1.label.nii.gz")
    write_as(image, tmp_path / "imagecas" / "2.img.nii.gz")  # no label: ignored
    for group in ("Normal", "Diseased"):
        write_volume(image, tmp_path / "asoca" / group / "CTCA" / f"{group}_1.nrrd")
        write_volume(lab, tmp_path / "asoca" / group / "Annotations" / f"{group}_1.nrrd")
    write_volume(image, tmp_path / "nnunet" / "imagesTr" / "c7_0000.nii.gz")
    write_volume(lab, tmp_path / "nnunet" / "labelsTr" / "c7.nii.gz")
    write_case_folder(tmp_path / "cohort" / "case_000", 0)
    found = find_cases([tmp_path / "imagecas", tmp_path / "asoca", tmp_path / "nnunet",
                        tmp_path / "cohort"])
    assert [c.name for c in found] == ["1", "Diseased_1", "Normal_1", "c7", "case_000"]
    pair = find_cases((tmp_path / "imagecas" / "1.img.nii.gz",
                       tmp_path / "imagecas" / "1.label.nii.gz"))
    assert pair == [found[0]]
    with pytest.raises(InputError):
        find_cases(tmp_path / "missing")
    with pytest.raises(InputError):
        find_cases(tmp_path / "imagecas" / "none")


def test_find_cases_follows_folder_links_once(tmp_path):
    write_case_folder(tmp_path / "made" / "case_000", 0)
    (tmp_path / "mix").mkdir()
    (tmp_path / "mix" / "a_case").symlink_to(tmp_path / "made" / "case_000")
    (tmp_path / "mix" / "loop").symlink_to(tmp_path / "mix")  # a link cycle ends
    found = find_cases(tmp_path / "mix")
    assert [c.name for c in found] == ["a_case"]


def test_labels_binary_by_default_remapped_or_named(tmp_path):
    image, labels = tube_case()
    write_as(image, tmp_path / "a.img.nrrd")
    write_as(Volume(np.where(labels == 3, 2, labels > 1).astype(np.uint8), image.spacing),
             tmp_path / "a.label.nrrd")
    case = find_cases(tmp_path)[0]
    _, binary = load_case(case)
    np.testing.assert_array_equal(binary == UNNAMED_CORONARY, labels > 1)
    _, named = load_case(case, {2: "LAD", 1: "RCA"})
    assert set(np.unique(named)) == {0, 3, 5}
    with pytest.raises(InputError, match="segment name"):
        load_case(case, {1: "Left ventricle"})
    write_case_folder(tmp_path / "c", 1)
    _, seg_labels = load_case(find_cases(tmp_path / "c")[0])
    np.testing.assert_array_equal(seg_labels, tube_case(1)[1])
    write_as(Volume(np.zeros((3, 4, 5), np.uint8), image.spacing), tmp_path / "a.label.nrrd")
    with pytest.raises(InputError, match="shape"):
        load_case(case)


def test_sampling_is_class_balanced_and_seeded():
    image, labels = tube_case()
    config = default_configs(VESSEL_CLASSES)["coronary"]
    config.patch, config.positive_fraction = 32, 1.0
    prepared = prepare_case(config, "t", image, labels, "hu")
    assert set(prepared.foreground) == {2, 4}  # LAD and RCA present
    x, y = sample_batch([prepared], config, 16, np.random.default_rng(0))
    assert x.shape == (16, 5, 32, 32) and y.shape == (16, 32, 32)
    assert all((patch > 0).any() for patch in y)
    x2, _ = sample_batch([prepared], config, 16, np.random.default_rng(0))
    np.testing.assert_array_equal(x, x2)


def test_random_affine_keeps_labels_on_their_pixels():
    x = torch.zeros(3, 2, 16, 16)
    x[:, :, 4:12, 4:12] = 1.0
    y = (x[:, 0] > 0).long()
    xa, ya = random_affine(x, y, np.random.default_rng(0))
    assert xa.shape == x.shape and ya.shape == y.shape and ya.dtype == torch.long
    assert ((xa[:, 0] > 0.5) == (ya > 0)).float().mean() > 0.95
    assert not torch.equal(ya, y)


def test_loss_low_for_right_answer_high_for_wrong():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:5, 2:5] = 1
    right = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 20
    assert float(dice_ce_loss(right, target)) < 0.01
    assert float(dice_ce_loss(-right, target)) > 1.5
    assert dice(np.ones(4, bool), np.ones(4, bool)) == 1.0 and dice(np.zeros(2), np.zeros(2)) is None


def _tiny_config():
    config = default_configs(VESSEL_CLASSES)["coronary"]
    config.patch, config.kwargs = 32, {"base": 4, "depth": 3}
    return config


def test_tiny_training_lowers_loss_is_deterministic_and_saves_what_it_predicts(tmp_path):
    config = _tiny_config()
    cases = [prepare_case(config, str(s), *tube_case(s), "hu") for s in range(2)]
    device = torch.device("cpu")
    net, losses = train_network(config, cases, 60, 4, device, seed=1)
    assert np.mean(losses[-10:]) < 0.9 * np.mean(losses[:10])
    assert train_network(config, cases, 8, 4, device, seed=1)[1] == \
        train_network(config, cases, 8, 4, device, seed=1)[1]
    round_to_float16(net)
    meta = {"name": "coronary", "task": "test", "architecture": config.architecture,
            "kwargs": {"in_channels": 5, "n_classes": 5, **config.kwargs},
            "classes": list(config.classes), "context_slices": 2,
            "spacing_mm": list(config.spacing_mm),
            "normalization": {"input": "hu", "low": -300.0, "high": 900.0},
            "training": {"held_out_dice": {"LAD": 0.5}, "parameters": 1, "data": "tubes",
                         "data_kind": "tubes", "n_train_cases": 2, "n_held_out_cases": 0,
                         "held_out": False, "seed": 1, "epochs": 1, "steps_per_epoch": 60,
                         "batch_size": 4, "patch": 32, "learning_rate": 2e-3,
                         "final_loss": losses[-1], "runtime_s": 1.0, "device": "cpu",
                         "threads": 1, "platform": "test", "torch": torch.__version__,
                         "autocac": "test"}}
    files = save_model(net, meta, tmp_path)
    loaded = load_model("coronary", tmp_path, device="cpu")
    image, _ = tube_case(5)
    x = prepare_input(meta, image.array, image.spacing)
    with torch.no_grad():
        direct = torch.softmax(net(torch.from_numpy(stack_slices(x, [10, 11], 2))), 1).numpy()
    np.testing.assert_allclose(loaded.predict(x)[:, 10:12].transpose(1, 0, 2, 3), direct,
                               atol=1e-5)
    assert "Held-out Dice" in files["card"].read_text()


def test_default_weights_are_small(tmp_path):
    sizes = {}
    for name, config in default_configs(VESSEL_CLASSES).items():
        net = build_network(config.architecture, in_channels=2 * config.context + 1,
                            n_classes=len(config.classes), **config.kwargs)
        path = tmp_path / f"{name}.pt"
        torch.save({k: v.half() if v.is_floating_point() else v
                    for k, v in net.state_dict().items()}, path)
        sizes[name] = path.stat().st_size
    assert all(size < 5e6 for size in sizes.values()), sizes


def test_train_models_end_to_end_on_case_folders(tmp_path):
    for seed in range(3):
        write_case_folder(tmp_path / "cohort" / f"case_{seed:03d}", seed)
    messages = []
    metrics = train_models(tmp_path / "cohort", tmp_path / "models", epochs=2,
                           device="cpu", seed=0, progress=lambda m, f: messages.append(f),
                           steps_per_epoch=5, batch_size=2, base=4, overrides=TINY,
                           held_out_fraction=0.34)
    assert metrics["aorta"]["n_held_out_cases"] == 1 and metrics["coronary"]["n_train_cases"] == 2
    assert set(metrics["coronary"]["held_out_dice"]) == {*VESSEL_CLASSES[1:], "Coronary (all vessels)"}
    assert set(metrics["pipeline_dice"]) >= {"Aorta", "LAD"}
    assert messages[-1] == 1.0 and messages == sorted(messages)
    for name, classes in (("aorta", AORTA_CLASSES), ("coronary", VESSEL_CLASSES)):
        meta = json.loads((tmp_path / "models" / f"{name}.json").read_text())
        assert tuple(meta["classes"]) == classes and meta["training"]["seed"] == 0
        assert (tmp_path / "models" / f"{name}.md").is_file()
    image, _ = tube_case(9)
    seg = segment_networks(image, models_dir=tmp_path / "models", device="cpu")
    assert seg.coronary.shape == image.shape


def test_cli_trains_one_network_and_keeps_the_other(tmp_path, capsys):
    from AutoCACLib.cli import main

    for seed in range(3):
        write_case_folder(tmp_path / "cohort" / f"case_{seed:03d}", seed)
    models = tmp_path / "models"
    models.mkdir()
    (models / "aorta.pt").write_bytes(b"an aorta model trained before")
    assert main(["train", str(tmp_path / "cohort"), "--out", str(models), "--network",
                 "coronary", "--networks-only", "--held-out", "0.34", "--epochs", "1",
                 "--steps-per-epoch", "2", "--base", "4", "--device", "cpu",
                 "--batch-size", "3", "--jobs", "2"]) == 0
    meta = json.loads((models / "coronary.json").read_text())
    assert meta["training"]["n_train_cases"] == 2 and meta["training"]["n_held_out_cases"] == 1
    assert meta["training"]["batch_size"] == 3
    assert (models / "aorta.pt").read_bytes() == b"an aorta model trained before"
    report = json.loads((models / "training_report.json").read_text())
    assert set(report["networks"]) == {"coronary"}
    assert main(["train", str(tmp_path / "cohort"), "--out", str(models), "--held-out",
                 "1.5"]) == 2
    assert "--held-out" in capsys.readouterr().err


def test_fine_tuning_starts_from_the_given_models_and_checks_they_fit(tmp_path):
    from AutoCACLib.cli import main

    for seed in range(2):
        write_case_folder(tmp_path / "cohort" / f"case_{seed:03d}", seed)
    common = dict(epochs=1, device="cpu", steps_per_epoch=2, batch_size=2, base=4,
                  overrides=TINY, held_out_fraction=0.0, models=("coronary",))
    train_models(tmp_path / "cohort", tmp_path / "first", seed=1, **common)
    first = torch.load(tmp_path / "first" / "coronary.pt")
    # A vanishing learning rate keeps the starting weights: they come from the given models.
    train_models(tmp_path / "cohort", tmp_path / "tuned", seed=2, init_from=tmp_path / "first",
                 learning_rate=1e-12, **common)
    tuned = torch.load(tmp_path / "tuned" / "coronary.pt")
    weights = [k for k in first if "running" not in k and "num_batches" not in k]
    assert weights and all(torch.equal(first[k], tuned[k]) for k in weights), \
        [k for k in weights if not torch.equal(first[k], tuned[k])]
    scratch = torch.load(train_models(tmp_path / "cohort", tmp_path / "scratch", seed=2,
                                      learning_rate=1e-12, **common)
                         ["coronary"]["files"]["weights"])
    assert not all(torch.equal(first[k], scratch[k]) for k in weights)
    meta = json.loads((tmp_path / "tuned" / "coronary.json").read_text())
    assert meta["training"]["initialized_from"]["models_dir"] == str(tmp_path / "first")
    assert meta["training"]["learning_rate"] == 1e-12
    assert "Initialized from" in (tmp_path / "tuned" / "coronary.md").read_text()
    with pytest.raises(InputError, match="kwargs"):
        train_models(tmp_path / "cohort", tmp_path / "wider", init_from=tmp_path / "first",
                     **{**common, "overrides": {"coronary": {"patch": 32}}})
    assert main(["train", str(tmp_path / "cohort"), "--out", str(tmp_path / "x"),
                 "--init-from", str(tmp_path / "missing"), "--network", "coronary",
                 "--networks-only", "--device", "cpu"]) != 0
    assert not (tmp_path / "x" / "coronary.pt").exists()


def test_cases_read_in_parallel_train_the_same_network(tmp_path):
    for seed in range(3):
        write_case_folder(tmp_path / "cohort" / f"case_{seed:03d}", seed)
    losses = []
    for jobs in (1, 2):
        metrics = train_models(tmp_path / "cohort", tmp_path / f"models{jobs}", epochs=1,
                               device="cpu", seed=3, steps_per_epoch=4, batch_size=2, base=4,
                               overrides=TINY, held_out_fraction=0.0, jobs=jobs)
        losses.append(metrics["coronary"]["final_loss"])
    assert losses[0] == losses[1]


def test_binary_labels_train_a_binary_coronary_model_and_skip_the_aorta(tmp_path):
    for seed in range(2):
        image, labels = tube_case(seed)
        write_as(image, tmp_path / "data" / f"{seed}.img.nii.gz")
        write_as(Volume((labels > 1).astype(np.uint8), image.spacing),
                 tmp_path / "data" / f"{seed}.label.nii.gz")
    metrics = train_models(tmp_path / "data", tmp_path / "models", epochs=1, device="cpu",
                           steps_per_epoch=3, batch_size=2, base=4, overrides=TINY)
    assert "skipped" in metrics["aorta"]
    meta = json.loads((tmp_path / "models" / "coronary.json").read_text())
    assert tuple(meta["classes"]) == BINARY_CLASSES
    assert set(metrics["coronary"]["held_out_dice"]) == {"Coronary"}


@pytest.mark.slow
def test_short_training_on_phantom_cases(tmp_path):
    from AutoCACLib import phantom
    for seed in range(2):
        case = phantom.make_case(seed, size="small")
        write_volume(case.ccta, tmp_path / f"case_{seed}" / "ccta.nrrd")
        write_segmentation(tmp_path / f"case_{seed}" / "labels.seg.nrrd", case.ccta_labels,
                           case.ccta)
    metrics = train_models(tmp_path, tmp_path / "models", epochs=1, device="cpu",
                           steps_per_epoch=3, batch_size=2, base=4, overrides=TINY,
                           held_out_fraction=0.5)
    assert metrics["coronary"]["n_held_out_cases"] == 1
    assert metrics["pipeline_dice"]["Aorta"] is not None
