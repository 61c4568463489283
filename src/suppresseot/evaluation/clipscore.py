"""CLIPScore of every run against the full prompt and against the prompt without the suppressed words.

CLIPScore is Hessel et al. 2021 (https://arxiv.org/abs/2104.08718): ``w * max(cos(E_img, E_txt), 0)``
with ``w = 2.5``, CLIP ViT-B/32 and the caption prefixed ``"A photo depicts "``. One score alone says
little about suppression: against the prompt with the negative word removed, any image that keeps
the rest scores well, including one where nothing was suppressed. So each image is scored twice:

* against the original prompt: suppression works when the suppressed image scores lower than the
  original-branch image (``delta_prompt`` < 0);
* against the prompt without the suppressed words: the rest of the content is kept when the score
  holds (``delta_kept`` near 0).

Beside the scores each row holds the preservation measures of ``preservation`` (CLIP image similarity,
SSIM, SSIM outside the detector's boxes), the same for every approach: the row is made from the two
images alone, whichever approach edited them.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import SuppressEOTError
from ..tokens import split_prompt
from . import Run, fmt, group_label, markdown_table, mean, resolve_device, short_error, to_float
from .detect import detected, detector_query
from .preservation import cosine, masked_mean, outside_mask, size_mismatch, ssim_map

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
PREFIX = "A photo depicts "
WEIGHT = 2.5
SCORE_COLUMNS = ["original_vs_prompt", "suppressed_vs_prompt", "delta_prompt",
                 "original_vs_kept", "suppressed_vs_kept", "delta_kept"]
DETECT_COLUMNS = ["detector_query", "original_detector_score", "suppressed_detector_score",
                  "original_detected", "suppressed_detected"]
# ssim_outside_boxes and boxes need the detector; without it they stay blank
PRESERVATION_COLUMNS = ["clip_image_similarity", "ssim", "ssim_outside_boxes", "boxes"]
RUN_COLUMNS = ["run_dir", "task", "dataset", "mode", "approach", "backend", "kind", "prompt"]
COLUMNS = (RUN_COLUMNS + ["suppressed_words", "kept_prompt"] + SCORE_COLUMNS + DETECT_COLUMNS + PRESERVATION_COLUMNS
           + ["note"])
MEAN_COLUMNS = SCORE_COLUMNS + PRESERVATION_COLUMNS[:3]  # averaged per group in the summary


def clip_score(cosine, weight: float = WEIGHT):
    """Hessel et al.'s rescaling: negative similarities count as 0, then ``* 2.5`` to spread the range."""
    return weight * np.maximum(cosine, 0.0)


class CLIPScorer:
    """A CLIP model (transformers) that embeds prompts and images, L2-normalised."""

    def __init__(self, model: str | os.PathLike = DEFAULT_CLIP, device: str = "auto", batch_size: int = 16):
        try:
            import torch
            from transformers import CLIPModel, CLIPProcessor
        except ImportError as exc:
            raise SuppressEOTError(f"eval needs torch and transformers ({short_error(exc)}): "
                                   f"pip install 'suppresseot[eval]'") from exc
        self.torch = torch
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.name = str(model)
        try:
            self.model = CLIPModel.from_pretrained(str(model)).to(self.device).eval()
            self.processor = CLIPProcessor.from_pretrained(str(model))
        except Exception as exc:  # hub errors, missing files, wrong architecture: all one line
            raise SuppressEOTError(
                f"cannot load the CLIP model {model!r} ({short_error(exc)}); give a hub id such as {DEFAULT_CLIP} or a "
                f"folder with a CLIPModel (config.json, weights), its tokenizer and preprocessor_config.json") from exc
        self.max_length = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))

    def _features(self, output):
        # transformers >= 5 returns a model output whose pooler_output is the projected embedding
        features = getattr(output, "pooler_output", output)
        features = features / features.norm(dim=-1, keepdim=True)
        return features.float().cpu().numpy()

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Unit embeddings of ``PREFIX + text`` (truncated to CLIP's context, as Hessel et al.'s code)."""
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = [PREFIX + t for t in texts[start:start + self.batch_size]]
            inputs = self.processor.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                              return_tensors="pt").to(self.device)
            with self.torch.no_grad():
                chunks.append(self._features(self.model.get_text_features(**inputs)))
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        chunks = []
        for start in range(0, len(images), self.batch_size):
            inputs = self.processor.image_processor(images=images[start:start + self.batch_size],
                                                    return_tensors="pt").to(self.device)
            with self.torch.no_grad():
                chunks.append(self._features(self.model.get_image_features(**inputs)))
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)

    def scores(self, images: list[Image.Image], texts: list[str]) -> np.ndarray:
        """CLIPScore of every image against every text (images x texts)."""
        return clip_score(self.embed_images(images) @ self.embed_texts(texts).T)


def _load(path: Path | None) -> Image.Image | None:
    if path is None:
        return None
    with Image.open(path) as image:
        return image.convert("RGB")


def score_runs(runs: list[Run], scorer: CLIPScorer, detector=None, threshold: float = 0.1,
               progress=None) -> list[dict]:
    """One row per run: its scores against both prompts, the deltas, and the detector's check if any.

    Runs are scored one at a time (two images, two texts) so memory stays flat on thousands of runs.
    """
    rows = []
    for number, run in enumerate(runs, 1):
        rows.append(score_run(run, *load_pair(run), scorer, detector, threshold))
        if progress is not None:
            progress(number, len(runs), run)
    return rows


def load_pair(run: Run) -> tuple[Image.Image | None, Image.Image | None]:
    """A run's original-branch and suppressed images (None where missing)."""
    return _load(run.file("original.png")), _load(run.file("suppressed.png"))


