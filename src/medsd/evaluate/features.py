"""Feature extractors for FID/KID/PRDC, memorization and faithfulness, in three feature spaces.

Every extractor is a callable ``images [B, C, H, W] in [0, 1] -> features [B, D]`` (C = 1 grey or 3 colour);
each one adapts the input (size, channels, value range) to its network: Inception sees colour as colour and
grey repeated to RGB, the greyscale networks (phantom classifier, torchxrayvision) see luminance.
Pretrained Inception-v3 and torchxrayvision weights come from the internet, which is not reachable here, so
both take a local file and fail with a message naming the option when it is missing. Weights are read with
safetensors or ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

from medsd.errors import MedsdError

log = logging.getLogger(__name__)

Extractor = Callable[[torch.Tensor], torch.Tensor]
SPACES = ("phantom", "inception", "xrv")

# torchxrayvision's "all" DenseNet predicts these 18 outputs (its default_pathologies order).
XRV_PATHOLOGIES = [
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis",
    "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia",
    "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum",
]


@dataclass
class Scorer:
    """A classifier used to score images: ``probs(images) -> [B, F]`` probabilities for ``findings``."""

    findings: list[str]
    probs: Callable[[torch.Tensor], torch.Tensor]
    name: str = "classifier"
    extra: dict = field(default_factory=dict)


def load_state_dict_file(path: str | Path, option: str) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a plain tensor ``.pt/.pth`` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise MedsdError(f"weights file {path} given to {option} does not exist; pass an existing file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling refusal means "not a plain state dict"
        raise MedsdError(
            f"{path} (from {option}) is not a plain state dict loadable with weights_only=True ({err}); "
            "convert it once with: python -c \"import torch, safetensors.torch as s; "
            "m = torch.load('IN', weights_only=False); "
            "s.save_file((m if isinstance(m, dict) else m.state_dict()), 'OUT.safetensors')\""
        ) from err
    if not isinstance(state, dict):
        raise MedsdError(f"{path} (from {option}) does not hold a state dict")
    return state


@torch.no_grad()
def extract_features(extractor: Extractor, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Run ``extractor`` over ``images`` in batches; returns float32 features ``[N, D]`` on the CPU."""
    chunks = [extractor(images[i : i + batch_size]).float().flatten(1).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(chunks)


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights, as PIL's convert("L")


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """``[B, 1 or 3, H, W]`` → ``channels`` channels: grey is repeated to RGB, RGB becomes luminance."""
    if images.shape[1] == channels:
        return images
    if channels == 3 and images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    if channels == 1 and images.shape[1] == 3:
        return (images * torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)).sum(
            dim=1, keepdim=True)
    raise MedsdError(f"images have {images.shape[1]} channels; only 1 (grey) and 3 (RGB) are supported")


def input_channels(model: torch.nn.Module, default: int = 1) -> int:
    """Channels a network takes: those of its first convolution."""
    first = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    return first.in_channels if first is not None else default


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


# ---------------------------------------------------------------- phantom reference classifier (offline)
def load_phantom_classifier(path: str | Path):
    """Load the phantom reference classifier (a folder with model.safetensors + config.json)."""
    path = Path(path)
    if not (path / "model.safetensors").is_file():
        raise MedsdError(
            f"phantom classifier folder {path} has no model.safetensors; pass --phantom-classifier DIR "
            "pointing at the reference classifier written by `medsd data phantom`"
        )
    from medsd.phantom.judge import load_reference_classifier

    return load_reference_classifier(path).eval()


def phantom_extractor(model: torch.nn.Module) -> Extractor:
    """Features of a classifier with ``.features(x)`` (the phantom reference classifier, or any such model)."""
    size = getattr(model, "input_size", None)
    channels = input_channels(model)

    def run(x: torch.Tensor) -> torch.Tensor:
        x = to_channels(x, channels)
        return model.features(_resize(x, size) if size else x)

    return run


def phantom_scorer(model: torch.nn.Module) -> Scorer:
    """Probabilities from a classifier whose ``forward`` returns logits ``[B, F]`` for ``model.findings``."""
    size = getattr(model, "input_size", None)
    channels = input_channels(model)

    def probs(x: torch.Tensor) -> torch.Tensor:
        x = to_channels(x, channels)
        return torch.sigmoid(model(_resize(x, size) if size else x))

    return Scorer(findings=list(model.findings), probs=probs, name="phantom reference classifier")


