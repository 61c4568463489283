"""Study task manifests: built from the shipped prompt lists (``prepare``), validated before a batch runs.

A manifest is JSON ``{"format", "name", "sets", "tasks", "skipped", "unavailable", "notes"}``, optionally
``"approaches"`` (the approaches ``batch`` runs each task by; absent: SuppressEOT alone). One task is one edit
and so one run directory per approach: a prompt, one token group to suppress (or strengthen), alpha, tau, and
a seed (generated images) or a photo (real images; a path absolute or relative to the manifest).
Sources that list several token groups for one prompt become one task per group.
"""
from __future__ import annotations

import csv
import json
import math
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import SuppressEOTError
from ..tokens import TokenTable, Tokenizer, find_phrase, token_table, validate_group

FORMAT = "suppresseot-manifest/1"
DATA = Path(__file__).resolve().parent.parent / "data" / "study"
PROMPTS = DATA / "prompts"

SETS = ("unsplash", "examples", "coco-car-real", "coco-car-gen", "vangogh", "tyler")
STUDY_SETS = ("unsplash", "coco-car-real", "coco-car-gen", "vangogh", "tyler")  # the study's 64 cases
COUNTS = {"coco-car-real": 12, "coco-car-gen": 12, "vangogh": 20, "tyler": 10}
COCO_SAMPLE_SEED = 17  # fixed: every user samples the same 12 captions from the same caption source
COCO_TARGET = ("car", ("car", "cars"))  # target name, and the words whose tokens are suppressed
CAR_WORD = re.compile(r"\bcars?\b", re.IGNORECASE)
ARTISTS = {"vangogh": ("vangogh_prompts.csv", "Van Gogh"), "tyler": ("tyler_prompts.csv", "Tyler Edlin")}

ALPHA = {"suppress": 1.0, "add": -0.001}  # add: the official "strengthen" value (paper, Appendix F)
DEFAULT_TAU = 0.8
DEFAULT_SEED = 2  # the official code's seed
TYPES = ("generated", "real")
INVERSIONS = ("nt", "npi")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
COCO_HELP = "see docs/study.md, 'Getting COCO val2017'"


class NotPreparable(SuppressEOTError):
    """A set whose inputs are not on this machine (COCO photos not downloaded)."""


@dataclass
class Task:
    id: str
    type: str  # generated | real
    prompt: str
    token_group: list[int]  # CLIP token indices (0 = <|startoftext|>) edited together
    set: str = ""
    target: str = ""  # what the group names, for people: "Van Gogh", "brown leather chair"
    target_tokens: list[str] | None = None  # the tokens at token_group: guards against edited prompts
    mode: str = "suppress"  # suppress | add
    alpha: float | None = None  # None: 1.0 to suppress, -0.001 to add
    tau: float = DEFAULT_TAU
    seed: int | None = None  # generated images (None: the official 2)
    image: str | None = None  # real images: absolute or relative to the manifest
    iterations: int | None = None  # ITO iterations per step; None: the batch's (official 10)
    inversion: str | None = None  # nt | npi; None: the batch's
    source: dict | None = None  # provenance, e.g. the COCO image id
    model: str | None = None  # folder, hub id or checkpoint file (paths relative to the manifest); None: the batch's
    loras: list | None = None  # LoRA files or [file, scale] pairs fused into the model; None: the batch's

    def __post_init__(self):
        if self.alpha is None and self.mode in ALPHA:
            self.alpha = ALPHA[self.mode]
        if self.seed is None and self.type == "generated":
            self.seed = DEFAULT_SEED

    def image_path(self, base_dir: Path) -> Path | None:
        if self.image is None:
            return None
        path = Path(self.image).expanduser()
        return path if path.is_absolute() else base_dir / path

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


TASK_KEYS = {f.name for f in fields(Task)}


