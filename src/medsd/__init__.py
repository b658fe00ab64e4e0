"""medsd: adapt pretrained latent diffusion models to medical imaging."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # `medsd.generate(...)` is the Python API of generation; the subpackage is imported on first use only.
    if name == "generate":
        import importlib

        return importlib.import_module("medsd.generate")
    raise AttributeError(f"module 'medsd' has no attribute {name!r}")
