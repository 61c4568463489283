"""Settings as plain dataclasses; the defaults are the official SuppressEOT defaults."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .algorithm.attention import ALL_PLACES, CROSS_REFERENCE_PLACES
from .algorithm.losses import Lambdas
from .algorithm.swr import METHODS, POOLED
from .errors import SuppressEOTError

GENERATED_STEP_SCALE = 20.0  # ITO gradient step size for generated images
REAL_STEP_SCALE = 5.0  # and for real photos (null-text / NPI inverted)


@dataclass
class SuppressionSettings:
    """One SuppressEOT edit: SWR strength and the inference-time optimization (ITO) around it."""

    alpha: float = 1.0  # SWR strength: s *= exp(-alpha * s); negative strengthens (add/replace)
    tau: float = 0.8  # SWR and ITO start at step (1 - tau) * steps (the official cross_retain_steps = 1 - tau)
    method: str = "soft-weight"  # soft-weight | alpha | beta | delete | weight
    iterations: int = 10  # ITO gradient steps per denoising step (0 disables ITO)
    max_step_to_erase: int = 20  # ITO runs at steps [(1 - tau) * steps, max_step_to_erase)
    lambdas: Lambdas = field(default_factory=Lambdas)
    step_scale: float | None = None  # ITO step size; None: 20 for generated, 5 for real images
    all_heads: bool = False  # False: the official map average (first half of the heads during ITO)
    pooled: str = "keep"  # SDXL's pooled text embedding: "keep" the prompt's, or "swr" it with encoder 2's EOT
    # UNet blocks whose maps (at the family's resolution) the ITO losses read: all, as the official code; fewer
    # end ITO's passes earlier (SDXL without "up": the passes stop after the mid block; docs/families.md)
    ito_blocks: tuple[str, ...] = ALL_PLACES

    def validate(self) -> "SuppressionSettings":
        if not math.isfinite(self.alpha):
            raise SuppressEOTError(f"alpha must be a finite number, got {self.alpha}")
        if not math.isfinite(self.tau) or not 0.0 <= self.tau <= 1.0:
            raise SuppressEOTError(f"tau must be in [0, 1] (0.8 is the default), got {self.tau}")
        if self.pooled not in POOLED:
            raise SuppressEOTError(f"unknown pooled-embedding handling {self.pooled!r}: choose {' or '.join(POOLED)}")
        blocks = [self.ito_blocks] if isinstance(self.ito_blocks, str) else list(self.ito_blocks)
        if (not blocks or not all(isinstance(b, str) for b in blocks) or len(set(blocks)) != len(blocks)
                or not set(blocks) <= set(ALL_PLACES)):
            raise SuppressEOTError("ITO blocks must be some of down, mid, up (each once), got "
                                   f"{','.join(map(str, blocks)) or 'none'}")
        if not set(blocks) & set(CROSS_REFERENCE_PLACES):
            raise SuppressEOTError("ITO blocks must include down or up: the reference cross-attention maps are read "
                                   "there, as in the official code")
        self.ito_blocks = tuple(p for p in ALL_PLACES if p in blocks)  # the official summation order
        if self.method not in METHODS:
            raise SuppressEOTError(f"unknown SWR method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.iterations < 0:
            raise SuppressEOTError(f"ITO iterations must be >= 0 (0 disables ITO), got {self.iterations}")
        if self.max_step_to_erase < 0:
            raise SuppressEOTError(f"max step to erase must be >= 0, got {self.max_step_to_erase}")
        for name, value in asdict(self.lambdas).items():
            if not math.isfinite(value):
                raise SuppressEOTError(f"lambda {name} must be a finite number, got {value}")
        if self.step_scale is not None and not math.isfinite(self.step_scale):
            raise SuppressEOTError(f"the ITO step scale must be a finite number, got {self.step_scale}")
        return self

    def first_step(self, num_steps: int) -> int:
        """First step index i with i >= (1 - tau) * steps (SWR and ITO start there)."""
        return max(0, math.ceil((1.0 - self.tau) * num_steps - 1e-9))

    def ito_steps(self, num_steps: int) -> range:
        if self.iterations == 0 or not self.lambdas.any():
            return range(0)
        return range(self.first_step(num_steps), min(self.max_step_to_erase, num_steps))


@dataclass
class SamplingSettings:
    num_steps: int = 50  # DDIM steps (sampling and inversion)
    guidance_scale: float = 7.5

    def validate(self) -> "SamplingSettings":
        # 999 at most: at 1000 "leading" steps with the offset of 1 the first timestep is 1000, past the last
        # training timestep (diffusers' DDIMScheduler fails there too)
        if self.num_steps < 1 or self.num_steps > 999:
            raise SuppressEOTError(f"steps must be between 1 and 999 (50 is the default), got {self.num_steps}")
        if not math.isfinite(self.guidance_scale):
            raise SuppressEOTError(f"guidance scale must be a finite number, got {self.guidance_scale}")
        return self


INVERSIONS = ("nt", "npi")


@dataclass
class InversionSettings:
    """Real photos: DDIM inversion, then null-text optimization ("nt") or negative-prompt inversion ("npi")."""

    method: str = "nt"
    inner_steps: int = 10  # null-text Adam steps per DDIM step
    early_stop_epsilon: float = 1e-5  # stop a step's optimization at loss < epsilon + i * 2e-5
    learning_rate: float = 1e-2  # Adam lr at step i is learning_rate * (1 - i / 100)

    def validate(self) -> "InversionSettings":
        if self.method not in INVERSIONS:
            raise SuppressEOTError(f"unknown inversion {self.method!r}: choose nt (null-text) or npi")
        if self.inner_steps < 1:
            raise SuppressEOTError(f"null-text steps must be >= 1, got {self.inner_steps}")
        if not math.isfinite(self.early_stop_epsilon) or not math.isfinite(self.learning_rate):
            raise SuppressEOTError("null-text epsilon and learning rate must be finite numbers")
        return self
