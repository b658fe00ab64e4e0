"""medsd: adapt pretrained latent diffusion models to medical imaging."""

__version__ = "0.1.0"
