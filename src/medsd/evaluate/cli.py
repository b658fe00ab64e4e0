"""`medsd evaluate ...` subcommands: one per measure, plus `report`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _write_json(result: dict, path: Path | None) -> None:
    text = json.dumps(result, indent=2)
    if path is None:
        print(text)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")


def _channels_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--channels", choices=["auto", "1", "3"], default="auto",
                        help="1 = greyscale, 3 = colour (histopathology, packed MRI); auto: colour when the real "
                        "(reference) images are colour, else greyscale as before")


def _channels(args: argparse.Namespace) -> int | None:
    return None if args.channels == "auto" else int(args.channels)


def _add_sets(parser: argparse.ArgumentParser, generated: bool = True) -> None:
    parser.add_argument("--real", type=Path, required=True, help="real images: a folder or a CheXpert-style folder")
    if generated:
        parser.add_argument("--generated", type=Path, required=True, help="generated folder (generation_results.csv)")
    parser.add_argument("--size", type=int, default=64, help="resize every image to SIZE x SIZE (default 64)")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many images per set")
    parser.add_argument("--json", type=Path, default=None, help="write the result here (default: print it)")
    _channels_option(parser)


def _add_weights(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--phantom-classifier", type=Path, default=None, help="phantom reference classifier folder")
    parser.add_argument("--inception-weights", type=Path, default=None,
                        help="local Inception-v3 FID weights (torch-fidelity .pth or .safetensors)")
    parser.add_argument("--xrv-weights", type=Path, default=None,
                        help="local torchxrayvision DenseNet-121 (all) weights as .safetensors")


def run_fid(args: argparse.Namespace) -> int:
    """FID, KID and PRDC in each requested feature space."""
    from medsd.evaluate import features as feats
    from medsd.evaluate.fid import compare_features
    from medsd.evaluate.io import load_image_folder

    real, _ = load_image_folder(args.real, args.size, args.limit, _channels(args))
    gen, _ = load_image_folder(args.generated, args.size, args.limit, real.shape[1])
    result = {}
    for space in args.space or ["phantom"]:
        extractor = feats.make_extractor(space, args.phantom_classifier, args.inception_weights, args.xrv_weights)
        real_features = feats.extract_features(extractor, real)
        result[space] = compare_features(real_features, feats.extract_features(extractor, gen))
    _write_json(result, args.json)
    return 0


def run_diversity(args: argparse.Namespace) -> int:
    """MS-SSIM among images generated from the same prompt."""
    from medsd.evaluate.diversity import ms_ssim_diversity
    from medsd.evaluate.io import load_image_folder, prompt_groups

    gen, frame = load_image_folder(args.generated, args.size, args.limit, _channels(args))
    _write_json(ms_ssim_diversity(gen, prompt_groups(frame)), args.json)
    return 0


def run_faithfulness(args: argparse.Namespace) -> int:
    """Classifier scores of generated images against their prompts' labels."""
    from medsd.errors import MedsdError
    from medsd.evaluate import features as feats
    from medsd.evaluate.faithfulness import evaluate_faithfulness
    from medsd.evaluate.io import labels_for, load_image_folder

    if args.phantom_classifier is not None:
        scorer = feats.phantom_scorer(feats.load_phantom_classifier(args.phantom_classifier))
    elif args.xrv_weights is not None:
        scorer = feats.xrv_scorer(args.xrv_weights)
    else:
        raise MedsdError("faithfulness needs a classifier: pass --phantom-classifier DIR or --xrv-weights FILE")
    images, frame = load_image_folder(args.generated, args.size, args.limit)
    result = evaluate_faithfulness(scorer, images, labels_for(frame, scorer.findings), args.threshold)
    _write_json(result, args.json)
    return 0


def run_memorization(args: argparse.Namespace) -> int:
    """Nearest training image of every generated image; share of near-copies."""
    from medsd.evaluate import features as feats
    from medsd.evaluate.io import load_image_folder
    from medsd.evaluate.privacy import memorization

    train, _ = load_image_folder(args.train, args.size, channels=_channels(args))
    gen, _ = load_image_folder(args.generated, args.size, args.limit, train.shape[1])
    extractor = None
    if args.space:
        extractor = feats.make_extractor(args.space[0], args.phantom_classifier, args.inception_weights,
                                         args.xrv_weights)
    result = memorization(gen, train, extractor, args.cosine_threshold, args.ssim_threshold)
    print(f"{result['n_flagged']} of {result['n_generated']} generated images flagged as near-copies")
    _write_json(result, args.json)
    return 0