def run_fields(run: Run) -> dict:
    """What names a run in its row (``RUN_COLUMNS``), known without its images (a lost Ray chunk's rows too)."""
    return {"run_dir": run.name, "task": run.task_id, "dataset": run.dataset, "mode": run.mode,
            "approach": run.approach, "backend": run.backend, "kind": run.record.get("kind", ""),
            "prompt": run.prompt}


def score_run(run: Run, original: Image.Image | None, suppressed: Image.Image | None, scorer: CLIPScorer,
              detector=None, threshold: float = 0.1) -> dict:
    """One run's row from its two images (loaded by the caller: a Ray worker gets them from the driver, so
    every measure, preservation included, runs where the images are)."""
    kept, words = split_prompt(run.prompt, run.record.get("tokens") or [], run.token_indices)
    row = {**run_fields(run), "suppressed_words": words, "kept_prompt": kept}
    if original is None or suppressed is None:
        row["note"] = "original.png or suppressed.png missing"
        return row
    embedded = scorer.embed_images([original, suppressed])  # once, for the scores and the image similarity
    (op, ok), (sp, sk) = clip_score(embedded @ scorer.embed_texts([run.prompt, kept]).T).tolist()
    row.update(original_vs_prompt=op, suppressed_vs_prompt=sp, delta_prompt=sp - op,
               original_vs_kept=ok, suppressed_vs_kept=sk, delta_kept=sk - ok,
               clip_image_similarity=cosine(*embedded))
    boxes = None
    if detector is not None:
        query = detector_query(run, words)
        before, after = detector.find([original, suppressed], query, threshold)
        row.update(detector_query=query, original_detector_score=before.best, suppressed_detector_score=after.best,
                   original_detected=int(detected(before.best, threshold)),
                   suppressed_detected=int(detected(after.best, threshold)))
        boxes = before.boxes + after.boxes
    row.update(ssim_columns(original, suppressed, boxes))
    return row


def ssim_columns(original: Image.Image, suppressed: Image.Image, boxes: list | None) -> dict:
    """The row's ``ssim``, and with the detector's ``boxes`` (None: no detector) ``ssim_outside_boxes``.

    One SSIM map serves both; images of different sizes get a note instead, as SSIM compares pixels.
    """
    problem = size_mismatch(original, suppressed)
    if problem:
        return {"note": problem}
    score, full = ssim_map(original, suppressed)
    if boxes is None:
        return {"ssim": score}
    outside = masked_mean(full, outside_mask(full.shape, boxes)) if boxes else score  # no box: the same, exactly
    return {"ssim": score, "ssim_outside_boxes": outside, "boxes": len(boxes)}


