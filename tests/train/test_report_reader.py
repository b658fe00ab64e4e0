"""The report reader: a text encoder trained to read findings, side and severity from report text."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from medsd.train.loop import train
from medsd.train.report_reader import _targets

FINDINGS = ("Cardiomegaly", "Consolidation", "Lung Lesion", "Pneumothorax", "Pleural Effusion")


def test_targets_are_what_the_labeler_reads() -> None:
    presence, sides, severity = _targets("Moderate cardiomegaly. Small right pleural effusion. No pneumothorax.",
                                         FINDINGS)
    assert presence == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert sides[8:10] == [0.0, 1.0] and all(math.isnan(v) for v in sides[:8])  # effusion: right lung only
    assert severity[0] == 0.5 and severity[4] == 0.0 and math.isnan(severity[3])
    presence, sides, severity = _targets("A chest X-ray with Cardiomegaly and Pleural Effusion", FINDINGS)
    assert presence == [1.0, 0.0, 0.0, 0.0, 1.0] and all(math.isnan(v) for v in sides + severity)


class ReportPrompts(torch.utils.data.Dataset):
    """Two contrasting reports, repeated: the encoder must tell their findings and sides apart."""

    prompts = ["Large left pneumothorax. Heart size is normal.", "Small right pleural effusion. No pneumothorax."]

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": torch.zeros(3, 32, 32), "prompt": self.prompts[index % 2], "labels": torch.zeros(2),
                "patient_id": str(index), "path": f"r/{index}.png", "index": index}


def test_reader_learns_and_saves_a_pipeline_with_its_text_encoder(tiny_model_dir: Path, tmp_path: Path,
                                                                  recipe) -> None:
    from diffusers import StableDiffusionPipeline

    cfg = recipe(tiny_model_dir, tmp_path / "run", method="report_reader", max_steps=30, batch_size=4,
                 learning_rate=3e-3, cache_latents=False, checkpointing_steps=100)
    result = train(cfg, dataset=ReportPrompts())
    assert result.losses[30] < 0.5 * result.losses[1]
    pipe = StableDiffusionPipeline.from_pretrained(result.artefacts["pipeline"])
    base = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    assert not torch.equal(pipe.text_encoder.get_input_embeddings().weight,
                           base.text_encoder.get_input_embeddings().weight)
    assert torch.equal(pipe.unet.conv_in.weight, base.unet.conv_in.weight)  # only the text encoder trains
    ids = pipe.tokenizer(ReportPrompts.prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        after = pipe.text_encoder(ids)[0].flatten(1)
        before = base.text_encoder(ids)[0].flatten(1)
    # The two reports' token states move apart: what the U-Net will read now differs between them.
    assert torch.cosine_similarity(after[0], after[1], dim=0) < torch.cosine_similarity(before[0], before[1], dim=0)
