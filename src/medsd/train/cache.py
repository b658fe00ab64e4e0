"""Encode once, train many times: the VAE latent cache (on disk) and the prompt-embedding cache (in memory).

The latent cache stores each image's latent *distribution* (mean and log-variance, float16) rather than one
sample, so training still draws a fresh latent every step exactly as on-the-fly encoding does. It lives in
`CACHE/latents-KEY/` where KEY hashes the data set (its table, each file's size and modification time, and
every data setting), the pixel shape and the VAE (config and a sample of its weights): change any of them and
a new cache is built, so one cache folder can serve every run on the same data (`training.cache_dir`). A cache
folder appears only once it is complete (written under `.partial`, then renamed), so an interrupted encode is
never mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

CACHE_VERSION = 1
# Data settings that do not change pixels, prompts or labels, so they must not invalidate a cache.
_IGNORED_DATA_FIELDS = {"workers", "cache_dir"}


def _hash_bytes(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def dataset_fingerprint(dataset: Dataset, data_settings: dict[str, Any] | None = None) -> str:
    """Hash of what the data set yields: its class, size, table (paths, prompts, labels), files and data settings."""
    parts: list[str] = [type(dataset).__name__, str(len(dataset))]
    settings = {k: v for k, v in (data_settings or {}).items() if k not in _IGNORED_DATA_FIELDS}
    parts.append(json.dumps(settings, sort_keys=True, default=str))
    custom = getattr(dataset, "fingerprint", None)
    frame = getattr(dataset, "frame", None)
    if callable(custom):
        parts.append(str(custom()))
    elif frame is not None and "path" in getattr(frame, "columns", ()):
        # The table's content (prompts, labels) and each file's size and modification time, not only its path:
        # a cache shared between runs (`training.cache_dir`) must miss when a report or an image changes.
        parts.append(_frame_digest(frame))
        parts.append("\n".join(f"{p}\t{_file_stamp(str(p))}" for p in frame["path"].tolist()))
        if "mask_paths" in frame.columns:  # region masks weight the loss: an edited mask must miss too
            parts.append("\n".join(f"{m}\t{_file_stamp(m)}" for cell in frame["mask_paths"].tolist()
                                   for m in str(cell).split("|") if m))
    else:
        # No table of paths: read paths and prompts from the samples (this loads every image once per run).
        log.warning("data set %s has no `frame` or `fingerprint()`; reading every sample to key the latent cache",
                    type(dataset).__name__)
        for i in range(len(dataset)):
            item = dataset[i]
            parts.append(f"{item.get('path', i)}\t{item.get('prompt', '')}")
    return _hash_bytes(*parts)


def _frame_digest(frame: Any) -> str:
    import pandas as pd

    try:
        rows = pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()
        return _hash_bytes(rows, *map(str, frame.columns))
    except TypeError:  # unhashable cells (lists, dicts): hash the table's text instead
        return _hash_bytes(frame.to_csv(index=False))


def _file_stamp(path: str) -> str:
    try:
        stat = os.stat(path)
    except OSError:  # not a plain file path (a DICOM series folder with a slice suffix, a URL): the path alone
        return "-"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def vae_fingerprint(vae: torch.nn.Module) -> str:
    """Hash of the VAE's config and of a few of its weight tensors (cheap, but tells fine-tuned VAEs apart)."""
    config = json.dumps(dict(getattr(vae, "config", {})), sort_keys=True, default=str)
    params = list(vae.state_dict().items())
    picked = params[:2] + params[len(params) // 2 : len(params) // 2 + 1] + params[-2:]
    blobs = [f"{k}:{tuple(v.shape)}".encode() + v.detach().float().cpu().numpy().tobytes() for k, v in picked]
    return _hash_bytes(config, *blobs)


def latent_cache_key(dataset: Dataset, vae: torch.nn.Module, data_settings: dict[str, Any] | None = None) -> str:
    """The cache key: data set + pixel shape + VAE + cache format version."""
    shape = tuple(dataset[0]["pixel_values"].shape)
    return _hash_bytes(
        str(CACHE_VERSION), dataset_fingerprint(dataset, data_settings), str(shape), vae_fingerprint(vae)
    )[:20]


def latent_shape(vae: torch.nn.Module, pixel_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Shape of the stored distribution parameters (2 x latent channels, H / f, W / f)."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return (2 * vae.config.latent_channels, pixel_shape[-2] // factor, pixel_shape[-1] // factor)


class LatentCache(Dataset):
    """A finished cache, read through a memory map: items are `{"latent_params", "prompt", "labels", "index"}`,
    and `"loss_mask"` (the region mask averaged down to the latent grid) when the data set has masks."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        meta = json.loads((self.directory / "meta.json").read_text())
        self.prompts: list[str] = meta["prompts"]
        self.n = meta["n"]
        labels_path = self.directory / "labels.npy"
        self.labels = np.load(labels_path) if labels_path.exists() else None
        masks_path = self.directory / "masks.npy"
        self.masks = np.load(masks_path) if masks_path.exists() else None  # (N, 1, h, w) float16: small, in memory
        self._params: np.ndarray | None = None

    @property
    def params(self) -> np.ndarray:
        """The (N, 2C, h, w) float16 array, memory-mapped on first use (also in each DataLoader worker)."""
        if self._params is None:
            self._params = np.load(self.directory / "latents.npy", mmap_mode="r", allow_pickle=False)
        return self._params

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {
            "latent_params": torch.from_numpy(np.array(self.params[index], dtype=np.float32)),
            "prompt": self.prompts[index],
            "index": index,
        }
        if self.labels is not None:
            item["labels"] = torch.from_numpy(self.labels[index])
        if self.masks is not None:
            item["loss_mask"] = torch.from_numpy(self.masks[index].astype(np.float32))
        return item

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        """A whole batch, already collated (DataLoader calls this instead of one `__getitem__` per sample).

        One fancy-indexed read of the memory map per batch instead of a Python loop over samples and a stack:
        the same tensors as `default_collate` of the items, in the order of `indices`.
        """
        rows = np.asarray(indices, dtype=np.int64)
        batch: dict[str, Any] = {
            "latent_params": torch.from_numpy(self.params[rows].astype(np.float32)),
            "prompt": [self.prompts[i] for i in indices],
            "index": torch.from_numpy(rows),
        }
        if self.labels is not None:
            batch["labels"] = torch.from_numpy(self.labels[rows])
        if self.masks is not None:
            batch["loss_mask"] = torch.from_numpy(self.masks[rows].astype(np.float32))
        return batch

    @staticmethod
    def collate(batch: dict[str, Any]) -> dict[str, Any]:
        """The DataLoader's `collate_fn`: `__getitems__` has collated the batch already."""
        return batch


def _barrier(accelerator: Any) -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()


@torch.no_grad()
def build_latent_cache(
    dataset: Dataset,
    vae: torch.nn.Module,
    cache_root: str | Path,
    data_settings: dict[str, Any] | None = None,
    accelerator: Any = None,
    batch_size: int = 8,
    num_workers: int = 0,
) -> tuple[LatentCache, bool]:
    """Open the cache for (dataset, VAE), encoding it first if missing; returns (cache, was_hit).

    With several processes, each encodes its share of the samples into one shared memory-mapped file.
    """
    root = Path(cache_root)
    final = root / f"latents-{latent_cache_key(dataset, vae, data_settings)}"
    if (final / "meta.json").is_file():
        log.info("latent cache hit: %s", final)
        return LatentCache(final), True
    partial = final.with_name(final.name + ".partial")
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    first = dataset[0]
    shape = (len(dataset), *latent_shape(vae, tuple(first["pixel_values"].shape)))
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        np.lib.format.open_memmap(partial / "latents.npy", mode="w+", dtype=np.float16, shape=shape).flush()
        if "loss_mask" in first:
            np.lib.format.open_memmap(partial / "masks.npy", mode="w+", dtype=np.float16,
                                      shape=(len(dataset), 1, *shape[-2:])).flush()
    _barrier(accelerator)
    prompts, labels = _encode_share(dataset, vae, partial, rank, world, batch_size, num_workers)
    (partial / f"part-{rank}.json").write_text(json.dumps({"prompts": prompts, "labels": labels}))
    _barrier(accelerator)
    if rank == 0:
        _finish(partial, final, len(dataset), world)
    _barrier(accelerator)
    return LatentCache(final), False


def _encode_share(
    dataset: Dataset, vae: torch.nn.Module, partial: Path, rank: int, world: int, batch_size: int, num_workers: int
) -> tuple[dict[int, str], dict[int, list[float]]]:
    from torch.utils.data import DataLoader, Subset

    indices = list(range(rank, len(dataset), world))
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers)
    array = np.load(partial / "latents.npy", mmap_mode="r+", allow_pickle=False)
    masks_file = partial / "masks.npy"
    masks = np.load(masks_file, mmap_mode="r+", allow_pickle=False) if masks_file.exists() else None
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    prompts: dict[int, str] = {}
    labels: dict[int, list[float]] = {}
    from tqdm.auto import tqdm

    # The loader walks `indices` in order, so the k-th encoded sample is dataset[indices[k]].
    position = iter(indices)
    for batch in tqdm(loader, desc="encode latents", disable=rank != 0, total=math.ceil(len(indices) / batch_size)):
        params = vae.encode(batch["pixel_values"].to(device, dtype)).latent_dist.parameters
        pooled = latent_grid_mask(batch["loss_mask"], params.shape[-2:]).numpy() if masks is not None else None
        for j, p in enumerate(params.float().cpu().numpy()):
            i = next(position)
            array[i] = p.astype(np.float16)
            if pooled is not None:
                masks[i] = pooled[j].astype(np.float16)
            prompts[i] = batch["prompt"][j]
            if "labels" in batch:
                labels[i] = batch["labels"][j].float().tolist()
    array.flush()
    del array
    if masks is not None:
        masks.flush()
        del masks
    return prompts, labels


def latent_grid_mask(mask: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """A pixel-space region mask (N, 1, H, W) as the share of each latent cell it covers (N, 1, h, w)."""
    mask = mask.float()
    return mask if tuple(mask.shape[-2:]) == tuple(size) else torch.nn.functional.adaptive_avg_pool2d(mask, size)


def _finish(partial: Path, final: Path, n: int, world: int) -> None:
    prompts: dict[str, str] = {}
    labels: dict[str, list[float]] = {}
    for r in range(world):
        part = json.loads((partial / f"part-{r}.json").read_text())
        prompts.update(part["prompts"])
        labels.update(part["labels"])
        (partial / f"part-{r}.json").unlink()
    if labels:
        np.save(partial / "labels.npy", np.array([labels[str(i)] for i in range(n)], dtype=np.float32))
    meta = {"version": CACHE_VERSION, "n": n, "prompts": [prompts[str(i)] for i in range(n)]}
    (partial / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    log.info("wrote latent cache %s (%d samples)", final, n)


class PromptEmbeddingCache:
    """Text-encoder outputs of each distinct prompt, computed once (valid only while the encoder is frozen).

    Label prompts come from a few hundred combinations at most, so they all fit; free-text report prompts are
    mostly unique, so past `max_entries` new prompts are encoded every time instead of stored.
    """

    def __init__(self, encode: Any, max_entries: int = 4096):
        self.encode = encode
        self.max_entries = max_entries
        self.table: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor:
        """Stacked embeddings of `prompts`, encoding only the ones not seen before."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self.table))
        self.misses += len(missing)
        self.hits += len(prompts) - len(missing)
        fresh: dict[str, torch.Tensor] = {}
        if missing:
            encoded = self.encode(missing)
            fresh = dict(zip(missing, encoded, strict=True))
            room = max(0, self.max_entries - len(self.table))
            self.table.update(dict(list(fresh.items())[:room]))
        return torch.stack([self.table.get(p, fresh.get(p)) for p in prompts])
