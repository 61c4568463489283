"""Approaches: SuppressEOT, its ablations, and the baselines users already have, chosen by name from one table.

Every approach answers the same request (prompts, token groups, seeds or photos, sampling settings) with the
same result: a ``SuppressionResult`` holding the **original** (the same initial noise or the same photo, so
every comparison is paired) and the **edited** image. Run directories, the study, ``eval`` and ``report``
read them alike; nothing downstream branches on the approach.

An entry names, per kind of image, the function that runs it ("module:function", imported on first use,
so this table stays framework-free). The SuppressEOT family has no function: it is the method itself with
a few settings overridden (``overrides``). The baselines run diffusers' own pipelines on the loaded model's
modules (``suppresseot.baselines``), or, where diffusers ships none (a negative prompt on null-text-inverted
latents), the guided DDIM of ``algorithm.pipeline`` on this project's inversion.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field

from .errors import SuppressEOTError

FAMILIES = ("sd1", "sd2", "sdxl")
KINDS = ("generated", "real")
DEFAULT = "suppresseot"


@dataclass(frozen=True)
class Approach:
    name: str
    summary: str  # one line for `suppress-eot approaches`
    generated: str | None = None  # "module:function" running it on generated images; None: SuppressEOT itself
    real: str | None = None  # the same for photos
    kinds: tuple[str, ...] = KINDS
    families: tuple[str, ...] = FAMILIES
    backends: tuple[str, ...] = ("torch",)
    modes: tuple[str, ...] = ("suppress",)  # "add": strengthening (negative alpha) is SuppressEOT's alone
    overrides: tuple[tuple[str, object], ...] = ()  # the SuppressEOT family: SuppressionSettings fields it fixes
    defaults: tuple[tuple[str, object], ...] = ()  # a baseline's settings (its paper's or diffusers' defaults)
    pipelines: tuple[tuple[str, str], ...] = ()  # family -> the diffusers pipeline that runs it (listing, run.json)
    shares_inversion: bool = True  # photos: edits an ``Inversion`` of this project's (``invert``), made once per photo

    @property
    def is_suppresseot(self) -> bool:
        return self.generated is None and self.real is None

    @property
    def batched(self) -> bool:
        """Tasks of equal settings run together (``--group-size``): the SuppressEOT family."""
        return self.is_suppresseot

    def runner(self, kind: str):
        target = self.generated if kind == "generated" else self.real
        module, _, function = target.partition(":")
        return getattr(importlib.import_module(module, __package__), function)

    def options(self, given: dict | None) -> dict:
        """The baseline's settings: its defaults, with ``given`` (``--approach-option``) over them."""
        settings = dict(self.defaults)
        unknown = sorted(set(given or {}) - set(settings))
        if unknown:
            known = ", ".join(settings) or "none: it takes SuppressEOT's own options (--alpha, --iterations, ...)"
            raise SuppressEOTError(f"{self.name} has no setting {', '.join(unknown)}; its settings: {known}")
        settings.update(given or {})
        return settings

    def check(self, kind: str | None = None, family: str | None = None, backend: str | None = None,
              mode: str | None = None) -> "Approach":
        """This approach, if it runs on this kind of image, model family, backend and mode; else one line why."""
        if kind is not None and kind not in self.kinds:
            wanted, other = {"generated": ("generated images", "photos"), "real": ("photos", "generated images")}[kind]
            raise SuppressEOTError(f"{self.name} is for {other} only; for {wanted} choose one of "
                                   f"{', '.join(names(kind=kind))}")
        if family is not None and family not in self.families:
            raise SuppressEOTError(f"{self.name} has no pipeline for {family} models (diffusers ships it for "
                                   f"{', '.join(self.families)}); on {family} choose one of "
                                   f"{', '.join(names(family=family))}")
        if backend is not None and backend not in self.backends:
            raise SuppressEOTError(f"{self.name} runs on the {' or '.join(self.backends)} backend (diffusers' pipelines "
                                   f"are PyTorch); use --backend torch, or on {backend} one of "
                                   f"{', '.join(names(backend=backend))}")
        if mode is not None and mode not in self.modes:
            raise SuppressEOTError(f"{self.name} only suppresses; strengthening (negative alpha) is SuppressEOT's")
        return self


