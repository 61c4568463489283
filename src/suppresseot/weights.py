"""Finding Stable Diffusion weights: whatever a user has becomes one local diffusers folder.

Both backends load a diffusers folder whose components are safetensors (the Jittor backend reads them by
name, without torch). A hub id is downloaded into the usual hub cache (only the files SuppressEOT needs).
Everything else a user may give -- a single-file checkpoint (``.safetensors``/``.ckpt`` in the original
LDM layout), a folder or repo with ``.bin`` weights only, an ``fp16`` variant, LoRA files to fuse -- is
converted once, with diffusers, into a plain float32 safetensors folder in a cache keyed by the inputs'
content hashes (``SUPPRESSEOT_CACHE``, default ``$HF_HOME/suppresseot``), written atomically. Nothing
downstream knows the difference, and both backends see the same weights.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import SuppressEOTError

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
COMPONENTS = ("text_encoder", "unet", "vae", "tokenizer")
# component -> weight file stem of each format (transformers and diffusers name their .bin files differently)
WEIGHTS = {c: {"safetensors": "model", "bin": "pytorch_model"} for c in ("text_encoder", "text_encoder_2")} | {
    c: dict.fromkeys(("safetensors", "bin"), "diffusion_pytorch_model") for c in ("unet", "vae")}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
CONFIGS = Path(__file__).parent / "data" / "model-configs"
TOKENIZER = Path(__file__).parent / "data" / "clip-tokenizer"
# diffusers' name for a checkpoint's family (``infer_diffusers_model_type``) -> the config folder shipped
FAMILY_CONFIGS = {"v1": "sd1", "v2": "sd2", "xl_base": "sdxl"}


def hub_patterns(ext: str = "safetensors", variant: str | None = None) -> list[str]:
    """The files of a hub repo that SuppressEOT needs, with weights of one format (and variant)."""
    tag = f".{variant}" if variant else ""
    return ["model_index.json", "scheduler/*.json", "tokenizer/*", "tokenizer_2/*"] + [
        p for c, stems in WEIGHTS.items() for p in (
            f"{c}/config.json", f"{c}/{stems[ext]}{tag}.{ext}",  # one file, or shards and their index
            f"{c}/{stems[ext]}{tag}.{ext}.index.json", f"{c}/{stems[ext]}{tag}-*-of-*.{ext}")]


HUB_PATTERNS = hub_patterns()


@dataclass(frozen=True)
class LoRA:
    """A LoRA file to fuse into the model's UNet and text encoder(s) at ``scale``."""

    path: Path
    scale: float = 1.0

    @classmethod
    def of(cls, item) -> "LoRA":
        """From a path, a ``(path, scale)`` pair or a LoRA."""
        if isinstance(item, LoRA):
            return item
        path, scale = (item, 1.0) if isinstance(item, (str, os.PathLike)) else item
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise SuppressEOTError(f"LoRA scale {scale!r} of {path} is not a finite number")
        path = Path(path).expanduser()
        if not path.is_file():
            raise SuppressEOTError(f"LoRA file {path} does not exist: give the path of a .safetensors LoRA file")
        return cls(path, float(scale))

    def record(self) -> dict:
        """What run.json keeps of it."""
        return {"file": self.path.name, "sha256": file_sha256(self.path), "scale": self.scale}


def cache_dir() -> Path:
    """Converted models live here: ``$SUPPRESSEOT_CACHE``, else ``suppresseot/`` in the hub's home."""
    if os.environ.get("SUPPRESSEOT_CACHE"):
        return Path(os.environ["SUPPRESSEOT_CACHE"]).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "suppresseot"


