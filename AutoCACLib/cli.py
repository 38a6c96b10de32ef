"""The ``autocac`` command line.

Every problem with the user's input ends in one line on stderr (``autocac: error: ...``) and
exit status 2; no traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import __version__
from .errors import AutoCACError, InputError


def _add_scoring_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scoring conventions (standard CSCT defaults)")
    g.add_argument("--threshold", type=float, default=130.0, metavar="HU",
                   help="calcium threshold in HU (default 130)")
    g.add_argument("--connectivity", type=int, choices=(4, 8), default=8,
                   help="in-plane lesion connectivity (default 8: diagonal neighbours join)")
    g.add_argument("--lesions", choices=("2d", "3d"), default="2d",
                   help="lesions per axial slice (2d, default) or connected across slices (3d)")
    g.add_argument("--min-area", type=float, default=1.0, metavar="MM2",
                   help="smallest lesion area in mm^2 (default 1)")
    g.add_argument("--min-pixels", type=int, default=None, metavar="N",
                   help="also require at least N pixels per lesion")
    g.add_argument("--no-slice-normalization", action="store_true",
                   help="do not scale Agatston by slice increment / 3 mm")
    g.add_argument("--kvp-specific", action="store_true",
                   help="scale threshold and weight bins with the image's tube voltage")
    g.add_argument("--kvp", type=float, default=None,
                   help="tube voltage to assume when the image does not say")
    g.add_argument("--mass-calibration", type=float, default=None, metavar="C",
                   help="mg HA/cm^3 per HU, for the mass score")


def _add_device_options(p: argparse.ArgumentParser, models: bool = True) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the networks run (auto: the GPU when there is one)")
    if models:
        p.add_argument("--models", type=Path, default=None, metavar="DIR",
                       help="folder of trained models (default: the shipped Resources/Models)")


def _settings(args):
    from .scoring import ScoringSettings

    if not 0 < args.threshold < 200:
        raise InputError(f"--threshold must be between 0 and 200 HU (weight 2 starts at 200), "
                         f"got {args.threshold:g}")
    return ScoringSettings(
        threshold_hu=args.threshold,
        weight_thresholds_hu=(args.threshold, 200.0, 300.0, 400.0),
        connectivity=args.connectivity, lesion_dim=args.lesions, min_area_mm2=args.min_area,
        min_area_pixels=args.min_pixels,
        normalize_slice_increment=not args.no_slice_normalization,
        kvp_specific=args.kvp_specific, mass_calibration=args.mass_calibration)


def _cmd_score(args) -> int:
    from .calcium_input import read_calcium_labels
    from .results import scores_document, write_json
    from .scoring import score_volume
    from .volume import read_volume

    t0 = time.perf_counter()
    settings = _settings(args)
    image = read_volume(args.image)
    t_read = time.perf_counter()
    labels = read_calcium_labels(args.segmentation, image)
    t_seg = time.perf_counter()
    kvp = args.kvp if image.kvp is None else image.kvp
    score = score_volume(image, labels, settings, kvp=kvp)
    t_score = time.perf_counter()
    doc = scores_document(
        score, timings_s={"read_image": t_read - t0, "read_segmentation": t_seg - t_read,
                          "score": t_score - t_seg},
        inputs={"image": str(args.image), "segmentation": str(args.segmentation),
                "shape": list(image.shape), "spacing_mm": list(image.spacing), "kvp": kvp})
    write_json(doc, args.out)
    return 0


def _cmd_agreement(args) -> int:
    from .agreement import agreement_report
    from .results import write_json

    write_json(agreement_report(args.csv, args.ref, args.test), args.out)
    return 0


def _cmd_phantom(args) -> int:
    from .phantom import write_cohort

    if args.n < 1:
        raise InputError("--n must be at least 1")
    if args.jobs < 1:
        raise InputError("--jobs must be at least 1")
    folders = write_cohort(args.outdir, args.n, args.seed, args.size,
                           progress=lambda i, n, folder: print(f"[{i}/{n}] {folder}",
                                                               file=sys.stderr),
                           jobs=args.jobs, dominance=args.dominance)
    print(f"wrote {len(folders)} case(s) to {args.outdir}")
    return 0


def _cmd_rescan(args) -> int:
    from .agreement import agreement
    from .phantom import rescan_cohort
    from .results import write_csv, write_json

    if args.jobs < 1:
        raise InputError("--jobs must be at least 1")
    rows = rescan_cohort(args.cohort, args.repeat, args.jobs,
                         progress=lambda i, n, name: print(f"[{i}/{n}] {name}", file=sys.stderr))
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "rescan.csv")
    if len(rows) < 2:
        print(f"1 case rescanned (agreement needs 2 or more) -> {args.out / 'rescan.csv'}")
        return 0
    stats = agreement([r["reference_agatston"] for r in rows],
                      [r["rescan_agatston"] for r in rows])
    write_json(stats, args.out / "agreement.json")
    print(f"CSCT rescan vs reference, {stats['n']} cases: CCC {stats['ccc']:.3f}, "
          f"kappa {stats['kappa_linear']:.3f}, category accuracy "
          f"{100 * stats['accuracy']:.1f}% -> {args.out}")
    return 0


def _cmd_run(args) -> int:
    from .batch import run_batch

    failures = run_batch(args.inputs, args.out, args.device, _settings(args), args.models)
    if failures:
        print(f"{failures} case(s) failed: see scores.json / summary.csv", file=sys.stderr)
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, args.device)
    return 0


def _cmd_evaluate(args) -> int:
    from .evaluation import evaluate_cohort

    if args.jobs < 1:
        raise InputError("--jobs must be at least 1")
    evaluate_cohort(args.cohort, args.out, args.device, args.models, args.limit, args.jobs)
    print((args.out / "tables.md").read_text())
    return 0


def _cmd_benchmark(args) -> int:
    from .benchmark import format_benchmark, run_benchmark
    from .results import write_json

    figures = run_benchmark(args.device, args.models)
    if args.out:
        write_json(figures, args.out)
    print(format_benchmark(figures))
    return 0


def _parse_remap(text: str | None) -> dict | None:
    if not text:
        return None
    remap = {}
    for item in text.split(","):
        value, _, name = item.partition("=")
        try:
            remap[int(value)] = name.strip()
        except ValueError:
            raise InputError(f"--label-remap expects VALUE=NAME pairs such as 1=Aorta,2=LAD; "
                             f"got {item!r}") from None
    return remap


def _cmd_train(args) -> int:
    from .batch import TerminalProgress
    from .results import write_json

    report = {}
    if not 0.0 <= args.held_out < 1.0:
        raise InputError("--held-out must be at least 0 and below 1")
    if args.jobs < 1 or args.batch_size < 1:
        raise InputError("--jobs and --batch-size must be at least 1")
    if args.learning_rate is not None and not args.learning_rate > 0:
        raise InputError("--learning-rate must be above 0")
    if args.init_from is not None and args.fit_only:
        raise InputError("--init-from starts network training; it cannot go with --fit-only")
    if args.keep_detection and args.networks_only:
        raise InputError("--keep-detection is part of the fitting step; it cannot go with "
                         "--networks-only")
    if args.keep_detection:
        from .pipeline_training import check_kept_parameters

        check_kept_parameters(args.out)  # before any network training
    if not args.fit_only:
        from .training import LEARNING_RATE, train_models

        report["networks"] = train_models(
            args.sources, args.out, epochs=args.epochs, device=args.device, seed=args.seed,
            progress=TerminalProgress(), label_remap=_parse_remap(args.label_remap),
            steps_per_epoch=args.steps_per_epoch, base=args.base,
            models=tuple(args.network or ("aorta", "coronary")),
            held_out_fraction=args.held_out, batch_size=args.batch_size, jobs=args.jobs,
            init_from=args.init_from, learning_rate=args.learning_rate or LEARNING_RATE)
    if not args.networks_only:
        from .pipeline_training import fit_pipeline

        report["fit"] = fit_pipeline(args.sources, args.out, device=args.device, seed=args.seed,
                                     progress=TerminalProgress(),
                                     keep_detection=args.keep_detection)
    write_json(report, Path(args.out) / "training_report.json")
    print(f"models written to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autocac",
        description="Coronary artery calcium scoring (AutoCAC). See README.md.")
    parser.add_argument("--version", action="version", version=f"autocac {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="the CCTA pipeline: scores from a contrast CT angiogram",
                       description="Finds the aorta, the coronary tree and its calcium in each "
                                   "INPUT (image file, DICOM folder, case folder or folder of "
                                   "cases) and writes scores.json, segmentation.seg.nrrd and "
                                   "report.png; several inputs give one folder per case and "
                                   "summary.csv.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    _add_device_options(p)
    _add_scoring_options(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("demo", help="run the pipeline on a built-in synthetic CCTA")
    p.add_argument("--out", type=Path, default=Path("autocac-demo"), metavar="DIR",
                   help="output folder (default autocac-demo)")
    _add_device_options(p, models=False)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("evaluate", help="pipeline vs CSCT reference on a synthetic cohort",
                       description="Runs the pipeline on every case folder of COHORT (as "
                                   "written by 'autocac phantom') and writes cases.csv, "
                                   "summary.json, tables.md and agreement.png into DIR.")
    p.add_argument("cohort", type=Path)
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    _add_device_options(p)
    p.add_argument("--limit", type=int, default=None, help="only the first N cases")
    p.add_argument("--jobs", type=int, default=1, help="cases run in parallel (processes)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("benchmark", help="per-stage time and peak memory, clinical-size case",
                       description="Runs the pipeline on a synthetic 512x512x280 CCTA "
                                   "(0.4x0.4x0.5 mm) and reports seconds per stage and peak "
                                   "memory.")
    _add_device_options(p)
    p.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    p.set_defaults(func=_cmd_benchmark)

    p = sub.add_parser("train", help="train the networks and fit calibration and scoring",
                       description="Trains the aorta and coronary networks on SOURCES (case "
                                   "folders from 'autocac phantom', or image/label pairs as "
                                   "ImageCAS, ASOCA or nnU-Net ship them), then fits the "
                                   "calibration regressor and the CCTA scoring parameters "
                                   "on the cases with CSCT references. Writes into DIR.")
    p.add_argument("sources", nargs="+", type=Path, metavar="SOURCE")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output folder (Resources/Models to replace the shipped models)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps-per-epoch", type=int, default=100)
    p.add_argument("--base", type=int, default=8, help="network width (first stage channels)")
    p.add_argument("--batch-size", type=int, default=8, help="patches per training iteration")
    p.add_argument("--jobs", type=int, default=1,
                   help="training cases read in parallel (processes, about 3 GB each)")
    p.add_argument("--network", action="append", choices=("aorta", "coronary"),
                   help="train only this network (repeatable; default both); a model already "
                        "in DIR is kept")
    p.add_argument("--held-out", type=float, default=0.2, metavar="FRACTION",
                   help="share of the cases kept out of network training for its Dice "
                        "(default 0.2)")
    p.add_argument("--init-from", type=Path, default=None, metavar="MODELS_DIR",
                   help="fine-tune: start from the weights of the models in this folder "
                        "(Resources/Models for the shipped ones) instead of random ones")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="initial Adam learning rate (default 0.002; about 0.0005 when "
                        "fine-tuning)")
    _add_device_options(p, models=False)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label-remap", default=None, metavar="V=NAME,...",
                   help="name the values of label-map images, e.g. 1=Coronary or 1=Aorta,2=LAD")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--networks-only", action="store_true", help="skip the fitting step")
    g.add_argument("--fit-only", action="store_true",
                   help="only fit calibration and scoring (networks already in DIR)")
    p.add_argument("--keep-detection", action="store_true",
                   help="fitting step: keep the calcium-detection parameters already in DIR "
                        "and start the scoring search from its scoring parameters (refits "
                        "calibration and scoring only; much faster on a large cohort)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("score", help="score the calcium inside a (hand-edited) segmentation",
                       description="Standard (CSCT) calcium scores of the calcium segments "
                                   "(Calcium LM/LAD/LCx/RCA of a .seg.nrrd, or label values "
                                   "1-4 of a label map) on IMAGE.")
    p.add_argument("image", type=Path, help="CT image: NRRD, NIfTI, MetaImage or DICOM folder")
    p.add_argument("segmentation", type=Path, help=".seg.nrrd or label map on the image grid")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout)")
    _add_scoring_options(p)
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("agreement", help="agreement statistics between two score columns",
                       description="CCC, Pearson r, paired t-test, Bland-Altman, weighted "
                                   "kappa and accuracy over the 5 risk categories.")
    p.add_argument("csv", type=Path)
    p.add_argument("--ref", required=True, help="column of reference scores (e.g. CSCT)")
    p.add_argument("--test", required=True, help="column of scores under test (e.g. CCTA)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout)")
    p.set_defaults(func=_cmd_agreement)

    p = sub.add_parser("phantom", help="write synthetic paired CCTA/CSCT cases with known truth")
    p.add_argument("outdir", type=Path)
    p.add_argument("--n", type=int, default=1, help="number of cases (default 1)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    p.add_argument("--size", choices=("clinical", "small"), default="clinical",
                   help="clinical 512x512 matrix, or small for fast tests")
    p.add_argument("--jobs", type=int, default=1,
                   help="cases made in parallel (about 2 GB each for clinical cases); complete "
                        "case folders already in OUTDIR are kept, so a cohort resumes or grows")
    p.add_argument("--dominance", choices=("right", "left"), default=None,
                   help="force every heart's coronary dominance (default: drawn, right 85%%)")
    p.set_defaults(func=_cmd_phantom)

    p = sub.add_parser("rescan", help="scan each synthetic case's patient with a second CSCT: "
                                      "how well the reference agrees with itself",
                       description="Rebuilds each case's patient and scans it with a new draw "
                                   "of the CSCT protocol (pixel, blur, slice phase, noise); "
                                   "writes rescan.csv and agreement.json (reference vs "
                                   "rescan), the ceiling for any CCTA estimate.")
    p.add_argument("cohort", type=Path, help="folder of cases written by 'autocac phantom'")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--repeat", type=int, default=1, help="which rescan draw (default 1)")
    p.add_argument("--jobs", type=int, default=1, help="cases rescanned in parallel")
    p.set_defaults(func=_cmd_rescan)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except AutoCACError as exc:
        if args.debug:
            raise
        print(f"autocac: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autocac: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("autocac: error: out of memory", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