# ---------------------------------------------------------------- Inception-v3 (torch-fidelity weights)
def load_inception(weights: str | Path | None) -> torch.nn.Module:
    """torch-fidelity's FID Inception-v3 with weights from a local file (never downloaded)."""
    if weights is None:
        raise MedsdError(
            "FID-Inception needs the Inception-v3 FID weights, which cannot be downloaded here; pass "
            "--inception-weights FILE (torch-fidelity's pt_inception-2015-12-05-6726825d.pth or a "
            ".safetensors of it), or use --space phantom"
        )
    state = load_state_dict_file(weights, "--inception-weights")
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    # torch-fidelity only knows "download" or an unsafe torch.load(weights_only=False); hand it the
    # safely loaded state dict through its download hook instead.
    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: state):
        return fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).eval()


def inception_extractor(weights: str | Path | None) -> Extractor:
    """2048-d pool features of Inception-v3 (colour as is, grey repeated to RGB; uint8 as torch-fidelity expects)."""
    model = load_inception(weights)

    def run(x: torch.Tensor) -> torch.Tensor:
        rgb = (to_channels(x, 3).clamp(0, 1) * 255).round().to(torch.uint8)
        return model(rgb)[0]

    return run


# ---------------------------------------------------------------- torchxrayvision DenseNet-121 ("FID-XRV")
def load_xrv(weights: str | Path | None) -> torch.nn.Module:
    """torchxrayvision DenseNet-121 ("all" layout, 18 outputs) from a local state dict file."""
    if weights is None:
        raise MedsdError(
            "FID-XRV needs torchxrayvision DenseNet-121 weights, which cannot be downloaded here; pass "
            "--xrv-weights FILE (a .safetensors state dict of densenet121-res224-all), or use --space phantom"
        )
    state = load_state_dict_file(weights, "--xrv-weights")
    import torchxrayvision as xrv

    model = xrv.models.DenseNet(weights=None, num_classes=len(XRV_PATHOLOGIES))
    state.pop("op_threshs", None)  # a buffer that is None in a freshly built model
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise MedsdError(f"--xrv-weights {weights} does not fit torchxrayvision's DenseNet-121: {err}") from err
    return model.eval()


def _xrv_input(x: torch.Tensor) -> torch.Tensor:
    # torchxrayvision models expect 224 px, one channel, values in [-1024, 1024].
    return _resize(to_channels(x, 1), 224) * 2048.0 - 1024.0


def xrv_extractor(weights: str | Path | None) -> Extractor:
    """1024-d pooled DenseNet-121 features of torchxrayvision (as RoentGen's FID-XRV)."""
    model = load_xrv(weights)
    return lambda x: model.features2(_xrv_input(x))


def xrv_scorer(weights: str | Path | None) -> Scorer:
    """torchxrayvision DenseNet-121 probabilities for its 18 pathologies (real chest X-rays only)."""
    model = load_xrv(weights)
    return Scorer(XRV_PATHOLOGIES, lambda x: torch.sigmoid(model.classifier(model.features2(_xrv_input(x)))),
                  name="torchxrayvision DenseNet-121")


def make_extractor(
    space: str,
    phantom_classifier: str | Path | torch.nn.Module | None = None,
    inception_weights: str | Path | None = None,
    xrv_weights: str | Path | None = None,
) -> Extractor:
    """The extractor for a feature space name (``phantom``, ``inception`` or ``xrv``)."""
    if space == "phantom":
        if phantom_classifier is None:
            raise MedsdError("--space phantom needs --phantom-classifier DIR (the reference classifier folder)")
        model = phantom_classifier
        if not isinstance(model, torch.nn.Module):
            model = load_phantom_classifier(model)
        return phantom_extractor(model)
    if space == "inception":
        return inception_extractor(inception_weights)
    if space == "xrv":
        return xrv_extractor(xrv_weights)
    raise MedsdError(f"unknown feature space {space!r}; choose one of {', '.join(SPACES)}")
