"""Reference classifier of the phantom: a small CNN that recognises each phantom finding (multi-label), the
side of each lateralised finding and its severity.

It is the offline stand-in for a pretrained chest X-ray network (whose weights cannot be downloaded here):
its penultimate features are the feature space for FID on the phantom, and its predictions measure whether a
generated image carries the finding it was asked for, on the side and at the severity asked
(`medsd.phantom.judge_heads`). Weights are saved as ``model.safetensors`` beside a ``config.json``;
``metrics.json`` holds the per-finding AUC, side accuracy and severity Spearman on a held-out, patient-level split.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from medsd.errors import MedsdError, first_line
from medsd.files import read_text
from medsd.phantom.judge_heads import (
    LATERAL_FINDINGS,
    head_loss,
    held_out_head_metrics,
    side_severity_targets,
)
from medsd.phantom.render import FINDINGS
from medsd.weights import load_safetensors

log = logging.getLogger(__name__)

PHANTOM_FINDINGS: list[str] = list(FINDINGS)
ARCH = "medsd-phantom-cnn-v2"  # v2: side and severity heads; v1 files (findings only) still load


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PhantomClassifier(nn.Module):
    """Four conv stages (64 -> 8 px at the default input) and average+max pooling to a feature vector.

    Input: float images [B, 1 or 3, H, W] in [0, 1], any size (resized to ``input_size``; RGB averaged to gray).
    """

    def __init__(self, findings: list[str] | None = None, input_size: int = 64, width: int = 16) -> None:
        super().__init__()
        self.findings = list(PHANTOM_FINDINGS if findings is None else findings)
        self.input_size = int(input_size)
        self.width = int(width)
        w = self.width
        # Narrow at high resolution, wide at low: the compute sits where it is cheap (CPU training).
        self.body = nn.Sequential(
            _block(1, w),
            nn.MaxPool2d(2),
            _block(w, 2 * w),
            _block(2 * w, 2 * w),
            nn.MaxPool2d(2),
            _block(2 * w, 4 * w),
            _block(4 * w, 4 * w),
            nn.MaxPool2d(2),
            _block(4 * w, 8 * w),
            _block(8 * w, 8 * w),
        )
        self.feature_dim = 16 * w
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(self.feature_dim, len(self.findings))
        self.lateral = [f for f in self.findings if f in LATERAL_FINDINGS]
        # Per lateralised finding: is it in the left lung, is it in the right (both: bilateral).
        self.side_head = nn.Linear(self.feature_dim, 2 * len(self.lateral))
        self.severity_head = nn.Linear(self.feature_dim, len(self.findings))
        self.reads_side_and_severity = True

    def _prepare(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"PhantomClassifier expects [B, 1|3, H, W] images, got shape {tuple(x.shape)}")
        x = x.float()
        if x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True
            )
        return (x - 0.5) / 0.25

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features [B, feature_dim] (average and max pooled last stage)."""
        h = self.body(self._prepare(x))
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B, len(findings)]."""
        return self.head(self.dropout(self.features(x)))

    def read(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Finding logits [B, F], side logits [B, L, 2] (left lung, right lung) for `self.lateral`, and
        severity [B, F] in [0, 1]; side and severity mean something only where the finding is present."""
        h = self.dropout(self.features(x))
        side = self.side_head(h).reshape(len(x), len(self.lateral), 2)
        return self.head(h), side, torch.sigmoid(self.severity_head(h))