SUPPRESSEOT_BACKENDS = ("torch", "jittor")
APPROACHES: dict[str, Approach] = {a.name: a for a in (
    Approach(DEFAULT, "SuppressEOT: soft-weighted regularization (SWR) of the EOT embeddings, then inference-time "
                      "optimization (ITO) of the attention maps", backends=SUPPRESSEOT_BACKENDS,
             modes=("suppress", "add")),
    Approach("swr-only", "SuppressEOT's ablation without ITO (SWR alone: --iterations 0)",
             backends=SUPPRESSEOT_BACKENDS, modes=("suppress", "add"), overrides=(("iterations", 0),)),
    Approach("ito-only", "SuppressEOT's ablation without SWR (ITO on the prompt's own embedding: alpha 0)",
             backends=SUPPRESSEOT_BACKENDS, overrides=(("alpha", 0.0),)),
    Approach("negative-prompt", "the suppressed words as the negative prompt (diffusers' pipeline); on photos: in "
                                "place of the null-text on the inverted latents (the Prompt-to-Prompt recipe)",
             generated=".baselines:negative_prompt", real=".approaches:negative_prompt_on_inversion",
             pipelines=(("sd1", "StableDiffusionPipeline"), ("sd2", "StableDiffusionPipeline"),
                        ("sdxl", "StableDiffusionXLPipeline"))),
    Approach("sega", "SEGA, semantic guidance away from the words (diffusers' SemanticStableDiffusionPipeline, "
                     "reversed editing prompt)",
             generated=".baselines:sega", kinds=("generated",), families=("sd1", "sd2"),
             defaults=(("edit_guidance_scale", 5.0), ("edit_warmup_steps", 10), ("edit_threshold", 0.9),
                       ("edit_momentum_scale", 0.1), ("edit_mom_beta", 0.4)),
             pipelines=(("sd1", "SemanticStableDiffusionPipeline"), ("sd2", "SemanticStableDiffusionPipeline"))),
    Approach("sld", "Safe Latent Diffusion with the words as its safety concept (diffusers' "
                    "StableDiffusionPipelineSafe, its medium setting)",
             generated=".baselines:safe_latent_diffusion", kinds=("generated",), families=("sd1", "sd2"),
             defaults=(("sld_guidance_scale", 1000.0), ("sld_warmup_steps", 10), ("sld_threshold", 0.01),
                       ("sld_momentum_scale", 0.3), ("sld_mom_beta", 0.4)),
             pipelines=(("sd1", "StableDiffusionPipelineSafe"), ("sd2", "StableDiffusionPipelineSafe"))),
    Approach("attention-reweight", "Prompt-to-Prompt attention reweighting: the words' cross-attention times "
                                   "scale (0) in every layer and step (diffusers' pipeline, this project's "
                                   "attention processors)",
             generated=".baselines:attention_reweight", kinds=("generated",), defaults=(("scale", 0.0),),
             pipelines=(("sd1", "StableDiffusionPipeline"), ("sd2", "StableDiffusionPipeline"),
                        ("sdxl", "StableDiffusionXLPipeline"))),
    Approach("ledits++", "LEDITS++: its DDPM inversion, then the words removed by reversed semantic guidance "
                         "(diffusers' LEditsPPPipelineStableDiffusion / ...XL)",
             real=".baselines:ledits_pp", kinds=("real",), shares_inversion=False,
             defaults=(("source_guidance_scale", 3.5), ("skip", 0.15), ("edit_guidance_scale", 5.0),
                       ("edit_warmup_steps", 0), ("edit_threshold", 0.9)),
             pipelines=(("sd1", "LEditsPPPipelineStableDiffusion"), ("sd2", "LEditsPPPipelineStableDiffusion"),
                        ("sdxl", "LEditsPPPipelineStableDiffusionXL"))),
)}


def names(kind: str | None = None, family: str | None = None, backend: str | None = None,
          mode: str | None = None) -> list[str]:
    """The approaches that run on this kind of image, family, backend and mode (None: any)."""
    return [a.name for a in APPROACHES.values()
            if (kind is None or kind in a.kinds) and (family is None or family in a.families)
            and (backend is None or backend in a.backends) and (mode is None or mode in a.modes)]