@dataclass
class Manifest:
    path: Path
    name: str
    tasks: list[Task]
    skipped: list[dict] = field(default_factory=list)
    unavailable: list[dict] = field(default_factory=list)
    model: str | None = None  # the batch's model and LoRAs (a task's own win; None: the command line's)
    loras: list | None = None
    approaches: list[str] | None = None  # names, or ["all"]; None: SuppressEOT alone (batch --approaches wins)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def model_of(self, task: Task) -> tuple[str | None, tuple]:
        """The task's ``(model, ((lora, scale), ...))``, paths made absolute (None where neither the task nor the
        batch names one: the command line's); tasks of one value share a load."""
        local = lambda p: str(self.base_dir / p) if (self.base_dir / p).exists() else p  # noqa: E731
        model = task.model if task.model is not None else self.model
        loras = task.loras if task.loras is not None else self.loras
        return (None if model is None else local(model), None if loras is None else tuple(
            (local(item), 1.0) if isinstance(item, str) else (local(item[0]), float(item[1])) for item in loras))


@dataclass
class SetResult:
    """One prepared set: its tasks, the entries it could not use (with why), and the photos to copy."""

    name: str
    tasks: list[Task] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    copies: list[tuple[Path, str]] = field(default_factory=list)  # (shipped photo, path relative to manifest)


@dataclass
class Sources:
    """Where the user's COCO files are (nothing else is needed: the rest ships with the package)."""

    coco_captions: Path | None = None
    coco_images: Path | None = None


# --- tokens ---------------------------------------------------------------------------------------
def resolve_target(tokenizer: Tokenizer, prompt: str, words) -> tuple[TokenTable, list[int]]:
    """Token indices of every occurrence of any of ``words`` (e.g. "car" and "cars") in the prompt."""
    table = token_table(tokenizer, prompt)
    found: list[int] = []
    for word in [words] if isinstance(words, str) else words:
        try:
            found.extend(find_phrase(tokenizer, table, word))
        except SuppressEOTError:
            continue
    if not found:
        wanted = " or ".join(repr(w) for w in ([words] if isinstance(words, str) else words))
        tokens = " ".join(table.words[i] for i in table.word_indices)
        raise SuppressEOTError(f"{wanted} not among the prompt's tokens ({tokens})")
    return table, sorted(set(found))


def _skip(result: SetResult, task_id: str, prompt: str, target: str, reason: str) -> None:
    result.skipped.append({"set": result.name, "id": task_id, "prompt": prompt, "target": target, "reason": reason})


def _slug(text: str, limit: int = 40) -> str:
    """File-name-safe words of ``text``, cut at a word boundary."""
    from ..runs import slug

    words = slug(text, 1000)
    return words if len(words) <= limit else words[:limit + 1].rsplit("-", 1)[0]


def _group_suffix(group: list[int]) -> str:
    return "-tok" + "-".join(str(i) for i in group)