def save_reference_classifier(model: PhantomClassifier, out_dir: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"arch": ARCH})
    cfg = {"arch": ARCH, "findings": model.findings, "input_size": model.input_size, "width": model.width}
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def load_reference_classifier(path: str | Path) -> PhantomClassifier:
    """Load a classifier saved by ``train_reference_classifier`` (a dir with model.safetensors + config.json)."""
    d = Path(path)
    if not (d / "model.safetensors").is_file() or not (d / "config.json").is_file():
        raise MedsdError(
            f"phantom classifier: {d} lacks model.safetensors/config.json; train one with "
            "`medsd data phantom-classifier --data DIR --out DIR`"
        )
    try:
        cfg = json.loads(read_text(d / "config.json", "phantom classifier config"))
    except json.JSONDecodeError as err:
        raise MedsdError(f"phantom classifier: {d}/config.json is not valid JSON ({err}); retrain it") from None
    if not isinstance(cfg, dict) or cfg.get("arch") not in (ARCH, _ARCH_V1):
        raise MedsdError(f"phantom classifier: {d}/config.json has arch {cfg.get('arch')!r}, expected {ARCH!r}")
    model = PhantomClassifier(cfg["findings"], cfg["input_size"], cfg["width"])
    try:
        # A v1 file has no side/severity heads: they stay untrained (`model.reads_side_and_severity` is False).
        missing, _ = model.load_state_dict(load_safetensors(d / "model.safetensors", "phantom classifier weights"),
                                           strict=cfg["arch"] == ARCH)
    except RuntimeError as err:
        raise MedsdError(f"phantom classifier: {d}/model.safetensors does not match its config.json "
                         f"({first_line(err, 160)}); retrain the classifier") from None
    model.reads_side_and_severity = not missing
    return model.eval()


_ARCH_V1 = "medsd-phantom-cnn-v1"


# ------------------------------------------------------------- training ------------------------------------


def load_phantom_split(
    data_dir: str | Path, input_size: int, findings: list[str] | None = None
) -> tuple[Tensor, Tensor, list[str]]:
    """Images [N, 1, s, s] (uint8), labels [N, F] (float) and patient ids read from ``train.csv``."""
    d = Path(data_dir)
    csv_path = d / "train.csv"
    if not csv_path.is_file():
        raise MedsdError(f"phantom classifier: {csv_path} not found; render a set with `medsd data phantom`")
    names = list(PHANTOM_FINDINGS if findings is None else findings)
    rows = list(csv.DictReader(io.StringIO(read_text(csv_path, "phantom label CSV"), newline="")))
    missing = [n for n in names if rows and n not in rows[0]]
    if missing or not rows:
        raise MedsdError(f"phantom classifier: {csv_path} is empty or lacks label columns {missing}")
    images = np.empty((len(rows), 1, input_size, input_size), dtype=np.uint8)
    readable = np.ones(len(rows), dtype=bool)
    for i, row in enumerate(rows):
        try:
            with Image.open(d / row["Path"]) as im:
                arr = np.asarray(im.convert("F").resize((input_size, input_size), Image.BILINEAR, reducing_gap=2.0))
                scale = 65535.0 if im.mode.startswith("I") else 255.0
        except (OSError, ValueError) as err:  # one bad file is skipped and reported, not the end of training
            log.warning("phantom classifier: skipping unreadable image %s (%s)", d / row["Path"], err)
            readable[i] = False
            continue
        images[i, 0] = np.clip(np.rint(arr / scale * 255), 0, 255).astype(np.uint8)
    if not readable.any():
        raise MedsdError(f"phantom classifier: none of the {len(rows)} images listed in {csv_path} could be read")
    rows = [row for row, ok in zip(rows, readable, strict=True) if ok]
    images = images[readable]
    labels = np.array([[float(row[n] or 0) for n in names] for row in rows], dtype=np.float32)
    patients = [row["Path"].split("/")[1] for row in rows]
    return torch.from_numpy(images), torch.from_numpy(labels), patients