def get(name: str) -> Approach:
    if name not in APPROACHES:
        import difflib

        close = difflib.get_close_matches(str(name), APPROACHES, n=1)
        raise SuppressEOTError(f"unknown approach {name!r}" + (f" (did you mean {close[0]}?)" if close else "")
                               + f"; choose one of {', '.join(APPROACHES)} (`suppress-eot approaches` lists them)")
    return APPROACHES[name]


def parse_list(text: str | list[str]) -> list[str]:
    """``a,b`` or ["a", "b"] (or ``all``) as known approach names, checked, in the given order."""
    items = text if isinstance(text, list) else [text]
    parts = [p.strip() for item in items for p in str(item).split(",") if p.strip()]
    if not parts:
        raise SuppressEOTError(f"name at least one approach: {', '.join(APPROACHES)} or all")
    if "all" in parts:
        return list(APPROACHES)
    for part in parts:
        get(part)
    return list(dict.fromkeys(parts))


def parse_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--approach-option``: the value read as JSON (numbers, true/false), else as text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SuppressEOTError(f"--approach-option takes KEY=VALUE, e.g. edit_guidance_scale=7, got {text!r}")
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    return key.strip(), parsed


def describe(approach: Approach, options: dict | None = None) -> dict:
    """What run.json records of an approach: its name, settings and what runs it."""
    from . import __version__

    record = {"name": approach.name}
    if approach.is_suppresseot:
        record.update(overrides=dict(approach.overrides), runs_with=f"suppresseot {__version__}")
    else:
        import diffusers

        record.update(settings=dict(options or approach.defaults), pipelines=dict(approach.pipelines),
                      runs_with=f"diffusers {diffusers.__version__}")
    return record


def listing() -> str:
    """`suppress-eot approaches`: one line each, with the kinds, families and backends it supports."""
    lines = []
    for a in APPROACHES.values():
        where = (f"{'/'.join('photos' if k == 'real' else 'generated' for k in a.kinds)}; "
                 f"{', '.join(a.families)}; {' or '.join(a.backends)}")
        lines.append(f"{a.name:<19} {a.summary}\n{'':<19} [{where}]"
                     + (f" settings: {', '.join(f'{k}={v}' for k, v in a.defaults)}" if a.defaults else ""))
    return "\n".join(lines)


@dataclass
class Request:
    """One call of an approach: K tasks that share their settings (one per prompt)."""

    kind: str  # generated | real
    prompts: list[str]
    groups: list[list[int]]  # token indices of what to suppress, one group per prompt
    sampling: object  # SamplingSettings
    seeds: list = field(default_factory=list)  # generated images (real photos: the seed of a baseline's noise)
    images: list = field(default_factory=list)  # real photos: paths, images, arrays or Inversions
    settings: object = None  # SuppressionSettings (the SuppressEOT family)
    inversion: object = None  # InversionSettings (approaches that invert with this project's inversion)
    options: dict = field(default_factory=dict)  # a baseline's settings
    decode: bool = True

    def words(self, model) -> list[str]:
        """Each task's suppressed words in the prompt's own spelling: the text a baseline is given."""
        from .tokens import split_prompt

        return [split_prompt(p, model.tokens(p).as_rows(), g)[1] for p, g in zip(self.prompts, self.groups)]


def negative_prompt_on_inversion(model, request: Request, approach: Approach) -> list:
    """The Prompt-to-Prompt recipe with a negative prompt: the photo inverted (``request.inversion``, null-text by
    default), then the original branch denoised with its null-text embeddings and the edited branch with the
    suppressed words' embedding in their place (what diffusers' ``negative_prompt`` replaces), side by side
    from the same latent."""
    inverted = model.inverted(request.images, request.prompts, request.inversion, request.sampling)
    words = request.words(model)
    with model.backend.no_grad():
        negative = [model._embed(w) for w in words]
    return model.guided_pairs(approach, request, starts=[inv.x_T for inv in inverted],
                              original_uncond=[inv.uncond_per_step for inv in inverted],
                              edited_uncond=[[n] * request.sampling.num_steps for n in negative],
                              inverted=inverted, options={"inversion": inverted[0].method})
