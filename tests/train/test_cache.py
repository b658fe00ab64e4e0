"""Latent and prompt-embedding caches: built once, reused, invalidated when the data or VAE changes."""

from __future__ import annotations

import torch

from medsd.train.cache import PromptEmbeddingCache, build_latent_cache, latent_cache_key


def _vae(model_dir):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(model_dir, subfolder="vae")


def test_latent_cache_reused_and_invalidated(tiny_model_dir, shapes, shapes_factory, tmp_path):
    vae = _vae(tiny_model_dir)
    settings = {"source": "phantom", "resolution": 32}
    cache, hit = build_latent_cache(shapes, vae, tmp_path, settings, batch_size=4)
    assert not hit and len(cache) == len(shapes)
    assert cache[0]["latent_params"].shape == (8, 16, 16)  # mean + logvar of 4 channels, VAE factor 2
    assert cache[3]["prompt"] == shapes[3]["prompt"]
    assert torch.equal(cache[3]["labels"], shapes[3]["labels"])
    # The stored mean is the VAE's mean (float16 storage).
    with torch.no_grad():
        mean = vae.encode(shapes[5]["pixel_values"][None]).latent_dist.mean[0]
    assert torch.allclose(cache[5]["latent_params"][:4], mean, atol=2e-3)

    again, hit = build_latent_cache(shapes, vae, tmp_path, settings, batch_size=4)
    assert hit and again.directory == cache.directory

    smaller, hit = build_latent_cache(shapes_factory(size=16), vae, tmp_path, {**settings, "resolution": 16})
    assert not hit and smaller.directory != cache.directory
    assert smaller[0]["latent_params"].shape == (8, 8, 8)
    assert len(list(tmp_path.glob("latents-*"))) == 2

    # Changing a data setting, or the VAE weights, changes the key; the worker count does not.
    key = latent_cache_key(shapes, vae, settings)
    assert latent_cache_key(shapes, vae, {**settings, "preprocess": "center_crop"}) != key
    assert latent_cache_key(shapes, vae, {**settings, "workers": 7}) == key
    with torch.no_grad():
        next(vae.parameters()).add_(0.01)
    assert latent_cache_key(shapes, vae, settings) != key


def test_prompt_embedding_cache_encodes_each_prompt_once():
    calls: list[list[str]] = []

    def encode(prompts):
        calls.append(list(prompts))
        return torch.stack([torch.full((3, 2), float(len(p))) for p in prompts])

    cache = PromptEmbeddingCache(encode, max_entries=2)
    out = cache(["ab", "abc", "ab"])
    assert out.shape == (3, 3, 2) and out[2, 0, 0] == 2
    cache(["abc", "ab"])
    assert calls == [["ab", "abc"]] and cache.hits == 3
    cache(["abcd"])  # beyond max_entries: encoded but not stored
    cache(["abcd"])
    assert calls[-2:] == [["abcd"], ["abcd"]]


def test_augmentation_falls_back_to_on_the_fly_encoding(tiny_model_dir, shapes, tmp_path, recipe):
    from medsd.train.setup import training_data

    cfg = recipe(tiny_model_dir, tmp_path / "aug", "lora")
    cfg.data = cfg.data.model_copy(update={"augment": True})
    data, note = training_data(cfg, shapes, method=None, accelerator=None)
    assert data is shapes and note is None and not (tmp_path / "aug" / "cache").exists()


def test_table_data_set_key_follows_reports_and_files(tmp_path):
    """A cache shared between runs misses when a report or an image changes, not only a path."""
    import os

    import pandas as pd

    from medsd.train.cache import dataset_fingerprint

    files = [tmp_path / f"{i}.png" for i in range(3)]
    for f in files:
        f.write_bytes(b"pixels")

    class Table:
        def __init__(self, prompts):
            self.frame = pd.DataFrame({"path": [str(f) for f in files], "prompt": prompts, "Effusion": [0, 1, 0]})

        def __len__(self):
            return len(self.frame)

    key = dataset_fingerprint(Table(["a", "b", "c"]))
    assert dataset_fingerprint(Table(["a", "b", "c"])) == key
    assert dataset_fingerprint(Table(["a", "Small left effusion.", "c"])) != key
    files[1].write_bytes(b"other pixels")
    changed = dataset_fingerprint(Table(["a", "b", "c"]))
    assert changed != key
    stat = files[2].stat()
    os.utime(files[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same size, rewritten later
    assert dataset_fingerprint(Table(["a", "b", "c"])) != changed
