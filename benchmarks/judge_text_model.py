"""Judge any phantom text-to-image pipeline with the demo's prompts: finding AUC, false positives, side, severity.

The same prompt suite and judge as `medsd demo` (label prompts, report prompts, reports in held-out phrasing,
the README's example), for a model trained some other way: a longer run, other settings, an adapted model.

    python benchmarks/judge_text_model.py --model demo_out/runs/text_to_image/pipeline \\
        --judge demo_out/classifier --heldout demo_out/data/phantom_heldout --out /tmp/judged

Prints the demo's tables and writes OUT/faithfulness.json, OUT/judged.csv (one row per image),
OUT/cross_reading.png/.json (which findings the judge reads in images asked for one finding) and, with --heldout,
OUT/fid.json (the demo's FID: label-prompt images against the held-out ones, in the judge's feature space).
`--generated demo_out/generated` judges images made before (a demo's, or an earlier OUT) instead of
generating: the same images read by another judge.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from medsd.demo import DemoPlan
from medsd.demo_stages import KINDS, format_faithfulness, generate_test_prompts, judge_test_prompts
from medsd.evaluate.io import load_image_folder
from medsd.generate.loading import load_model
from medsd.phantom.cross_reading import format_cross_reading, write_cross_reading
from medsd.phantom.judge import load_reference_classifier
from medsd.phantom.prompt_faithfulness import faithfulness_report, judged_frame, real_cases
from medsd.phantom.render import FINDINGS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="StableDiffusionPipeline folder")
    parser.add_argument("--generated", type=Path, default=None,
                        help="judge the images in this folder (label/, report/, held_out/, example/ with cases.csv) "
                        "instead of generating")
    parser.add_argument("--judge", required=True, type=Path, help="phantom judge folder (demo_out/classifier)")
    parser.add_argument("--out", required=True, type=Path, help="output folder for images and tables")
    parser.add_argument("--heldout", type=Path, default=None, help="real held-out phantom set, for the 'real' column")
    parser.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (default: the demo's)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the demo's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if (args.model is None) == (args.generated is None):
        parser.error("give --model (generate, then judge) or --generated (judge images made before)")
    logging.basicConfig(level=logging.WARNING)

    plan = DemoPlan()
    plan.model.guidance = args.guidance or plan.model.guidance
    plan.model.sample_steps = args.steps or plan.model.sample_steps
    judge = load_reference_classifier(args.judge)
    if args.generated is not None:
        folders = {kind: args.generated / kind for kind in KINDS}
        args.out.mkdir(parents=True, exist_ok=True)
    else:
        folders = generate_test_prompts(load_model(str(args.model), device="cpu"), args.out, plan, args.seed)
    frames = [judge_test_prompts(judge, folders, judge.input_size)]
    if args.heldout is not None:
        images, _ = load_image_folder(args.heldout, judge.input_size)
        frames.append(judged_frame(judge, images, real_cases(args.heldout, list(FINDINGS))))
    judged = pd.concat(frames, ignore_index=True)
    judged.to_csv(args.out / "judged.csv", index=False)
    faith = faithfulness_report(judged, list(FINDINGS))
    (args.out / "faithfulness.json").write_text(json.dumps(faith, indent=2))
    print(f"images of {args.generated} judged by {args.judge}" if args.generated else
          f"model {args.model}, guidance {plan.model.guidance}, {plan.model.sample_steps} DDIM steps")
    crossed = write_cross_reading(judged, list(FINDINGS), args.out)
    print("\n".join(format_faithfulness(faith)))
    if args.heldout is not None:
        fid = label_prompt_fid(args.judge, folders["label"], args.heldout, judge.input_size)
        (args.out / "fid.json").write_text(json.dumps({"fid_phantom": fid}) + "\n")
        print(f"phantom FID, label-prompt images against the held-out real ones: {fid:.1f}")
    print("\n".join(format_cross_reading(crossed["report"], list(FINDINGS), "judged positive, by what a "
                                                                           "single-finding report prompt asks")))


def label_prompt_fid(judge: Path, label_images: Path, heldout: Path, size: int) -> float:
    """The demo's FID: label-prompt images against the held-out real ones, in the judge's feature space."""
    from medsd.evaluate import features as feats
    from medsd.evaluate.fid import fid_from_features

    extractor = feats.phantom_extractor(feats.load_phantom_classifier(judge))
    real, _ = load_image_folder(heldout, size)
    generated, _ = load_image_folder(label_images, size, channels=real.shape[1])  # as the demo's report loads them
    return float(fid_from_features(feats.extract_features(extractor, real),
                                   feats.extract_features(extractor, generated)))


if __name__ == "__main__":
    main()
