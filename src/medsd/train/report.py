"""What the loop reports while it runs: step losses read back from the device in batches, TensorBoard, progress.

Reading a loss makes the host wait for the device (on a GPU, a stall once per step), so the loop keeps each
step's loss on the device and reads all unread ones at once: every `training.log_every` steps, and before
whatever must not act on a non-finite model (checkpoint, validation, the end) or needs the number (callbacks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medsd.train.step import gather_losses, raise_if_not_finite


@dataclass
class UnreadLosses:
    """Step losses still on the device, in step order."""

    steps: list[int] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)

    def add(self, step: int, loss: torch.Tensor) -> None:
        self.steps.append(step)
        self.values.append(loss)

    def read(self, accelerator: Any, out: Path) -> dict[int, float]:
        """All unread losses averaged over processes, in one transfer; NaN / inf stops the run (MedsdError)."""
        steps, values = self.steps, gather_losses(torch.stack(self.values), accelerator)
        self.steps, self.values = [], []
        raise_if_not_finite(steps, values, out)
        return dict(zip(steps, values, strict=True))


def log_losses(writer: Any, progress: Any, losses: dict[int, float], log_every: int, last_step: int, lr: float,
               images_per_second: float) -> None:
    """TensorBoard scalars of the steps on the `log_every` grid (and the last step); the progress bar's numbers."""
    if writer is not None:
        for step, loss in losses.items():
            if step % log_every == 0 or step == last_step:
                writer.add_scalar("train/loss", loss, step)
                writer.add_scalar("train/lr", lr, step)
                writer.add_scalar("train/images_per_second", images_per_second, step)
    progress.set_postfix(loss=f"{losses[max(losses)]:.4f}", img_s=f"{images_per_second:.1f}", refresh=False)


def tensorboard_writer(out: Path) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(out / "logs"))