_HASHES: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """The file's sha256 (remembered for the process while its size and mtime stay)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def _is_hub_id(model: str) -> bool:
    """Hub ids are ``owner/name``; anything else (``./x``, ``/x``, ``~/x``, ``a/b/c``) is a path."""
    return not model.startswith((".", "/", "~")) and model.count("/") == 1 and "\\" not in model


def check_model_folder(path: Path) -> Path:
    missing = [c for c in COMPONENTS if not (path / c).is_dir()]
    if missing:
        raise SuppressEOTError(
            f"{path} is not a Stable Diffusion folder in the diffusers layout: it lacks {', '.join(missing)}/; "
            f"give a folder saved with diffusers (save_pretrained), a single-file checkpoint (.safetensors, "
            f".ckpt) or a hub id such as {DEFAULT_MODEL}")
    return path


def weight_files(path: Path, variant: str | None = None) -> dict[str, Path | None]:
    """Each weighted component's file in a diffusers folder: safetensors first, else ``.bin``; for weights
    saved in shards (diffusers and transformers shard past 10 GB: SDXL's fp32 UNet), the shards' index."""
    tag = f".{variant}" if variant else ""
    found = {}
    for component, stems in WEIGHTS.items():
        if component == "text_encoder_2" and not (path / component).is_dir():
            continue
        files = [path / component / f"{stem}{tag}.{ext}{index}" for ext, stem in stems.items()
                 for index in ("", ".index.json")]
        found[component] = next((f for f in files if f.is_file()), None)
    return found


def _hub_download(model: str, variant: str | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        local = Path(snapshot_download(model, allow_patterns=hub_patterns("safetensors", variant)))
        if None in weight_files(local, variant).values():  # a repo with .bin weights only
            local = Path(snapshot_download(model, allow_patterns=hub_patterns("bin", variant)))
    except Exception as exc:  # offline, unknown repo, gated repo, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SuppressEOTError(
            f"could not get {model} from the Hugging Face hub ({type(exc).__name__}: {reason[:200]}); "
            f"check the network and the model id (`huggingface-cli login` for gated models), "
            f"or pass a local diffusers folder or checkpoint file with --model") from exc
    return local


def resolve_model(model: str | os.PathLike, lora=(), variant: str | None = None,
                  config: str | os.PathLike | None = None) -> Path:
    """A local diffusers folder with safetensors weights for ``model``: a folder, a hub id (downloaded) or a
    single-file checkpoint; ``variant`` (e.g. ``fp16``) picks the folder's variant weights (upcast to
    float32); ``lora``: files or ``(file, scale)`` pairs fused in; ``config``: the diffusers config folder
    (or shipped name: sd1, sd2, sd2-base, sdxl) for a single-file checkpoint, default from its keys."""
    loras = [LoRA.of(item) for item in lora or ()]
    suffix = "-lora-" + hashlib.sha256(json.dumps([(file_sha256(item.path), item.scale) for item in loras]).encode()
                                       ).hexdigest()[:20] if loras else ""
    model = str(model)
    path = Path(model).expanduser()
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise SuppressEOTError(f"{path} is not a checkpoint file: --model takes a .safetensors or .ckpt "
                                   f"single-file checkpoint, a diffusers folder or a hub id")
        digest = file_sha256(path)[:20]
        done = [cache_dir() / "models" / f"{digest}-{name}{suffix}" for name in FAMILY_CONFIGS.values()]
        if config is None and any(folder.is_dir() for folder in done):  # converted before: no need to read it
            return next(folder for folder in done if folder.is_dir())
        config_dir, config_name = _config_folder(path, config)
        key = f"{digest}-{config_name}"
        build, layout = (lambda: _from_single_file(path, config_dir)), config_dir
    else:
        if path.is_dir():
            folder = check_model_folder(path)
        elif _is_hub_id(model):
            folder = check_model_folder(_hub_download(model, variant))
        else:
            raise SuppressEOTError(
                f"model {model} does not exist: give an existing diffusers folder, a single-file checkpoint "
                f"(.safetensors, .ckpt) or a hub id such as {DEFAULT_MODEL}")
        files = weight_files(folder, variant)
        missing = [c for c, f in files.items() if f is None]
        if missing:
            hint = (" (it has fp16 weights: add --variant fp16)" if not variant and
                    weight_files(folder, "fp16")[missing[0]] is not None else "")
            raise SuppressEOTError(f"{folder} has no {variant + ' ' if variant else ''}weights for "
                                   f"{', '.join(missing)} (.safetensors or .bin){hint}")
        if not loras and not variant and all(f.name.endswith((".safetensors", ".safetensors.index.json"))
                                             for f in files.values()):
            return folder  # already what both backends read
        key = hashlib.sha256(json.dumps(sorted((c, file_sha256(f)) for c, f in files.items())).encode()
                             ).hexdigest()[:20] + f"-{variant or 'folder'}"
        build, layout = (lambda: _from_folder(folder, variant)), folder
    return _cached(key + suffix, model, build, loras, _pipeline_class(layout))


def _cached(key: str, model: str, build, loras: list[LoRA], pipeline_class) -> Path:
    """The converted folder ``key`` in the cache, built (with the LoRAs fused) unless there already."""
    final = cache_dir() / "models" / key
    if final.is_dir():
        return final
    for item in loras:  # before the long part: a file that is no LoRA at all fails at once
        _read_lora(pipeline_class, item)
    what = f" with {len(loras)} LoRA{'s' * (len(loras) != 1)}" if loras else ""
    print(f"converting {model}{what} into a diffusers folder (once): {final}", file=sys.stderr, flush=True)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SuppressEOTError(f"cannot write the model cache {final.parent} ({exc.strerror or exc}); "
                               f"set SUPPRESSEOT_CACHE to a writable folder") from exc
    tmp = final.parent / f".{key}.tmp-{os.getpid()}"
    try:
        with _quiet():
            pipe = build()
            for number, item in enumerate(loras):
                _fuse(pipe, item, f"lora{number}")
            pipe.save_pretrained(tmp, safe_serialization=True)
        try:
            os.rename(tmp, final)  # atomic; another process may have finished the same folder first
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


class _quiet:
    """diffusers/transformers warnings (absent safety checker, ...) and loading bars off while converting."""

    def __enter__(self):
        from diffusers.utils import logging as dl
        from transformers.utils import logging as tl

        self.state = [(m, m.get_verbosity(), m.is_progress_bar_enabled()) for m in (dl, tl)]
        for m, _, _ in self.state:
            m.set_verbosity(50)  # CRITICAL: diffusers logs a missing safetensors beside a .bin as an error
            m.disable_progress_bar()
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self.warnings.__exit__(*exc)
        for m, level, bars in self.state:
            m.set_verbosity(level)
            if bars:
                m.enable_progress_bar()
        return False


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def _config_folder(path: Path, config) -> tuple[Path, str]:
    """The diffusers config folder for a single file: given, or chosen from its keys by diffusers."""
    if config is not None:
        named = CONFIGS / str(config)
        folder = named if named.is_dir() else Path(config).expanduser()
        if not (folder / "model_index.json").is_file():
            raise SuppressEOTError(f"model config {config} is neither a diffusers folder (with model_index.json) "
                                   f"nor one of {', '.join(sorted(p.name for p in CONFIGS.iterdir()))}")
        checkpoint_family(path)  # still a Stable Diffusion checkpoint, whole and readable
        digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.glob("*/*.json")))).hexdigest()
        return folder, f"{folder.name}-{digest[:8]}"
    name = FAMILY_CONFIGS[checkpoint_family(path)]
    return CONFIGS / name, name


def checkpoint_family(path: Path) -> str:
    """diffusers' family name (``v1``, ``v2``, ``xl_base``) of a Stable Diffusion single-file checkpoint."""
    from diffusers.loaders.single_file_utils import (CHECKPOINT_KEY_NAMES, infer_diffusers_model_type,
                                                     load_single_file_checkpoint)

    try:
        checkpoint = load_single_file_checkpoint(str(path), local_files_only=True)
    except Exception as exc:
        pickle = "" if path.suffix == ".safetensors" else (
            " (.ckpt files are read with torch.load(weights_only=True), which refuses pickled code: convert "
            "it to .safetensors where it came from)")
        raise SuppressEOTError(f"cannot read {path} as a checkpoint ({_reason(exc)}){pickle}") from exc
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise SuppressEOTError(f"{path} holds no weights")
    family = infer_diffusers_model_type(checkpoint)
    parts = ("model.diffusion_model.", "first_stage_model.", ("cond_stage_model.", "conditioner."))
    whole = all(any(k.startswith(p) for k in checkpoint) for p in parts)
    if family == "v1" and CHECKPOINT_KEY_NAMES["v1"] not in checkpoint:
        family = None
    del checkpoint
    if family not in FAMILY_CONFIGS or not whole:
        raise SuppressEOTError(
            f"{path} is not a Stable Diffusion 1.x, 2.x or SDXL base checkpoint with UNet, VAE and text encoder "
            f"({'diffusers reads it as ' + family if family else 'its keys are not the original LDM layout'}); "
            f"give such a checkpoint, or its diffusers folder")
    return family