# --- the sets -------------------------------------------------------------------------------------
def _read_json(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _indexed_task(result: SetResult, tokenizer, task_id: str, prompt: str, group: list[int], **kw) -> None:
    """A task whose token indices come from the source list: check them, and name what they select."""
    try:
        table = token_table(tokenizer, prompt)
        group = validate_group(table, [int(i) for i in group])
    except (SuppressEOTError, TypeError, ValueError) as exc:
        _skip(result, task_id, prompt, str(group), f"token indices {group} do not fit the prompt: {exc}")
        return
    words = [table.words[i] for i in group]
    result.tasks.append(Task(id=task_id, prompt=prompt, token_group=group, set=result.name, target=" ".join(words),
                             target_tokens=words, **kw))


def build_unsplash(tokenizer: Tokenizer, sources: Sources) -> SetResult:
    """The 10 Unsplash photos and the token groups the study suppressed in them."""
    result = SetResult("unsplash")
    for number, (file_name, entry) in enumerate(sorted(_read_json(PROMPTS / "unsplash_tasks.json").items()), 1):
        prompt = entry["prompt"]
        mode = {"neg": "suppress", "pos": "add"}.get(entry.get("mode", "neg"), "suppress")
        image = f"images/unsplash/{file_name}"
        result.copies.append((DATA / "unsplash" / file_name, image))
        groups = entry["token_indices"]
        for group in groups:
            task_id = f"unsplash-{number:02d}-{_slug(prompt, 32)}" + (_group_suffix(group) if len(groups) > 1 else "")
            _indexed_task(result, tokenizer, task_id, prompt, group, type="real", mode=mode, image=image)
    return result


def build_examples(tokenizer: Tokenizer, sources: Sources) -> SetResult:
    """The official README's worked examples: cross_retain_steps c is tau = 1 - c; alpha < 0 adds."""
    result = SetResult("examples")
    for entry in _read_json(PROMPTS / "example_tasks.json")["tasks"]:
        image = None
        if entry.get("image"):
            shipped = DATA / entry["image"]  # "examples/<file>"
            image = f"images/{entry['image']}"
            if (shipped, image) not in result.copies:
                result.copies.append((shipped, image))
        groups, alphas = entry["token_indices"], entry.get("alpha", [ALPHA["suppress"]])
        retains = entry.get("cross_retain_steps", [round(1 - DEFAULT_TAU, 6)])
        for group in groups:
            for alpha in alphas:
                for retain in retains:
                    task_id = f"example-{entry['name']}"
                    task_id += _group_suffix(group) if len(groups) > 1 else ""
                    task_id += f"-a{alpha:g}" if len(alphas) > 1 else ""
                    task_id += f"-tau{1 - retain:g}" if len(retains) > 1 else ""
                    _indexed_task(result, tokenizer, task_id, entry["prompt"], group, type=entry["type"],
                                  mode="add" if alpha < 0 else "suppress", alpha=float(alpha),
                                  tau=round(1.0 - retain, 6), seed=entry.get("seed"), image=image,
                                  iterations=entry.get("iter_each_step"),
                                  inversion=entry["inversion"].lower() if entry.get("inversion") else None)
    return result


def _clean_caption(text: str) -> str:
    return " ".join(text.split())


def coco_captions(captions: Path | None) -> tuple[list[dict], str]:
    """COCO val2017 images whose caption mentions a car (one caption each), in the fixed sampling order.

    From the user's ``captions_val2017.json`` (the first caption, by annotation id, that says "car" or
    "cars"), else from the shipped ``cocoval17_car_dataset.csv`` (79 such captions).
    """
    rows: dict[int, dict] = {}
    if captions is not None:
        captions = Path(captions).expanduser()
        if not captions.is_file():
            raise SuppressEOTError(f"--coco-captions {captions} does not exist: give the path of "
                                   f"annotations/captions_val2017.json ({COCO_HELP})")
        try:
            data = _read_json(captions)
            files = {image["id"]: image["file_name"] for image in data["images"]}
            annotations = sorted(data["annotations"], key=lambda a: a["id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SuppressEOTError(f"{captions} is not a COCO captions file (no images/annotations: {exc}); "
                                   f"give annotations/captions_val2017.json ({COCO_HELP})") from exc
        for ann in annotations:
            image_id, caption = ann["image_id"], _clean_caption(ann["caption"])
            if image_id not in rows and image_id in files and CAR_WORD.search(caption):
                rows[image_id] = {"image_id": image_id, "file_name": files[image_id], "caption": caption}
        source = f"{captions.name} (first caption of each image that says car/cars)"
    else:
        with open(PROMPTS / "cocoval17_car_dataset.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                caption = _clean_caption(row["prompt"])
                if CAR_WORD.search(caption):
                    image_id = int(row["image_id"])
                    rows[image_id] = {"image_id": image_id, "file_name": Path(row["path"]).name, "caption": caption}
        source = "cocoval17_car_dataset.csv shipped with suppresseot"
    ordered = [rows[k] for k in sorted(rows)]
    random.Random(COCO_SAMPLE_SEED).shuffle(ordered)
    return ordered, source


def build_coco(name: str, tokenizer: Tokenizer, sources: Sources) -> SetResult:
    """12 COCO val2017 car captions, sampled with a fixed seed; real: their photos, generated: seed = image id."""
    result = SetResult(name)
    folder = None
    if name == "coco-car-real":
        if sources.coco_images is None:
            raise NotPreparable(f"{name} needs the COCO val2017 photos: pass --coco-images PATH/val2017 ({COCO_HELP})")
        folder = Path(sources.coco_images).expanduser().resolve()
        if not folder.is_dir():
            raise NotPreparable(f"--coco-images {sources.coco_images} is not a folder: give the unzipped val2017/ "
                                f"folder ({COCO_HELP})")
    candidates, source = coco_captions(sources.coco_captions)
    result.notes.append(f"captions from {source}, sampled with seed {COCO_SAMPLE_SEED}")
    if folder is not None:
        present = [c for c in candidates if (folder / c["file_name"]).is_file()]
        if not present:
            raise NotPreparable(f"none of the {len(candidates)} COCO car photos (e.g. {candidates[0]['file_name']}) "
                                f"is in {folder}: is it the val2017 folder? ({COCO_HELP})")
        if len(present) < len(candidates):
            result.notes.append(f"{len(candidates) - len(present)} of {len(candidates)} candidate photos are not "
                                f"in {folder}; sampled among the {len(present)} present")
        candidates = present
    target, words = COCO_TARGET
    for cand in candidates:
        if len(result.tasks) == COUNTS[name]:
            break
        task_id = f"{name}-{cand['image_id']}"
        try:
            table, group = resolve_target(tokenizer, cand["caption"], words)
        except SuppressEOTError as exc:
            _skip(result, task_id, cand["caption"], target, str(exc))
            continue
        extra = ({"type": "real", "image": str(folder / cand["file_name"])} if folder is not None
                 else {"type": "generated", "seed": int(cand["image_id"])})
        result.tasks.append(Task(id=task_id, prompt=cand["caption"], token_group=group, set=name, target=target,
                                 target_tokens=[table.words[i] for i in group],
                                 source={"coco_image_id": cand["image_id"]}, **extra))
    if len(result.tasks) < COUNTS[name]:
        result.notes.append(f"only {len(result.tasks)} of {COUNTS[name]} tasks could be prepared")
    return result


def build_artist(name: str, tokenizer: Tokenizer, sources: Sources) -> SetResult:
    """The first N ESD prompts of an artist with their evaluation seeds; the artist's name is suppressed."""
    file_name, artist = ARTISTS[name]
    result = SetResult(name)
    with open(PROMPTS / file_name, newline="", encoding="utf-8") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["case_number"]))[:COUNTS[name]]
    for row in rows:
        task_id = f"{name}-{int(row['case_number']):02d}"
        prompt = _clean_caption(row["prompt"])
        try:
            table, group = resolve_target(tokenizer, prompt, artist)
        except SuppressEOTError as exc:
            _skip(result, task_id, prompt, artist, str(exc))
            continue
        result.tasks.append(Task(id=task_id, type="generated", prompt=prompt, token_group=group, set=name,
                                 target=artist, target_tokens=[table.words[i] for i in group],
                                 seed=int(row["evaluation_seed"]), source={"esd_case_number": int(row["case_number"])}))
    return result


def build_set(name: str, tokenizer: Tokenizer, sources: Sources) -> SetResult:
    if name == "unsplash":
        return build_unsplash(tokenizer, sources)
    if name == "examples":
        return build_examples(tokenizer, sources)
    if name in ("coco-car-real", "coco-car-gen"):
        return build_coco(name, tokenizer, sources)
    if name in ARTISTS:
        return build_artist(name, tokenizer, sources)
    raise SuppressEOTError(f"unknown set {name!r}: choose from {', '.join(SETS)} (or --all)")


def approach_list(given) -> list[str]:
    """``prepare --approaches`` / a manifest's ``"approaches"`` (``a,b``, a list, or ``all``), checked by name:
    the names, or ["all"], which ``batch`` resolves against its backend and model (every approach that fits)."""
    from ..approaches import parse_list

    items = given if isinstance(given, list) else [given]
    if not all(isinstance(item, str) for item in items):
        raise SuppressEOTError(f'approaches {given!r} must be a list of approach names, e.g. ["suppresseot", "sega"]')
    names = parse_list(items)
    return ["all"] if "all" in {part.strip() for item in items for part in item.split(",")} else names


def write_manifest(path: Path, name: str, results: list[SetResult], unavailable: list[dict],
                   tokenizer: Tokenizer, approaches: list[str] | None = None) -> dict:
    """Copy the shipped photos next to the manifest (so the folder can be moved as a whole), validate, write.
    ``approaches``: recorded for ``batch`` (None: not recorded, SuppressEOT alone)."""
    path = Path(path)
    for result in results:
        for shipped, relative in result.copies:
            target = path.parent / relative
            if not target.exists() or target.stat().st_size != shipped.stat().st_size:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shipped, target)
    from .. import __version__

    data = {
        "format": FORMAT,
        "name": name,
        "created_by": f"suppresseot {__version__} (suppress-eot prepare)",
        "sets": [r.name for r in results],
        **({} if approaches is None else {"approaches": approach_list(approaches)}),
        "notes": [f"{r.name}: {note}" for r in results for note in r.notes],
        "tasks": [task.to_json() for r in results for task in r.tasks],
        "skipped": [entry for r in results for entry in r.skipped],
        "unavailable": unavailable,
    }
    validate_tasks(data, path.parent, tokenizer, check_images=True, where=str(path))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(_dumps(data) + "\n")
    os.replace(tmp, path)
    return data


