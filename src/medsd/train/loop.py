"""The one training loop shared by every method.

`train(cfg)` reads as the algorithm: load the model, let the method pick what trains, get latents (cached
or encoded on the fly), then for every batch

    1. latents  <- cached distribution or VAE(pixels), sampled, scaled
    2. noise, timesteps t, noisy = scheduler.add_noise(latents, noise, t)
    3. cond     <- method.encode_condition(batch)         (cached when the text encoder is frozen)
    4. pred     <- unet(noisy, t, cond)
    5. loss     <- method.loss(pred, target = noise | velocity, min-SNR weights)
    6. backward, clip, optimizer / LR step (accelerate handles precision, accumulation, processes)
    7. method.after_step(), EMA; every `log_every` steps (and before a checkpoint, a validation or the end)
       read the losses back from the device at once, stop on NaN / inf, log; checkpoint, validate

Everything method-specific sits behind `medsd.train.methods.Method`; the set-up helpers live in
`medsd.train.setup` and the arithmetic of steps 1-5 in `medsd.train.step`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from medsd.config_base import dump_yaml
from medsd.errors import MedsdError, first_line
from medsd.train.cache import PromptEmbeddingCache
from medsd.train.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from medsd.train.config import TrainingConfig
from medsd.train.methods import Method
from medsd.train.precision import cpu_fp32_math, cpu_fp32_math_mode
from medsd.train.preflight import check_output_folders, check_sizes_fit_model
from medsd.train.report import UnreadLosses, log_losses, tensorboard_writer
from medsd.train.setup import (
    build_run_method,
    compile_unet,
    make_ema,
    make_lr_scheduler,
    make_optimizer,
    oom_advice,
    refit_lr_schedule,
    text_cache,
    training_data,
)
from medsd.train.step import diffusion_loss

log = logging.getLogger(__name__)

PRECISIONS = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainResult:
    """What a run did: where it wrote, how far it got, the per-step losses and its artefacts."""

    output_dir: Path
    step: int
    losses: dict[int, float] = field(default_factory=dict)
    artefacts: dict[str, str] = field(default_factory=dict)
    latent_cache: str | None = None
    images_per_second: float = 0.0
    num_processes: int = 1
    cpu_fp32_math: str = "ieee"  # what `training.cpu_fp32_math` resolved to for this run
    method: Method | None = field(default=None, repr=False)  # the trained modules, for programmatic use


class EpochSampler(Sampler[int]):
    """A fresh seeded permutation per epoch: the data order depends only on (seed, epoch), so it resumes."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def use_epoch(self, epoch: int) -> None:
        """Select the permutation of `epoch` (not `set_epoch`, which accelerate would call on its own)."""
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


@dataclass
class Run:
    """Everything one training run holds, built once by `_prepare` and read by the step loop."""

    cfg: Any
    accelerator: Any
    method: Method
    models: list[torch.nn.Module]
    loader: Any
    sampler: EpochSampler
    optimizer: Any
    lr_scheduler: Any
    ema: Any
    encode_text: PromptEmbeddingCache | None
    max_steps: int
    weight_dtype: torch.dtype
    writer: Any = None
    fitted_steps: int | None = None  # max_steps after fitting the schedule to max_minutes (None: not fitted)
    # The trained parameters, listed once: walking every module's parameters costs milliseconds per step.
    trainable: list[torch.nn.Parameter] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return Path(self.cfg.output_dir)

    @property
    def images_per_step(self) -> int:
        tc = self.cfg.training
        return tc.batch_size * tc.gradient_accumulation_steps * self.accelerator.num_processes