def _staged_config(config_dir: Path, into: Path) -> Path:
    """A copy of ``config_dir`` with the shipped CLIP vocabulary in each tokenizer folder lacking one."""
    shutil.copytree(config_dir, into, ignore=shutil.ignore_patterns(*(f"*{s}" for s in SINGLE_FILE_SUFFIXES), "*.bin"))
    for tokenizer in into.glob("tokenizer*"):
        for name in ("vocab.json", "merges.txt"):
            if not (tokenizer / name).exists():
                shutil.copy(TOKENIZER / name, tokenizer / name)
    return into


def _pipeline_class(folder: Path):
    try:
        import diffusers
    except ImportError as exc:
        raise SuppressEOTError("converting this model needs diffusers: pip install 'suppresseot[torch]' (once; "
                               "the converted folder then serves the Jittor backend too)") from exc

    name = json.loads((folder / "model_index.json").read_text())["_class_name"]
    with _quiet():  # importing the pipelines imports transformers' image processors, which warn
        return getattr(diffusers, name)


def _from_single_file(path: Path, config_dir: Path):
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        staged = _staged_config(config_dir, Path(tmp) / "config")
        try:
            return _pipeline_class(staged).from_single_file(str(path), config=str(staged), local_files_only=True,
                                                            torch_dtype=torch.float32)
        except Exception as exc:
            raise SuppressEOTError(f"cannot convert {path} with the {config_dir.name} config ({_reason(exc)}); "
                                   f"is it a complete, uncorrupted checkpoint of that family?") from exc


