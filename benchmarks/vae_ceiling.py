"""How much of each finding survives the VAE: the faithfulness ceiling of a latent diffusion model.

Scores real phantom images, the same images blurred (Gaussian, sigma 1 px at 64 px: how much the judge
leans on pixel-scale texture) and their VAE reconstructions with the phantom reference classifier; a finding
whose AUC drops on reconstructions cannot be generated faithfully, however long the diffusion model trains.

    python benchmarks/vae_ceiling.py --vae demo_out/runs/autoencoder/vae --classifier demo_out/classifier \
        --data demo_out/data/phantom_heldout
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.metrics import roc_auc_score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", required=True, help="AutoencoderKL folder (e.g. an autoencoder run's vae/)")
    parser.add_argument("--classifier", required=True, help="phantom reference classifier folder")
    parser.add_argument("--data", required=True, help="phantom folder (held-out images)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    args = parser.parse_args()

    from medsd.evaluate.io import labels_for, load_image_folder
    from medsd.phantom.judge import gaussian_blur, load_reference_classifier
    from medsd.phantom.reconstruct import reconstruct_images

    classifier = load_reference_classifier(args.classifier).eval()
    images, frame = load_image_folder(args.data, args.size)
    labels = labels_for(frame, classifier.findings)
    recon = reconstruct_images(args.vae, images)
    with torch.no_grad():
        blurred = gaussian_blur(images, torch.full((len(images),), args.size / 64))
        scores = {name: classifier(x).sigmoid().numpy()
                  for name, x in (("real", images), ("blurred", blurred), ("reconstructed", recon))}
    print(f"{len(images)} images, mean L1 reconstruction error {float((recon - images).abs().mean()):.4f}\n")
    # False positives (images without the finding that the judge calls positive at 0.5): what an autoencoder
    # that invents texture adds, and the generated images' failure mode in the demo.
    print("| finding | AUC real | AUC real, blurred (sigma 1 px) | AUC VAE-reconstructed "
          "| false positives real / reconstructed |\n|---|---|---|---|---|")
    for j, finding in enumerate(classifier.findings):
        known = ~np.isnan(labels[:, j])
        aucs = [roc_auc_score(labels[known, j], scores[k][known, j]) for k in scores]
        negative = known & (labels[:, j] == 0)
        false_pos = [float((scores[k][negative, j] > 0.5).mean()) for k in ("real", "reconstructed")]
        print(f"| {finding} | " + " | ".join(f"{a:.3f}" for a in aucs)
              + f" | {false_pos[0]:.2f} / {false_pos[1]:.2f} |")


if __name__ == "__main__":
    main()
