"""Throughput of the evaluation measures on CPU at phantom size (64 px), printed as a markdown table.

Run: python benchmarks/bench_evaluate.py [--n 256]
Uses an untrained phantom classifier as the feature network (speed does not depend on its weights).
"""

from __future__ import annotations

import argparse
import time

import torch

from medsd.evaluate import features as feats
from medsd.evaluate.diversity import ms_ssim_diversity
from medsd.evaluate.fid import compare_features
from medsd.evaluate.privacy import memorization
from medsd.phantom.judge import PhantomClassifier


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=256, help="images per set")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    args = parser.parse_args()
    torch.manual_seed(0)
    real = torch.rand(args.n, 1, args.size, args.size)
    gen = torch.rand(args.n, 1, args.size, args.size)
    extractor = feats.phantom_extractor(PhantomClassifier().eval())
    rows = []
    t, real_f = timed(lambda: feats.extract_features(extractor, real))
    rows.append(("phantom features", args.n, t, args.n / t))
    gen_f = feats.extract_features(extractor, gen)
    t, _ = timed(lambda: compare_features(real_f, gen_f))
    rows.append(("FID + KID + PRDC (from features)", args.n, t, args.n / t))
    groups = {f"p{i}": list(range(i * 8, i * 8 + 8)) for i in range(args.n // 8)}
    t, _ = timed(lambda: ms_ssim_diversity(gen, groups, max_pairs=28))
    rows.append(("MS-SSIM diversity (28 pairs per prompt)", args.n, t, args.n / t))
    t, _ = timed(lambda: memorization(gen, real, extractor))
    rows.append((f"memorization vs {args.n} training images", args.n, t, args.n / t))
    print(f"| measure ({args.size} px, {torch.get_num_threads()} threads) | images | seconds | images/s |")
    print("|---|---|---|---|")
    for name, n, seconds, rate in rows:
        print(f"| {name} | {n} | {seconds:.2f} | {rate:.0f} |")


if __name__ == "__main__":
    main()