def _from_folder(folder: Path, variant: str | None):
    import torch

    index = json.loads((folder / "model_index.json").read_text())
    absent = {name: None for name, value in index.items()  # e.g. a safety checker not downloaded
              if not name.startswith("_") and isinstance(value, list) and value[0] and not (folder / name).is_dir()}
    try:
        return _pipeline_class(folder).from_pretrained(folder, variant=variant, torch_dtype=torch.float32,
                                                       local_files_only=True, **absent)
    except Exception as exc:
        raise SuppressEOTError(f"cannot load the weights in {folder} ({_reason(exc)})") from exc


def _lora_error(lora: LoRA, reason: str) -> SuppressEOTError:
    return SuppressEOTError(f"cannot load LoRA {lora.path} ({reason}); give a LoRA in the diffusers/PEFT or "
                            f"kohya format made for this model's family")


def _read_lora(pipeline_class, lora: LoRA) -> None:
    """Parse the file as diffusers does (any supported format); diffusers' rule: every name says 'lora'."""
    try:
        with _quiet():
            state = pipeline_class.lora_state_dict(str(lora.path))
        state = state[0] if isinstance(state, tuple) else state
    except Exception as exc:
        raise _lora_error(lora, _reason(exc)) from exc
    if not state or not all("lora" in name for name in state):
        raise _lora_error(lora, "its tensors are not named as LoRA weights")


def _fuse(pipe, lora: LoRA, name: str) -> None:
    """Fuse one LoRA into the pipeline's weights with diffusers (diffusers/PEFT and kohya formats)."""
    try:
        pipe.load_lora_weights(str(lora.path), adapter_name=name)
    except Exception as exc:
        raise _lora_error(lora, _reason(exc)) from exc
    if not any(name in names for names in pipe.get_list_adapters().values()):
        raise SuppressEOTError(f"LoRA {lora.path} matches no layer of this model: is it for another family?")
    pipe.fuse_lora(components=[c for c in pipe._lora_loadable_modules if getattr(pipe, c, None) is not None],
                   lora_scale=lora.scale, adapter_names=[name])
    pipe.unload_lora_weights()