def _augment(x: Tensor, g: torch.Generator) -> Tensor:
    """Shift by up to 4 px, jitter contrast/brightness, blur half the batch a little, add noise.

    The blur matters: without it the network finds consolidation by its pixel-scale texture alone, a shortcut
    that a blur of sigma 0.75 px at 64 px (or any autoencoder's reconstruction) removes while the opacity stays
    plainly visible; a judge of generated images must look at the finding, not at that texture.
    """
    b, _, s, _ = x.shape
    pad = 4
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=g).tolist()
    x = xp[:, :, dy : dy + s, dx : dx + s]
    sigma = (0.3 + 0.9 * torch.rand(b, generator=g)) * (s / 64) * (torch.rand(b, generator=g) < 0.5)
    x = gaussian_blur(x, sigma)
    c = 1 + 0.15 * (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1)
    m = 0.05 * (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1)
    noise = 0.03 * torch.rand(b, 1, 1, 1, generator=g)
    x = (x - 0.5) * c + 0.5 + m + noise * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Blur each image [B, 1, H, W] with its own Gaussian sigma [B] in pixels (0 = unchanged).

    torchvision's gaussian_blur takes one sigma per call; this is the per-sample version as a grouped,
    separable convolution.
    """
    b = x.shape[0]
    radius = max(1, int(torch.ceil(3 * sigma.max()).item())) if len(sigma) else 1
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None].to(x.dtype).clamp(min=1e-3) ** 2))
    k = k / k.sum(1, keepdim=True)
    y = x.transpose(0, 1)  # [1, B, H, W]: one group per image
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), k[:, None, None, :], groups=b)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k[:, None, :, None], groups=b)
    return y.transpose(0, 1)


@torch.no_grad()
def judge_images(model: PhantomClassifier, images: Tensor, batch_size: int = 256) -> dict[str, np.ndarray]:
    """What the judge reads in images (float in [0, 1], or uint8): finding probabilities [N, F], in-lung
    probabilities [N, L, 2] (left, right) of the lateralised findings `model.lateral`, severity [N, F]."""
    model.eval()
    parts: dict[str, list[Tensor]] = {"probs": [], "side_probs": [], "severity": []}
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size]
        logits, side, severity = model.read(x.float() / 255 if x.dtype == torch.uint8 else x.float())
        parts["probs"].append(torch.sigmoid(logits))
        parts["side_probs"].append(torch.sigmoid(side))
        parts["severity"].append(severity)
    return {k: torch.cat(v).numpy().astype(np.float64) for k, v in parts.items()}


def evaluate_auc(model: PhantomClassifier, images: Tensor, labels: Tensor, batch_size: int = 256) -> dict[str, float]:
    """Per-finding ROC AUC (NaN where a split has only one class)."""
    from sklearn.metrics import roc_auc_score

    model.eval()
    with torch.no_grad():
        probs = torch.cat(
            [torch.sigmoid(model(images[i : i + batch_size].float() / 255)) for i in range(0, len(images), batch_size)]
        ).numpy()
    y = labels.numpy()
    out = {}
    for j, name in enumerate(model.findings):
        out[name] = float(roc_auc_score(y[:, j], probs[:, j])) if 0 < y[:, j].sum() < len(y) else float("nan")
    return out


def evaluate_heads(model: PhantomClassifier, images: Tensor, sides: Tensor, severity: Tensor) -> dict[str, dict]:
    """Side accuracy and severity Spearman on the images that carry each finding (targets as in training)."""
    read = judge_images(model, images)
    return held_out_head_metrics(read["side_probs"], read["severity"], sides.numpy(), severity.numpy(),
                                 model.findings)


def _fit(model: PhantomClassifier, x: Tensor, y: Tensor, sides: Tensor, severity: Tensor, *, epochs: int,
         batch_size: int, lr: float, seed: int, x_alt: Tensor | None = None, alt_share: float = 0.0) -> None:
    """AdamW + one-cycle schedule, class-balanced BCE (+ side and severity losses), light augmentation.
    `x_alt`: another rendering of each image (same labels), used in place of it for `alt_share` of the draws."""
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = max(1, (len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    # Rare findings would otherwise be under-weighted; cap the weight so tiny sets stay stable.
    pos = y.mean(0).clamp(min=1e-3)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=((1 - pos) / pos).clamp(max=10.0))
    g = torch.Generator().manual_seed(seed)
    for _epoch in tqdm(range(epochs), desc="phantom-classifier", unit="epoch", disable=None):
        model.train()
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            if len(idx) < 2:  # BatchNorm needs more than one sample
                continue
            xb = x[idx]
            if x_alt is not None:
                pick = torch.rand(len(idx), generator=g) < alt_share
                xb = torch.where(pick[:, None, None, None], x_alt[idx], xb)
            xb = _augment(xb.float() / 255, g).contiguous(memory_format=torch.channels_last)
            logits, side_logits, sev = model.read(xb)
            loss = loss_fn(logits, y[idx]) + head_loss(side_logits, sev, sides[idx], severity[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def train_reference_classifier(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    epochs: int = 30,
    batch_size: int = 64,
    input_size: int = 64,
    seed: int = 0,
    val_fraction: float = 0.2,
    lr: float = 3e-3,
    threads: int | None = 1,
    autoencoder: str | Path | None = None,
    reconstruction_share: float = 0.5,
) -> dict[str, Any]:
    """Train the reference classifier on a phantom set, hold out ``val_fraction`` of the *patients*, and
    write model.safetensors, config.json and metrics.json (per-finding AUC) into ``out_dir``.

    ``threads``: torch CPU threads while training. The model is small: on 2 shared cores one thread was
    3x faster than two (0.32 s vs 1.04 s per batch of 64, channels-last); None keeps torch's setting.
    ``autoencoder``: an `AutoencoderKL` folder; `reconstruction_share` of the training draws are then the
    image's reconstruction (`medsd.phantom.reconstruct`), so that the judge of a latent diffusion model's images
    does not read the autoencoder's traces as findings, and metrics.json also holds the AUC on reconstructions.
    """
    t0 = time.time()
    torch.manual_seed(seed)
    images, labels, patients = load_phantom_split(data_dir, input_size)
    with open(Path(data_dir) / "train.csv", newline="") as fh:
        paths = [row["Path"] for row in csv.DictReader(fh)]
    sides, severity = side_severity_targets(data_dir, paths, PHANTOM_FINDINGS)
    uniq = sorted(set(patients))
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(val_fraction * len(uniq)))) if val_fraction > 0 else 0
    val_patients = set(rng.permutation(uniq)[:n_val].tolist())
    is_val = torch.tensor([p in val_patients for p in patients])
    tr_x, tr_y, tr_side, tr_sev = images[~is_val], labels[~is_val], sides[~is_val], severity[~is_val]
    va_x, va_y = images[is_val], labels[is_val]
    if len(tr_x) == 0:
        raise MedsdError(f"phantom classifier: no training images left in {data_dir} after the split")
    model = PhantomClassifier(PHANTOM_FINDINGS, input_size).to(memory_format=torch.channels_last)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        recon = None
        if autoencoder is not None:
            from medsd.phantom.reconstruct import reconstruct_images

            recon = reconstruct_images(autoencoder, images)
        _fit(model, tr_x, tr_y, tr_side, tr_sev, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
             x_alt=None if recon is None else recon[~is_val], alt_share=reconstruction_share)
        auc = evaluate_auc(model, va_x, va_y) if len(va_x) else {}
        heads = evaluate_heads(model, va_x, sides[is_val], severity[is_val]) if len(va_x) else {}
        recon_auc = evaluate_auc(model, recon[is_val], va_y) if recon is not None and len(va_x) else None
    finally:
        torch.set_num_threads(old_threads)
    model = model.to(memory_format=torch.contiguous_format)
    save_reference_classifier(model, out_dir)
    finite = [v for v in auc.values() if v == v]
    metrics = {
        "auc": auc,
        **heads,
        "mean_auc": float(np.mean(finite)) if finite else float("nan"),
        "min_auc": float(np.min(finite)) if finite else float("nan"),
        "n_train": int(len(tr_x)),
        "n_val": int(len(va_x)),
        "n_val_patients": n_val,
        "epochs": epochs,
        "input_size": input_size,
        "seed": seed,
        "params": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.time() - t0, 1),
        "positives_val": {n: int(va_y[:, j].sum()) for j, n in enumerate(PHANTOM_FINDINGS)},
    }
    if recon_auc is not None:
        metrics.update(autoencoder=str(autoencoder), reconstruction_share=reconstruction_share,
                       auc_reconstructed=recon_auc)
    (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("phantom classifier: per-finding AUC %s", {k: round(v, 3) for k, v in auc.items()})
    return metrics
