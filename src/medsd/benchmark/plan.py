"""The plan of an adaptation benchmark: which findings are held out, how many examples, which methods, budgets.

The default grid (13 methods x 3 example counts x 2 held-out findings = 78 runs) is sized for about 65 minutes
on 2 CPU cores once the base exists: every run trains for `run_minutes` (30 s), then generates and judges
`images_per_run` (48) images in one batch (20 DDIM steps, about 16 s of one core), so a run costs about 55 s.
The base (phantom sets, judge, and the text-to-image model that never saw the held-out findings) takes about
20 minutes more; `--base DIR` reuses one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from medsd.phantom.render import FINDINGS
from medsd.phantom.text_model import TextModelPlan

DEFAULT_HELD_OUT = ("Pneumothorax", "Lung Lesion")
QUICK_METHODS = ("ti_v8", "lora_unet_r4", "lora_unet_te_r4", "dreambooth_prior", "full_unet_te", "swap_minilm")


@dataclass
class AdaptationPlan:
    """Sizes and budgets of one adaptation benchmark run (defaults: the full grid)."""

    held_out: tuple[str, ...] = DEFAULT_HELD_OUT  # findings the base never sees, each adapted to in turn
    # The held-out findings this call adapts to (None: all of them): one finding's runs without the other's,
    # on the same base (which still never saw any held-out finding).
    adapt: tuple[str, ...] | None = None
    n_examples: tuple[int, ...] = (5, 25, 100)  # training images of the new finding per adaptation run
    methods: tuple[str, ...] | None = None  # method ids of `medsd.benchmark.methods.METHODS`; None: all of them
    learning_rates: tuple[tuple[str, float], ...] = ()  # (method id, rate): runs of that method at another rate
    run_minutes: float | None = 0.5  # training.max_minutes of every run (the same for every method)
    max_steps: int = 5000  # an upper bound the time budget stops runs before; without run_minutes, the budget
    batch_size: int = 8
    # Evaluation: images per prompt form (label prompt, report prompt) asking for the new finding, and per form
    # and base condition (no finding and each base finding), all generated in one batch per run.
    new_images: int = 12
    base_images: int = 3
    sample_steps: int = 20
    guidance: float = 3.0
    generate_batch: int = 64
    # Real phantom sets (all findings): the judge's training set, held-out images (FID reference), and per
    # held-out finding a pool rendered with that finding only (~70 % of its images carry it).
    n_judge: int = 2000
    n_heldout: int = 400
    n_pool: int = 160
    judge_epochs: int = 25
    class_images: int = 50  # DreamBooth prior-preservation images, drawn once by the base model
    rehearsal_images: int = 100  # base-finding images the rehearsal settings add to the N examples
    # Rehearsal settings: repeat the N examples so they make about this share of the training rows (kohya's
    # num_repeats); None: each once, so at N = 5 with 100 base-finding images they are 5 % of what a batch draws.
    example_share: float | None = None
    # The adaptation runs' loss counts 1 + W inside the masks the base's plan names in `masked_regions` (the
    # heart's region and the run's findings'; `training.masked_loss_weight`; 0: the plain loss of the README's
    # table).
    masked_loss_weight: float = 0.0
    # The base keeps the size's own U-Net (two ResNets per level) and the plain loss: the README's table was
    # measured with them.
    base: TextModelPlan = field(default_factory=lambda: TextModelPlan(unet_config={}, masked_loss_weight=0.0))

    @property
    def size(self) -> int:
        return self.base.size

    @property
    def base_findings(self) -> list[str]:
        """The findings the base learns (every phantom finding but the held-out ones), in the phantom's order."""
        return [f for f in FINDINGS if f not in self.held_out]

    @property
    def adapted(self) -> tuple[str, ...]:
        """The held-out findings adapted to in this call, in the order given."""
        return self.adapt or self.held_out

    @property
    def new_finding_images(self) -> int:
        """Generated per run with the new finding asked: both prompt forms."""
        return 2 * self.new_images

    @property
    def other_images(self) -> int:
        """Generated per run without it: both prompt forms of no finding and of each base finding."""
        return 2 * self.base_images * (1 + len(self.base_findings))

    @property
    def images_per_run(self) -> int:
        return self.new_finding_images + self.other_images

    @classmethod
    def quick(cls) -> AdaptationPlan:
        """One example count (100, the target's) and six methods (every family, LoRA with and without the text
        encoder): about 12 minutes once the base exists."""
        return cls(n_examples=(100,), methods=QUICK_METHODS)

    @classmethod
    def smoke(cls) -> AdaptationPlan:
        """The smallest plan that still runs every stage (tests): test-size model at 32 px, a few steps."""
        from medsd.demo import DemoPlan

        base = DemoPlan.smoke().model  # the demo's smallest text model: it follows every stage the model gains
        # Two steps, not a time budget: the same runs on a loaded machine (tests) as on a quiet one.
        return cls(n_examples=(2,), run_minutes=None, max_steps=2, batch_size=2, new_images=2, base_images=1,
                   sample_steps=2, generate_batch=32, n_judge=48, n_heldout=12, n_pool=12, judge_epochs=1,
                   class_images=2, rehearsal_images=2, base=base)

    def with_base_minutes(self, minutes: float) -> AdaptationPlan:
        """A copy whose base trains for `minutes` in all, split as the default plan splits it (autoencoder, report
        reader, text-to-image model)."""
        b = self.base
        scale = minutes / (b.autoencoder_minutes + b.reader_minutes + b.diffusion_minutes)
        base = replace(b, autoencoder_minutes=b.autoencoder_minutes * scale, reader_minutes=b.reader_minutes * scale,
                       diffusion_minutes=b.diffusion_minutes * scale)
        return replace(self, base=base)

    def with_options(self, **changes: object) -> AdaptationPlan:
        """A copy with the given fields replaced (None values are ignored: an option left unset)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})
