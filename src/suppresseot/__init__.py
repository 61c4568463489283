"""SuppressEOT: suppress what a prompt names in Stable Diffusion images (ICLR 2024), on PyTorch or Jittor."""
from .config import InversionSettings, SamplingSettings, SuppressionSettings
from .errors import BackendUnavailable, SuppressEOTError

__version__ = "0.1.0"


def __getattr__(name):  # keep ``import suppresseot`` light: the API pulls in a framework lazily
    if name in ("SuppressEOT", "SuppressionResult", "Inversion"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)


__all__ = ["SuppressEOT", "SuppressionResult", "Inversion", "SuppressionSettings", "SamplingSettings",
           "InversionSettings", "SuppressEOTError", "BackendUnavailable", "__version__"]