def train(
    cfg: Any,
    dataset: Dataset | None = None,
    resume: str | None = None,
    callbacks: Sequence[Callable[[int, float], None]] = (),
) -> TrainResult:
    """Train `cfg.method` on `dataset` (default: `build_dataset(cfg.data, split="train")`) and save artefacts.

    `resume` is `latest` or a checkpoint folder. `callbacks(step, loss)` run after every optimizer step (and so
    make the loop read the loss back from the device every step instead of every `training.log_every` steps).
    """
    run, cache_note = _prepare(cfg, dataset)
    step, epoch, skip = _resume(run, resume)
    math_mode = cpu_fp32_math_mode(cfg.training.cpu_fp32_math, run.accelerator.device, cfg.training.mixed_precision)
    result = TrainResult(run.out, step, latent_cache=cache_note, method=run.method,
                         num_processes=run.accelerator.num_processes, cpu_fp32_math=math_mode)
    started = time.perf_counter()
    if math_mode == "bf16":
        log.info("CPU float32 math: bfloat16 inputs, float32 accumulation in convolutions and matmuls "
                 "(training.cpu_fp32_math=%s; ieee for full float32)", cfg.training.cpu_fp32_math)
    try:
        with cpu_fp32_math(math_mode):
            _train_steps(run, result, epoch, skip, callbacks)
    except torch.OutOfMemoryError as err:
        raise MedsdError(oom_advice(cfg.training, err)) from err
    finally:
        if run.writer is not None:
            run.writer.flush()
    result.images_per_second = run.images_per_step * (result.step - step) / max(time.perf_counter() - started, 1e-9)
    run.accelerator.wait_for_everyone()
    if run.accelerator.is_main_process:
        result.artefacts = _save_artefacts(run.method, run.ema, run.out, cfg)
    try:
        if result.step > step:  # the final validation runs after the artefacts are saved: it cannot lose them
            _validate(cfg, run.method, result.step, run.out, run.writer, run.ema, run.accelerator, run.weight_dtype)
    except (MedsdError, ValueError, RuntimeError) as err:
        detail = first_line(err)
        raise MedsdError(f"training finished and its artefacts are saved in {run.out}, but the final validation "
                         f"failed ({type(err).__name__}: {detail}); check the recipe's `validation:` section") from err
    finally:
        if run.accelerator.is_main_process:
            run.writer.close()
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    return result