def _dumps(value, indent: str = "") -> str:
    """JSON with one line per field and short lists (token groups) kept on one line: easy to read and diff."""
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {_dumps(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + _dumps(v, inner) for v in value) + f"\n{indent}]"
    return json.dumps(value, ensure_ascii=False)


# --- validation -----------------------------------------------------------------------------------
def model_problems(model, loras) -> list[str]:
    problems = [] if model is None or (isinstance(model, str) and model) else [
        f"model {model!r} must be a folder, hub id or checkpoint file"]
    if loras is not None and not (isinstance(loras, list) and all(
            isinstance(item, str) or (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                                      and isinstance(item[1], (int, float)) and not isinstance(item[1], bool))
            for item in loras)):
        problems.append(f"loras {loras!r} must be a list of LoRA files or [file, scale] pairs")
    return problems


def _task_problems(raw, base_dir: Path, tokenizer: Tokenizer, check_images: bool) -> tuple[Task | None, list[str]]:
    if not isinstance(raw, dict):
        return None, ["is not a JSON object"]
    unknown = sorted(set(raw) - TASK_KEYS)
    if unknown:
        return None, [f"unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(TASK_KEYS))})"]
    missing = [k for k in ("id", "type", "prompt", "token_group") if k not in raw]
    if missing:
        return None, [f"missing field(s) {', '.join(missing)}"]
    problems = []
    if not isinstance(raw["id"], str) or not ID_PATTERN.match(raw["id"]):
        problems.append(f"id {raw['id']!r} must be 1-100 letters, digits, '.', '_' or '-' (it names a folder)")
    if raw["type"] not in TYPES:
        problems.append(f"type {raw['type']!r} must be generated or real")
    if raw.get("mode", "suppress") not in ALPHA:
        problems.append(f"mode {raw.get('mode')!r} must be suppress or add")
    if problems:
        return None, problems
    task = Task(**raw)
    alpha = task.alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        problems.append(f"alpha {alpha!r} is not a finite number")
    elif task.mode == "suppress" and alpha <= 0:
        problems.append(f"mode suppress needs alpha > 0 (1.0 is the default), got {alpha}")
    elif task.mode == "add" and alpha >= 0:
        problems.append(f"mode add needs alpha < 0 (the official strengthen value is -0.001), got {alpha}")
    if isinstance(task.tau, bool) or not isinstance(task.tau, (int, float)) or not 0 <= task.tau <= 1:
        problems.append(f"tau {task.tau!r} must be a number in [0, 1]")
    if task.type == "generated" and (isinstance(task.seed, bool) or not isinstance(task.seed, int) or task.seed < 0):
        problems.append(f"seed {task.seed!r} must be a whole number >= 0")
    if task.iterations is not None and (not isinstance(task.iterations, int) or task.iterations < 0):
        problems.append(f"iterations {task.iterations!r} must be a whole number >= 0")
    problems += model_problems(task.model, task.loras)
    if task.inversion is not None and task.inversion not in INVERSIONS:
        problems.append(f"inversion {task.inversion!r} must be nt or npi")
    if task.type == "real":
        if not isinstance(task.image, str) or not task.image:
            problems.append("a real task needs an image path")
        elif check_images and not task.image_path(base_dir).is_file():
            problems.append(f"image {task.image_path(base_dir)} does not exist")
    try:
        table = token_table(tokenizer, task.prompt) if isinstance(task.prompt, str) else None
        if table is None:
            problems.append("prompt must be text")
        elif not isinstance(task.token_group, list):
            problems.append(f"token_group {task.token_group!r} must be a list of token indices, e.g. [4, 5]")
        else:
            task.token_group = validate_group(table, task.token_group)
            words = [table.words[i] for i in task.token_group]
            if task.target_tokens is not None and task.target_tokens != words:
                problems.append(f"token_group {task.token_group} selects {words}, not target_tokens "
                                f"{task.target_tokens}: was the prompt edited? (see `suppress-eot tokens`)")
    except SuppressEOTError as exc:
        problems.append(str(exc))
    return task, problems


def validate_tasks(data, base_dir: Path, tokenizer: Tokenizer, check_images: bool, where: str) -> list[Task]:
    """Every task checked against the tokenizer; all problems are reported at once, not one per run."""
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
        raise SuppressEOTError(f'{where} is not a task manifest (expected {{"tasks": [...]}}); '
                               f"write one with `suppress-eot prepare`")
    if data.get("format", FORMAT) != FORMAT:
        raise SuppressEOTError(f"{where} has format {data['format']!r}; this version reads {FORMAT}")
    tasks, problems, seen = [], [], set()
    for number, raw in enumerate(data["tasks"], 1):
        label = raw.get("id", f"#{number}") if isinstance(raw, dict) else f"#{number}"
        task, errors = _task_problems(raw, base_dir, tokenizer, check_images)
        if task is not None and task.id in seen:
            errors.append("the id is used by an earlier task")
        if task is not None:
            seen.add(task.id)
        problems.extend(f"task {label}: {e}" for e in errors)
        if task is not None and not errors:
            tasks.append(task)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise SuppressEOTError(f"{where}: {len(problems)} problem(s): {shown}. Fix the manifest or rerun "
                               f"`suppress-eot prepare`")
    return tasks


def load_manifest(path: str | os.PathLike, tokenizer: Tokenizer, check_images: bool = False) -> Manifest:
    """Read and validate a manifest; a missing photo is left to the task (it fails and is recorded)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SuppressEOTError(f"manifest {path} does not exist: write one with "
                               f"`suppress-eot prepare unsplash --out manifests/` (or --all)")
    try:
        data = _read_json(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SuppressEOTError(f"{path} is not valid JSON ({exc})") from exc
    tasks = validate_tasks(data, path.parent, tokenizer, check_images, str(path))
    if not tasks:
        raise SuppressEOTError(f"{path} holds no tasks")
    problems = model_problems(data.get("model"), data.get("loras"))
    if problems:
        raise SuppressEOTError(f"{path}: {'; '.join(problems)}")
    try:
        chosen = None if data.get("approaches") is None else approach_list(data["approaches"])
    except SuppressEOTError as exc:
        raise SuppressEOTError(f"{path}: {exc}") from None
    return Manifest(path=path.resolve(), name=str(data.get("name") or path.stem), tasks=tasks,
                    skipped=list(data.get("skipped", [])), unavailable=list(data.get("unavailable", [])),
                    model=data.get("model"), loras=data.get("loras"), approaches=chosen)