def run_augment(args: argparse.Namespace) -> int:
    """Train classifiers on real / synthetic / mixed data; per-label AUC mean ± std."""
    from medsd.config_base import load_yaml_section, validate
    from medsd.evaluate.augment import AugmentConfig, augmentation_table, run_augmentation
    from medsd.evaluate.io import labels_for, load_image_folder

    if args.config is not None:
        config = load_yaml_section(args.config, "augment", AugmentConfig, args.set)
    else:
        from medsd.config_base import apply_overrides

        config = validate(AugmentConfig, apply_overrides({}, args.set).get("augment", {}), "--set")
    findings = [f.strip() for f in args.findings.split(",")]
    sets, channels = [], _channels(args)
    for path in (args.real, args.synthetic, args.test, args.val):
        if path is None:
            sets.append(None)
            continue
        images, frame = load_image_folder(path, config.image_size, args.limit, channels)
        channels = images.shape[1]  # the real training set decides grey or colour for all sets
        sets.append((images, labels_for(frame, findings)))
    result = run_augmentation(sets[0], sets[1], sets[2], findings, config, val=sets[3])
    print(augmentation_table(result))
    _write_json(result, args.json)
    return 0


def run_reader_study(args: argparse.Namespace) -> int:
    """Make a blinded reader study kit, or score a filled answer sheet."""
    from medsd.errors import MedsdError
    from medsd.evaluate.reader_study import make_reader_study, score_reader_study

    if args.answers is not None:
        if args.key is None:
            raise MedsdError("scoring needs --key KEY.csv (written to OUT/key/key.csv by the kit)")
        _write_json(score_reader_study(args.key, args.answers), args.json)
        return 0
    if args.real is None or args.generated is None or args.out is None:
        raise MedsdError("making a kit needs --real, --generated and --out (or --answers + --key to score)")
    paths = make_reader_study(args.real, args.generated, args.out, args.n, args.size, args.seed)
    print(f"wrote {paths['cases']} and {paths['sheet']}; keep {paths['key']} away from readers")
    return 0


def run_report(args: argparse.Namespace) -> int:
    """Every measure the inputs allow, into OUT/metrics.json and OUT/report.html."""
    from medsd.evaluate.suite import ReportInputs, build_report

    inputs = ReportInputs(
        real=args.real, generated=args.generated, out=args.out, train=args.train, spaces=args.space,
        phantom_classifier=args.phantom_classifier, inception_weights=args.inception_weights,
        xrv_weights=args.xrv_weights, size=args.size, channels=_channels(args), limit=args.limit, logs=args.logs,
        channel_names=[n.strip() for n in args.channel_names.split(",")] if args.channel_names else None,
        augmentation_json=args.augmentation, reader_study_json=args.reader_study,
        cosine_threshold=args.cosine_threshold, ssim_threshold=args.ssim_threshold,
    )
    metrics = build_report(inputs)
    for space, values in metrics["fid"].items():
        print(f"FID-{space}: {values['fid']:.3f}")
    print(f"wrote {args.out / 'metrics.json'} and {args.out / 'report.html'}")
    return 0


def _space_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--space", action="append", choices=["phantom", "inception", "xrv"], default=None,
                        help="feature space (repeatable); report default: every space with weights given")