def _prepare(cfg: Any, dataset: Dataset | None) -> tuple[Run, str | None]:
    """Accelerator, model + method, data (cached or not), optimizer, LR schedule, EMA, TensorBoard writer."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed

    tc: TrainingConfig = cfg.training
    # accelerate keeps precision settings in a process-wide singleton; forget the previous run's (several runs
    # in one process: tests, notebooks, the demo). The process group (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    # model.device: cpu forces CPU (also under `accelerate launch`, where it makes processes join over gloo);
    # otherwise accelerate gives each process its own GPU.
    accelerator = Accelerator(
        mixed_precision=tc.mixed_precision, gradient_accumulation_steps=tc.gradient_accumulation_steps,
        cpu=cfg.model.device == "cpu",
    )
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
        check_output_folders(cfg)
        dump_yaml(cfg, out / "config.yaml")
    weight_dtype = PRECISIONS[tc.mixed_precision]
    method = build_run_method(cfg, accelerator, weight_dtype)
    check_sizes_fit_model(cfg, method)

    if dataset is None:
        from medsd.data.dataset import build_dataset

        dataset = build_dataset(cfg.data, split="train")
    if len(dataset) == 0:
        raise MedsdError("the training data set is empty; check data.root, data.csv and the data filters")
    dataset = method.prepare_data(dataset)
    train_data, cache_note = training_data(cfg, dataset, method, accelerator)

    sampler = EpochSampler(len(train_data), cfg.seed)
    loader = DataLoader(
        train_data, batch_size=tc.batch_size, sampler=sampler, num_workers=tc.dataloader_num_workers,
        collate_fn=getattr(train_data, "collate", None),  # the latent cache reads a whole batch at once
        drop_last=len(train_data) >= tc.batch_size * accelerator.num_processes,
        pin_memory=accelerator.device.type == "cuda", persistent_workers=tc.dataloader_num_workers > 0,
        # Its own generator: starting an iterator draws a worker seed, which must not consume the global RNG
        # (the noise and timesteps come from it, and a resumed run starts one extra iterator).
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    optimizer = make_optimizer(method, tc, accelerator)
    names = list(method.trainable_modules())
    *models, optimizer, loader = accelerator.prepare(*method.trainable_modules().values(), optimizer, loader)
    steps_per_epoch = math.ceil(len(loader) / tc.gradient_accumulation_steps)
    max_steps = tc.num_epochs * steps_per_epoch if tc.num_epochs else tc.max_steps
    lr_scheduler = accelerator.prepare(make_lr_scheduler(tc, optimizer, max_steps, accelerator.num_processes))
    prepared = dict(zip(names, models, strict=True))
    if tc.compile:
        # A frozen U-Net (textual inversion) is compiled too: it is where the step's time goes.
        prepared["unet"] = compile_unet(prepared.get("unet", method.components.unet), tc.compile, accelerator)
        models = [prepared[name] for name in names]
    method.bind(prepared)
    for m in method.trainable_modules().values():
        m.train()
    ema = make_ema(method, tc, accelerator)
    writer = tensorboard_writer(out) if accelerator.is_main_process else None
    run = Run(cfg, accelerator, method, models, loader, sampler, optimizer, lr_scheduler, ema,
              text_cache(tc, method), max_steps, weight_dtype, writer, trainable=method.trainable_parameters())
    log.info("%s; %d samples, %d steps (%d per epoch), %d images per step", method.describe(), len(train_data),
             max_steps, steps_per_epoch, run.images_per_step)
    return run, cache_note


def _resume(run: Run, resume: str | None) -> tuple[int, int, int]:
    """Re-seed, then restore a checkpoint if asked; returns (step, epoch, batches to skip in that epoch)."""
    from accelerate.utils import set_seed

    # Re-seed: building the latent cache (or not, on a hit) must not change the training noise; each process
    # draws its own noise (device_specific) for its own share of the batch.
    set_seed(run.cfg.seed, device_specific=True)
    checkpoint = resolve_resume(run.out, resume)
    if checkpoint is None:
        return 0, 0, 0
    state = load_checkpoint(checkpoint, run.method, run.optimizer, run.lr_scheduler, run.ema, run.accelerator)
    if run.ema is not None:
        run.ema.to(run.accelerator.device)
    step, epoch, skip = state["step"], state["epoch"], state["batches_in_epoch"]
    tc = run.cfg.training
    if state.get("fitted_max_steps") and tc.max_minutes and tc.fit_schedule_to_time:
        _set_length(run, min(int(state["fitted_max_steps"]), run.max_steps))
    return (step, epoch + 1, 0) if skip >= len(run.loader) else (step, epoch, skip)


def _train_steps(run: Run, result: TrainResult, epoch: int, skip: int,
                 callbacks: Sequence[Callable[[int, float], None]]) -> None:
    """Epochs of micro-batches until `max_steps` optimizer steps; updates `result.step` and `result.losses`.

    Each step's loss stays on the device until the next read (`medsd.train.report`).
    """
    from tqdm.auto import tqdm

    tc, accelerator, method = run.cfg.training, run.accelerator, run.method
    progress = tqdm(total=run.max_steps, initial=result.step, desc="train",
                    disable=not accelerator.is_local_main_process)
    step_loss, started, first_step = None, time.perf_counter(), result.step
    unread = UnreadLosses()
    # A resumed run keeps the length fitted before; a fresh one fits its schedule to max_minutes as it goes.
    fit = _ScheduleFit(run.max_steps, first_step, started, done=len(FIT_AT) if run.fitted_steps is not None else 0)
    try:
        while result.step < run.max_steps:
            run.sampler.use_epoch(epoch)
            batches, loader = skip, accelerator.skip_first_batches(run.loader, skip) if skip else run.loader
            skip = 0
            for batch in loader:
                with accelerator.accumulate(*run.models):
                    # autocast here too: a frozen U-Net (textual inversion) is not wrapped by accelerate.prepare.
                    with accelerator.autocast():
                        loss = method.training_loss(batch)
                        if loss is None:
                            loss = diffusion_loss(method, batch, method.components.noise_scheduler, tc,
                                                  run.encode_text, accelerator)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and tc.max_grad_norm is not None:
                        accelerator.clip_grad_norm_(run.trainable, tc.max_grad_norm)
                    run.optimizer.step()
                    run.lr_scheduler.step()
                    run.optimizer.zero_grad(set_to_none=True)
                batches += 1
                micro = loss.detach().float() / tc.gradient_accumulation_steps
                step_loss = micro if step_loss is None else step_loss + micro
                if not accelerator.sync_gradients:
                    continue
                result.step += 1
                unread.add(result.step, step_loss)
                step_loss = None
                _fit_to_time(run, fit, result.step, time.perf_counter())
                progress.total = run.max_steps
                if _out_of_time(tc, started, accelerator):
                    log.info("training.max_minutes=%s reached: stopping at step %d", tc.max_minutes, result.step)
                    run.max_steps = progress.total = result.step
                if (callbacks or result.step % tc.log_every == 0 or _checkpoint_due(run, result.step)
                        or _validation_due(run, result.step)):
                    read = unread.read(accelerator, run.out)
                    result.losses.update(read)
                    rate = run.images_per_step * (result.step - first_step) / max(time.perf_counter() - started, 1e-9)
                    log_losses(run.writer, progress, read, tc.log_every, run.max_steps,
                               run.lr_scheduler.get_last_lr()[0], rate)
                progress.update(1)
                _after_step(run, result, callbacks,
                            {"epoch": epoch, "batches_in_epoch": batches, "fitted_max_steps": run.fitted_steps})
                if result.step >= run.max_steps:
                    break
            else:
                epoch += 1
    finally:
        progress.close()


def _checkpoint_due(run: Run, step: int) -> bool:
    return step % run.cfg.training.checkpointing_steps == 0 or step == run.max_steps


def _validation_due(run: Run, step: int) -> bool:
    return step % run.cfg.validation.steps == 0 or step == run.max_steps


FIT_AT = (0.05, 0.25, 0.5, 0.75)  # fractions of max_minutes at which the schedule is (re)fitted to the time left


@dataclass
class _ScheduleFit:
    """Where fitting the LR schedule to `max_minutes` stands in this invocation of the loop."""

    planned: int  # the recipe's max_steps: a fit never goes above it
    first_step: int  # the step this invocation started from
    started: float  # perf_counter() when it started
    done: int = 0  # fits made so far (len(FIT_AT) = no more)
    warm: float | None = None  # perf_counter() when step first_step + 1 (the warm-up step) ended
    last: tuple[int, float] | None = None  # (step, perf_counter()) of the latest fit


def _fit_to_time(run: Run, fit: _ScheduleFit, step: int, now: float) -> None:
    """At 5%, 25%, 50% and 75% of `max_minutes`, set max_steps to what the measured rate fits in the rest.

    The rate is measured since the previous fit (the first: since the first step, model warm-up excluded) and
    includes checkpoints and validation, so each refit follows the machine getting busier or quieter (a process
    that takes a second thread back part-way). max_steps never exceeds the recipe's.
    With several processes, each reports every step whether it has reached the next fraction and what fits (one
    small gather, so no process waits on a collective the others skip); all take the smallest fit, so they agree.
    """
    tc, accelerator = run.cfg.training, run.accelerator
    if not tc.max_minutes or not tc.fit_schedule_to_time or fit.done >= len(FIT_AT):
        return
    if step == fit.first_step + 1:
        fit.warm = now
    budget, elapsed = tc.max_minutes * 60, now - fit.started
    ready = step - fit.first_step >= 3 and elapsed >= FIT_AT[fit.done] * budget
    fits = fit.planned
    if ready:
        since_step, since = fit.last or (fit.first_step + 1, fit.warm)
        rate = (step - since_step) / (now - since)
        fits = min(step + int(0.98 * rate * (budget - elapsed)), fit.planned)
    if accelerator.num_processes > 1:
        votes = accelerator.gather(torch.tensor([[int(ready), fits]], device=accelerator.device)).reshape(-1, 2)
        ready = bool(votes[:, 0].any())
        fits = int(votes[votes[:, 0] > 0, 1].min()) if ready else fits
    if not ready:
        return
    fits = max(fits, step)
    fit.done, fit.last = fit.done + 1, (step, now)
    if fits != run.max_steps:
        log.info("training.max_minutes=%s: %d steps fit in the budget; the LR schedule now ends there (was %d)",
                 tc.max_minutes, fits, run.max_steps)
        _set_length(run, fits)


def _set_length(run: Run, max_steps: int) -> None:
    """Train for `max_steps` in all, the LR schedule spanning exactly that."""
    run.fitted_steps = run.max_steps = max_steps
    refit_lr_schedule(run.lr_scheduler, run.cfg.training, max_steps, run.accelerator.num_processes)


def _out_of_time(tc: TrainingConfig, started: float, accelerator: Any) -> bool:
    """True once `max_minutes` have passed on any process (accelerate's trigger makes every process agree)."""
    if tc.max_minutes is None:
        return False
    late = time.perf_counter() - started > tc.max_minutes * 60
    if accelerator.num_processes == 1:
        return late
    if late:
        accelerator.set_trigger()
    return accelerator.check_trigger()


def _after_step(run: Run, result: TrainResult, callbacks: Sequence[Callable[[int, float], None]],
                position: dict[str, int]) -> None:
    """Step 7: method fix-up, EMA, callbacks, checkpoint and validation when due (losses are read by then)."""
    tc, step = run.cfg.training, result.step
    run.method.after_step()
    if run.ema is not None:
        run.ema.step(run.trainable)
    for callback in callbacks:
        callback(step, result.losses[step])
    if _checkpoint_due(run, step):
        save_checkpoint(run.out, step, run.method, run.optimizer, run.lr_scheduler, run.ema, position,
                        run.accelerator, tc.checkpoints_total_limit)
    if step % run.cfg.validation.steps == 0 and step != run.max_steps:  # the last one runs once the artefacts are saved
        _validate(run.cfg, run.method, step, run.out, run.writer, run.ema, run.accelerator, run.weight_dtype)


def _validate(cfg: Any, method: Method, step: int, out: Path, writer: Any, ema: Any, accelerator: Any,
              weight_dtype: torch.dtype) -> None:
    if accelerator.is_main_process:
        resolution = cfg.validation.resolution or getattr(cfg.data, "resolution", 64)
        method.validate(cfg.validation, step, out, resolution, writer, ema, weight_dtype)
    accelerator.wait_for_everyone()


@contextlib.contextmanager
def _precision_kept(method: Method) -> Iterator[None]:
    """Methods save float32 files by casting the run's own modules; the final validation after them must still
    run in the run's precision, so every tensor's dtype is put back (tensors keep their identity under `.to`)."""
    owners = [method] + ([method.components] if getattr(method, "components", None) is not None else [])
    modules = [m for owner in owners for m in vars(owner).values() if isinstance(m, torch.nn.Module)]
    held = {t: t.dtype for m in modules for t in (*m.parameters(), *m.buffers())}
    try:
        yield
    finally:
        for tensor, dtype in held.items():
            if tensor.dtype != dtype:
                tensor.data = tensor.data.to(dtype)


def _save_artefacts(method: Method, ema: Any, out: Path, cfg: Any) -> dict[str, str]:
    """The method's standard outputs (with EMA weights when kept) plus `artefacts.json` describing them."""
    if ema is not None:
        ema.copy_to(method.trainable_parameters())
    with _precision_kept(method):
        artefacts = method.save_artefacts(out)
    info = {"method": method.name, "base_model": cfg.model.pretrained, "artefacts": artefacts}
    (out / "artefacts.json").write_text(json.dumps(info, indent=1))
    log.info("saved %s", ", ".join(f"{k}: {v}" for k, v in artefacts.items()))
    return artefacts
