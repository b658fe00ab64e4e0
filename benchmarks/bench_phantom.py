"""Benchmark the chest X-ray phantom: rendering throughput and the reference classifier (time, per-finding AUC).

    python benchmarks/bench_phantom.py [--n 1000] [--size 256] [--workers 2] [--classifier-n 2000]

Prints markdown tables. Rendering is timed end to end (sampling, 3D edits, projection, PNG + mask writing,
CSV); the CT is loaded (and cached) before the clock starts, as in a warm ``medsd data phantom`` run.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from medsd.phantom import ct as pct
from medsd.phantom import render as P


def _cpu_seconds() -> float:
    """User+system CPU time of this process and its finished children (the render workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def bench_render(n: int, size: int, workers: int, out: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) to write n images. On shared machines the wall clock depends on other
    jobs; CPU seconds per image give the throughput two dedicated cores would reach."""
    pct.load_phantom_ct()
    pct.base_slabs()
    c0, t0 = _cpu_seconds(), time.perf_counter()
    P.write_phantom_dataset(out, n=n, size=size, seed=0, workers=workers, progress=False)
    return time.perf_counter() - t0, _cpu_seconds() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--classifier-n", type=int, default=2000, help="0 skips the classifier benchmark")
    ap.add_argument("--classifier-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        wall, cpu = bench_render(args.n, args.size, args.workers, tmp_path / "render")
        print(f"cores visible: {os.cpu_count()}, load average before: {load0:.1f}\n")
        print("| images | size | workers | wall s | images/s (wall) | CPU s / image | images/s on 2 dedicated cores |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        print(
            f"| {args.n} | {args.size} | {args.workers} | {wall:.1f} | {args.n / wall:.1f} | "
            f"{cpu / args.n * 1000:.0f} ms | {2 * args.n / cpu:.1f} |"
        )
        if args.classifier_n <= 0:
            return
        from medsd.phantom.judge import train_reference_classifier

        data = tmp_path / "clf_data"
        P.write_phantom_dataset(
            data, n=args.classifier_n, size=args.classifier_size, seed=0, workers=args.workers, progress=False
        )
        t0 = time.perf_counter()
        m = train_reference_classifier(data, tmp_path / "clf", epochs=args.epochs, seed=0)
        dt = time.perf_counter() - t0
        print(
            f"\nReference classifier: {m['params']:,} parameters, input {m['input_size']} px, "
            f"{m['epochs']} epochs, {m['n_train']} train / {m['n_val']} held-out images "
            f"({m['n_val_patients']} patients), trained in {dt:.0f} s\n"
        )
        print("| finding | held-out AUC | held-out positives |")
        print("|---|---:|---:|")
        for name, auc in m["auc"].items():
            print(f"| {name} | {auc:.3f} | {m['positives_val'][name]} |")
        print(f"| **mean** | {m['mean_auc']:.3f} | |")


if __name__ == "__main__":
    main()
