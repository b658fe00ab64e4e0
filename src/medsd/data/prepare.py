"""`medsd data prepare`: decode and preprocess every selected image once into a cache folder.

Layout of the cache (a plain numpy memmap so any tool can read it):
  images.npy    uint8/uint16 [N, C, R, R], [-1, 1] mapped to the dtype's range
  done.npy      bool [N], set after each chunk is written: an interrupted run resumes where it stopped
  metadata.csv  one row per sample: path, patient_id, prompt, labels, cache_index, ok, reason
  cache.json    pixel fingerprint, shape, counts, images/s
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medsd.data.config import DataConfig
from medsd.data.dataset import build_dataset, pixel_fingerprint, read_sample
from medsd.data.images import UnreadableImage

log = logging.getLogger(__name__)
CHUNK = 32


def _encode(paths: list[str], cfg_json: str) -> list[tuple[np.ndarray | None, str]]:
    """Worker: decode + preprocess a chunk; failures come back as (None, reason), never as exceptions."""
    cfg = DataConfig.model_validate_json(cfg_json)
    dtype = np.dtype(cfg.cache_dtype)
    top = np.iinfo(dtype).max
    out = []
    for p in paths:
        try:
            t = read_sample(p, cfg)
            out.append((np.round((t.numpy() + 1) / 2 * top).astype(dtype), ""))
        except UnreadableImage as err:
            out.append((None, err.reason))
        except Exception as err:  # a bug on one odd file must not lose hours of work on the others
            out.append((None, f"{type(err).__name__}: {err}"))
    return out


def _open_cache(cache_dir: Path, cfg: DataConfig, n: int, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Open the arrays for writing, reusing them when a previous run with the same settings was interrupted."""
    shape = (n, cfg.channels, cfg.resolution, cfg.resolution)
    info_path = cache_dir / "cache.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        same_rows = (cache_dir / "metadata.csv").is_file() and pd.read_csv(
            cache_dir / "metadata.csv", usecols=["path"]
        )["path"].tolist() == frame["path"].tolist()
        if info.get("fingerprint") == pixel_fingerprint(cfg) and tuple(info.get("shape", ())) == shape and same_rows:
            images = np.load(cache_dir / "images.npy", mmap_mode="r+")
            done = np.load(cache_dir / "done.npy", mmap_mode="r+")
            return images, done
        log.warning("cache %s holds other settings or samples; rewriting it", cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    images = np.lib.format.open_memmap(cache_dir / "images.npy", mode="w+", dtype=cfg.cache_dtype, shape=shape)
    done = np.lib.format.open_memmap(cache_dir / "done.npy", mode="w+", dtype=bool, shape=(n,))
    info_path.write_text(json.dumps({"fingerprint": pixel_fingerprint(cfg), "shape": list(shape), "complete": False}))
    # written up front so that a resumed run can check it is preparing the same samples
    frame[["path"]].to_csv(cache_dir / "metadata.csv", index=False)
    (cache_dir / "skips.jsonl").write_text("")
    return images, done


def prepare_cache(cfg: DataConfig, cache_dir: str | Path | None = None, workers: int | None = None) -> dict:
    """Write the cache for every sample of `cfg` (all splits); returns counts, skipped files and images/s."""
    cache_dir = Path(cache_dir or cfg.cache_dir or "cache")
    cfg = cfg.model_copy(update={"cache_dir": None, "augment": False})
    ds = build_dataset(cfg, split="all")
    frame = ds.frame.drop_duplicates("path").reset_index(drop=True)  # oversampling repeats rows, not pixels
    n = len(frame)
    images, done = _open_cache(cache_dir, cfg, n, frame)
    reasons = _previous_reasons(cache_dir, n)
    todo = np.flatnonzero(~np.asarray(done))
    chunks = [todo[i : i + CHUNK] for i in range(0, len(todo), CHUNK)]
    cfg_json = cfg.model_dump_json()
    workers = workers or cfg.workers
    start = time.perf_counter()
    with tqdm(total=n, initial=n - len(todo), desc="prepare", unit="img") as bar:
        results = _run(chunks, frame, cfg_json, workers)
        for idx, encoded in results:
            failures = []
            for i, (arr, reason) in zip(idx, encoded, strict=True):
                if arr is not None:
                    images[i] = arr
                else:
                    failures.append(json.dumps({"i": int(i), "reason": reason}) + "\n")
                reasons[i] = reason
            images.flush()
            with open(cache_dir / "skips.jsonl", "a") as fh:
                fh.writelines(failures)
            done[idx] = True  # marked only after the pixels are written, so a crash never leaves holes
            done.flush()
            bar.update(len(idx))
    elapsed = time.perf_counter() - start
    return _finish(cache_dir, cfg, frame, ds, reasons, len(todo), elapsed)


def _run(chunks, frame: pd.DataFrame, cfg_json: str, workers: int):
    paths = frame["path"].tolist()
    if workers <= 1 or len(chunks) < 2 * workers:  # starting worker processes costs more than a few chunks
        for idx in chunks:
            yield idx, _encode([paths[i] for i in idx], cfg_json)
        return
    # forkserver, not fork: forking a process whose torch/OpenMP thread pool is running deadlocks the children.
    # The server imports this module once (preload) and forks clean workers from it, cheaper than spawn.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
        # bounded look-ahead: finished chunks wait in memory for their turn, so never queue all of them
        pending: deque = deque()
        for idx in chunks:
            pending.append((idx, pool.submit(_encode, [paths[i] for i in idx], cfg_json)))
            if len(pending) >= 4 * workers:
                done_idx, fut = pending.popleft()
                yield done_idx, fut.result()
        while pending:
            done_idx, fut = pending.popleft()
            yield done_idx, fut.result()


def _worker_init() -> None:
    """One torch thread per worker: the parallelism is across processes, more threads only oversubscribe."""
    import torch

    torch.set_num_threads(1)


def _previous_reasons(cache_dir: Path, n: int) -> list[str]:
    """Skip reasons of chunks finished by an earlier, interrupted run."""
    reasons = [""] * n
    log_path = cache_dir / "skips.jsonl"
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                reasons[entry["i"]] = entry["reason"]
    return reasons


def _finish(
    cache_dir: Path, cfg: DataConfig, frame: pd.DataFrame, ds, reasons: list[str], decoded: int, elapsed: float
) -> dict:
    meta = frame.drop(columns=[c for c in ("text",) if c in frame.columns]).copy()
    meta["cache_index"] = np.arange(len(frame))
    meta["reason"] = reasons
    meta["ok"] = [r == "" for r in reasons]
    meta.to_csv(cache_dir / "metadata.csv", index=False)
    skipped = meta.loc[~meta["ok"], ["path", "reason"]]
    skipped.to_csv(cache_dir / "skipped.csv", index=False)
    report = {
        "fingerprint": pixel_fingerprint(cfg),
        "shape": [len(frame), cfg.channels, cfg.resolution, cfg.resolution],
        "complete": True,
        "samples": len(frame),
        "decoded_this_run": decoded,
        "skipped": len(skipped),
        "seconds": round(elapsed, 3),
        "images_per_s": round(decoded / elapsed, 1) if elapsed > 0 and decoded else None,
        "pathologies": ds.pathologies,
    }
    (cache_dir / "cache.json").write_text(json.dumps(report, indent=2))
    return {**report, "skipped_files": list(skipped.itertuples(index=False, name=None)), "cache_dir": str(cache_dir)}
