"""Data-layer throughput: `medsd data prepare` images/s, and sample reads from the cache vs decoding originals.

    python benchmarks/bench_data.py [--n 500] [--size 512] [--resolution 128] [--workers 1 2]

Writes N synthetic 12-bit radiographs as 16-bit PNGs and as DICOMs (size × size), prepares each set into a
cache at `--resolution`, then times `build_dataset(...)[i]` with and without the cache. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from medsd.data.config import DataConfig
from medsd.data.dataset import build_dataset
from medsd.data.prepare import prepare_cache


def synthetic_xray(size: int, seed: int) -> np.ndarray:
    """12-bit data in a 16-bit array: smooth body, noise, black collimation border."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    body = 2500 + 1200 * np.sin(3 * x + seed) * np.cos(2 * y) + rng.normal(0, 60, (size, size))
    img = np.clip(body, 0, 4095).astype(np.uint16)
    b = size // 16
    img[:b], img[-b:], img[:, :b], img[:, -b:] = 0, 0, 0, 0
    return img


def write_dicom(path: Path, pixels: np.ndarray) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_set(root: Path, kind: str, n: int, size: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        img = synthetic_xray(size, i)
        name = f"img{i:05d}.{'png' if kind == 'png16' else 'dcm'}"
        if kind == "png16":
            Image.fromarray(img).save(root / name)
        else:
            write_dicom(root / name, img)
        names.append(name)
    pd.DataFrame({"Path": names, "Finding": np.arange(n) % 2}).to_csv(root / "labels.csv", index=False)


def time_reads(cfg: DataConfig, count: int) -> float:
    ds = build_dataset(cfg)
    start = time.perf_counter()
    for i in range(count):
        ds[i % len(ds)]
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores; N={args.n}, "
          f"{args.size}px → {args.resolution}px, 3 channels, uint8 cache\n")  # fmt: skip
    print("| input | workers | prepare images/s | seconds | reads/s decode | reads/s cache |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("png16", "dicom"):
            root = Path(tmp) / kind
            make_set(root, kind, args.n, args.size)
            cfg = DataConfig(source="csv", root=str(root), csv="labels.csv", resolution=args.resolution)
            decode_rate = time_reads(cfg, min(args.n, 200))
            for w in args.workers:
                cache = Path(tmp) / f"cache_{kind}_{w}"
                report = prepare_cache(cfg, cache, workers=w)
                cached_rate = time_reads(cfg.model_copy(update={"cache_dir": str(cache)}), min(args.n, 2000))
                print(f"| {kind} {args.size}px | {w} | {report['images_per_s']:.1f} | {report['seconds']:.2f} "
                      f"| {decode_rate:.1f} | {cached_rate:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
