"""Generation throughput: medsd's sampler vs a plain diffusers StableDiffusionPipeline, same settings, one run.

    python benchmarks/bench_generate.py [--steps 20] [--batch 8] [--repeats 3] [--threads 1]
    python benchmarks/bench_generate.py --sd15 --size 512 --steps 50 --batch 4 --dtype float16   # on a GPU

Default: the demo-size tiny model (`build_tiny_model(size="demo")`) at 64 px, PNDM, guidance 7.5, batch 8,
20 steps. The two are timed alternately (warm-up first) so machine load hits both alike, and the images are
compared (medsd reproduces diffusers' noise and arithmetic). A third row times `medsd.generate(...)` end to
end (PNG + metadata writing included). `--sd15` builds a randomly initialised SD1.5-architecture model instead
(speed does not need pretrained weights). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def build_sd15() -> object:
    """A randomly initialised SD1.5-architecture pipeline in memory (U-Net 860M, VAE, 12-layer CLIP text)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from medsd.tokenizer import load_clip_tokenizer

    tokenizer = load_clip_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, num_hidden_layers=12,
                                        num_attention_heads=12, intermediate_size=3072, max_position_embeddings=77,
                                        hidden_act="quick_gelu", projection_dim=768))
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # SD1.5 defaults
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--scheduler", default="pndm")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--sd15", action="store_true", help="SD1.5-architecture model instead of the demo model")
    args = parser.parse_args()

    from medsd.generate import generate
    from medsd.generate.loading import from_pipeline, load_model
    from medsd.generate.sampling import Condition, sample
    from medsd.generate.schedulers import make_scheduler
    from medsd.models import build_tiny_model, resolve_device, resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_generate_"))
    if args.sd15:
        sd15 = build_sd15().to(resolve_device(args.device))
        if resolve_dtype(args.dtype) != torch.float32:
            sd15 = sd15.to(dtype=resolve_dtype(args.dtype))
        sd15.set_progress_bar_config(disable=True)
        model = from_pipeline(sd15, "sd15-architecture-random")
    else:
        model = load_model(build_tiny_model(tmp / "model", size="demo"), device=args.device, dtype=args.dtype)
    pipe = model.pipe
    pipe.scheduler = make_scheduler(args.scheduler, model.scheduler_config)
    prompt, n = "a chest x-ray with cardiomegaly and pleural effusion", args.batch
    seeds = list(range(n))
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)

    def run_medsd() -> np.ndarray:
        return sample(model, [Condition.from_prompt(prompt)] * n, seeds, args.steps, args.guidance, args.scheduler,
                      args.size, args.size)

    def run_diffusers() -> np.ndarray:
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        return pipe([prompt] * n, num_inference_steps=args.steps, guidance_scale=args.guidance, height=args.size,
                    width=args.size, generator=gens, output_type="np").images

    def run_api() -> None:
        generate(model, prompt, out_dir=tmp / f"out{time.perf_counter_ns()}", num_images=n, batch_size=n,
                 steps=args.steps, guidance=args.guidance, scheduler=args.scheduler, height=args.size,
                 width=args.size, progress=False)

    runs = {"diffusers StableDiffusionPipeline": run_diffusers, "medsd sampler": run_medsd,
            "medsd generate() incl. PNG+CSV": run_api}
    diff = float(np.abs(run_medsd() - run_diffusers()).max())  # also the warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)

    device = torch.cuda.get_device_name() if model.device.type == "cuda" else platform.processor() or "cpu"
    what = "SD1.5-architecture (random weights)" if args.sd15 else "demo tiny model"
    print(f"\n{what}, {args.size} px, {args.steps} steps {args.scheduler}, guidance {args.guidance}, batch {n}, "
          f"{args.dtype} on {model.device} ({device}), torch threads {torch.get_num_threads()}, "
          f"best of {args.repeats}\n")
    print("| pipeline | s / batch (best) | s / batch (median) | images/s |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {min(ts):.3f} | {float(np.median(ts)):.3f} | {n / min(ts):.2f} |")
    print(f"\nmax |medsd - diffusers| pixel difference: {diff:.2e} (same seeds)")


if __name__ == "__main__":
    main()