def summarise(rows: list[dict]) -> list[dict]:
    """Means per (dataset, approach, backend), the share of runs whose score against the prompt dropped, detector
    counts: approaches side by side on the same measures."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in rows:
        key = (group_label(row["dataset"], row.get("mode", "")), row.get("approach") or "suppresseot", row["backend"])
        groups.setdefault(key, []).append(row)
    table = []
    for (dataset, approach, backend), members in sorted(groups.items()):
        scored = [r for r in members if to_float(r.get("delta_prompt")) is not None]
        entry = {"dataset": dataset, "approach": approach, "backend": backend, "runs": len(members),
                 "scored": len(scored)}
        for column in MEAN_COLUMNS:
            entry[column] = mean(to_float(r.get(column)) for r in scored)
        entry["dropped"] = (sum(to_float(r["delta_prompt"]) < 0 for r in scored) / len(scored)) if scored else None
        checked = [r for r in scored if str(r.get("original_detected", "")) in ("0", "1")]
        if checked:
            entry["original_detected"] = sum(int(r["original_detected"]) for r in checked)
            entry["suppressed_detected"] = sum(int(r["suppressed_detected"]) for r in checked)
            entry["detector_checked"] = len(checked)
        table.append(entry)
    return table


def summary_markdown(table: list[dict]) -> str:
    columns = ["dataset", "approach", "backend", "runs", "orig→prompt", "supp→prompt", "Δ prompt", "dropped",
               "orig→kept", "supp→kept", "Δ kept", "CLIP img sim", "SSIM"]
    detector = any("detector_checked" in e for e in table)
    if detector:
        columns += ["SSIM outside boxes", "detected orig", "detected supp"]
    body = []
    for e in table:
        line = [e["dataset"], e["approach"], e["backend"],
                e["runs"] if e["scored"] == e["runs"] else f"{e['scored']}/{e['runs']}",
                e["original_vs_prompt"], e["suppressed_vs_prompt"], e["delta_prompt"],
                None if e["dropped"] is None else f"{100 * e['dropped']:.0f}%",
                e["original_vs_kept"], e["suppressed_vs_kept"], e["delta_kept"],
                e["clip_image_similarity"], e["ssim"]]
        if detector:
            n = e.get("detector_checked")
            line += [e["ssim_outside_boxes"],
                     f"{e['original_detected']}/{n}" if n else "", f"{e['suppressed_detected']}/{n}" if n else ""]
        body.append([fmt(v) if isinstance(v, float) else v for v in line])
    return markdown_table(columns, body)


def markdown_report(rows: list[dict], model: str, detector: str | None = None, threshold: float = 0.1) -> str:
    """The eval command's printed and saved summary, with what each column means."""
    text = [f"CLIPScore (Hessel et al. 2021: 2.5 * max(cos, 0), text prefixed \"{PREFIX.strip()}\") with {model}, "
            f"{len(rows)} runs.", "",
            summary_markdown(summarise(rows)), "",
            "- *prompt*: the original prompt; suppression works when the suppressed image scores lower than the "
            "original-branch image (Δ prompt < 0; *dropped*: share of runs where it did).",
            "- *kept*: the prompt without the suppressed words; the rest of the content is kept when Δ kept stays "
            "near 0.",
            "- rows marked (add) strengthen the token (negative alpha): there Δ prompt should rise.",
            "- preservation of the original in the suppressed image (higher keeps more; 1 is unchanged, as an edit "
            "that did nothing is, so read it beside Δ prompt): *CLIP img sim*, the cosine of their CLIP image "
            "embeddings; *SSIM*, their structural similarity."]
    if detector:
        text.append(f"- *detected*: images where {detector} still finds the suppressed word with a score above "
                    f"{threshold:g} (original / suppressed); *SSIM outside boxes*: SSIM of the pixels whose window "
                    f"touches none of those boxes (from either image), so the object's own change does not count.")
    missing = [r["run_dir"] for r in rows if to_float(r.get("delta_prompt")) is None]
    odd = [f"{r['run_dir']} ({r['note']})" for r in rows
           if r.get("note") and to_float(r.get("delta_prompt")) is not None]
    if odd:
        text.append("- notes: " + "; ".join(odd[:10]) + (" ..." if len(odd) > 10 else ""))
    if missing:
        more = " ..." if len(missing) > 10 else ""
        text.append(f"- not scored ({len(missing)}): " + ", ".join(missing[:10]) + more)
    return "\n".join(text) + "\n"