def _thresholds(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cosine-threshold", type=float, default=0.98,
                        help="centred feature cosine marking a near-copy")
    parser.add_argument("--ssim-threshold", type=float, default=0.9, help="SSIM marking a near-copy")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the evaluate subcommands."""
    p = subparsers.add_parser("fid", help="FID, KID and precision/recall/density/coverage")
    _add_sets(p)
    _add_weights(p)
    _space_option(p)
    p.set_defaults(func=run_fid)

    p = subparsers.add_parser("diversity", help="MS-SSIM among images of the same prompt (lower = more diverse)")
    p.add_argument("--generated", type=Path, required=True, help="generated folder (generation_results.csv)")
    p.add_argument("--size", type=int, default=None, help="resize to SIZE x SIZE (default: keep)")
    p.add_argument("--limit", type=int, default=None, help="use at most this many images")
    p.add_argument("--json", type=Path, default=None, help="write the result here (default: print it)")
    _channels_option(p)
    p.set_defaults(func=run_diversity)

    p = subparsers.add_parser("faithfulness", help="classifier AUC/accuracy of generated images vs prompt labels")
    p.add_argument("--generated", type=Path, required=True, help="generated folder (or any labelled folder)")
    p.add_argument("--size", type=int, default=64, help="resize to SIZE x SIZE before scoring")
    p.add_argument("--limit", type=int, default=None, help="use at most this many images")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold for accuracy")
    p.add_argument("--json", type=Path, default=None, help="write the result here (default: print it)")
    _add_weights(p)
    p.set_defaults(func=run_faithfulness)

    p = subparsers.add_parser("memorization", help="near-copies of training images among generated images")
    p.add_argument("--train", type=Path, required=True, help="the training images of the generator")
    p.add_argument("--generated", type=Path, required=True, help="generated folder")
    p.add_argument("--size", type=int, default=64, help="resize to SIZE x SIZE")
    p.add_argument("--limit", type=int, default=None, help="use at most this many generated images")
    p.add_argument("--json", type=Path, default=None, help="write the result here (default: print it)")
    _add_weights(p)
    _space_option(p)
    _thresholds(p)
    _channels_option(p)
    p.set_defaults(func=run_memorization)

    p = subparsers.add_parser("augment", help="classifier AUC trained on real, synthetic and mixed data")
    p.add_argument("--real", type=Path, required=True, help="real training images (labelled)")
    p.add_argument("--synthetic", type=Path, required=True, help="synthetic images (labels or prompts)")
    p.add_argument("--test", type=Path, required=True, help="real test images (labelled)")
    p.add_argument("--val", type=Path, default=None,
                   help="real validation images (labelled) for augment.selection=best_val; without it a share "
                   "(augment.val_fraction) of --real is held out")
    p.add_argument("--findings", required=True, help="comma-separated label names, e.g. Cardiomegaly,Edema")
    p.add_argument("--config", type=Path, default=None, help="YAML recipe with an `augment:` section")
    p.add_argument("--set", action="append", default=[], help="override, e.g. augment.runs=5 (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="use at most this many images per set")
    p.add_argument("--json", type=Path, default=None, help="write the result here (default: print it)")
    _channels_option(p)
    p.set_defaults(func=run_augment)

    p = subparsers.add_parser("reader-study", help="blinded real-vs-synthetic kit for a radiologist, and its scorer")
    p.add_argument("--real", type=Path, default=None, help="real images")
    p.add_argument("--generated", type=Path, default=None, help="generated images")
    p.add_argument("--out", type=Path, default=None, help="kit folder to write")
    p.add_argument("--n", type=int, default=25, help="images of each kind")
    p.add_argument("--size", type=int, default=256, help="side of the re-encoded images")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed")
    p.add_argument("--answers", type=Path, default=None, help="filled answer sheet to score")
    p.add_argument("--key", type=Path, default=None, help="the kit's key.csv (for scoring)")
    p.add_argument("--json", type=Path, default=None, help="write the score here (default: print it)")
    p.set_defaults(func=run_reader_study)

    p = subparsers.add_parser("report", help="all measures into OUT/metrics.json and one self-contained report.html")
    _add_sets(p)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--train", type=Path, default=None, help="training images, for the memorization check")
    p.add_argument("--logs", type=Path, default=None, help="TensorBoard log folder for the loss curve")
    p.add_argument("--augmentation", type=Path, default=None, help="JSON written by `medsd evaluate augment`")
    p.add_argument("--reader-study", type=Path, default=None, help="JSON written by `reader-study --answers`")
    p.add_argument("--channel-names", default=None,
                   help="names of colour channels for the per-channel table, e.g. T2W,ADC,DWI (default R,G,B)")
    _add_weights(p)
    _space_option(p)
    _thresholds(p)
    p.set_defaults(func=run_report)
