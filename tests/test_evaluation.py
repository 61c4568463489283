"""``eval`` (CLIPScore, detector counts, preservation) and ``report``, on tiny random CLIP / OWLv2 / SD models built from configs.

No weights are downloaded: the tiny models have random weights, so the numbers mean nothing; what is
tested is that the formula, the grouping, the deltas and the report's tables and plots are right.
"""
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from suppresseot.cli import main
from suppresseot.evaluation import dataset_of, find_runs, read_csv
from suppresseot.evaluation.clipscore import (COLUMNS, PREFIX, CLIPScorer, clip_score, split_prompt,
                                               ssim_columns, summarise)
from suppresseot.evaluation.preservation import (clip_image_similarity, cosine, outside_mask, ssim,
                                                 ssim_outside_boxes)
from suppresseot.runs import ITO_COLUMNS, NULL_TEXT_COLUMNS, write_csv
from suppresseot.tokens import Tokenizer, token_table

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason="report needs matplotlib (the eval extra)")

TOKENIZER_DIR = Path(__file__).parent / "fixtures" / "clip-tokenizer"
VANGOGH = "A dog in Van Gogh Style"


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_files(TOKENIZER_DIR / "vocab.json", TOKENIZER_DIR / "merges.txt")


def _clip_tokenizer(max_length=77):
    return transformers.CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"),
                                      model_max_length=max_length)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random CLIP (ViT, 32 px) with the real CLIP tokenizer, saved like a hub model."""
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=49408, max_position_embeddings=77, **small),
        vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=16)
    folder = tmp_path_factory.mktemp("tiny-clip")
    transformers.CLIPModel(config).eval().save_pretrained(folder)
    _clip_tokenizer().save_pretrained(folder)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder)
    return folder


@pytest.fixture(scope="module")
def tiny_owl(tmp_path_factory):
    """A random OWLv2 whose class head is tamed (unit scale, no shift) so scores spread over (0.27, 0.73)."""
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = transformers.Owlv2Config(
        text_config=dict(vocab_size=49408, max_position_embeddings=16, **small),
        vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=32)
    model = transformers.Owlv2ForObjectDetection(config).eval()
    with torch.no_grad():
        for layer in (model.class_head.logit_shift, model.class_head.logit_scale):
            layer.weight.zero_()
            layer.bias.zero_()
    folder = tmp_path_factory.mktemp("tiny-owlv2")
    model.save_pretrained(folder)
    transformers.Owlv2Processor(image_processor=transformers.Owlv2ImageProcessor(size={"height": 32, "width": 32}),
                                tokenizer=_clip_tokenizer(16)).save_pretrained(folder)
    return folder


def noise(seed, size=64):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


# --- synthetic run directories ----------------------------------------------------------------------
def fake_run(folder: Path, name: str, tokenizer, prompt=VANGOGH, indices=(4, 5, 6), backend="torch", seed=1,
             alpha=1.0, image_seeds=(1, 2), latents=None, ito=(3.0, 2.0, 1.0), null=(), memory=None, trace=None,
             extra=None) -> Path:
    """A run directory as save_run writes it, with chosen numbers (what the unit under test reads)."""
    run = folder / name
    run.mkdir(parents=True)
    table = token_table(tokenizer, prompt)
    record = {"kind": "generated", "prompt": prompt, "token_indices": list(indices),
              "suppressed_tokens": [table.words[i] for i in indices], "tokens": table.as_rows(), "seed": seed,
              "settings": {"alpha": alpha, "tau": 0.5, "iterations": 2}, "sampling": {"num_steps": 4},
              "seconds": {"text_encoding": 0.5, "swr_ito_sampling": 2.0, "vae_decode": 0.5},
              "memory": memory or {"swr_ito_sampling": {"allocated": None, "reserved": None}},
              "backend": {"backend": backend, "device": "cpu",  # versions as each backend records them
                          **({"jittor": {"version": "1.3.11.0", "env": {}}} if backend == "jittor" else {})},
              **(extra or {})}
    (run / "run.json").write_text(json.dumps(record))
    noise(image_seeds[0]).save(run / "original.png")
    noise(image_seeds[1]).save(run / "suppressed.png")
    np.save(run / "final_latents.npy", np.ones((2, 4, 8, 8), np.float32) if latents is None else latents)
    write_csv(run / "ito.csv", ITO_COLUMNS, [{"step": 2 + i // 2, "timestep": 500, "iteration": i % 2, "total": v,
                                              "seconds": 0.1 * (i + 1)} for i, v in enumerate(ito)])
    write_csv(run / "null_text.csv", NULL_TEXT_COLUMNS, [{"step": i, "timestep": 900, "iteration": 0, "loss": v,
                                                          "seconds": 0.05} for i, v in enumerate(null)])
    if trace is not None:
        (run / "memory_trace.csv").write_text("seconds,nvml_used_bytes\n" + "".join(f"{t},{m}\n" for t, m in trace))
    return run


# --- prompt handling and the formula -----------------------------------------------------------------
@pytest.mark.parametrize("prompt,indices,kept,removed", [
    (VANGOGH, [4, 5, 6], "A dog in", "Van Gogh Style"),
    ("A man with a beard wearing glasses and a hat in blue shirt", [4, 5],
     "A man with wearing glasses and a hat in blue shirt", "a beard"),
    ("Tyler Edlin style, a castle on a hill", [1, 2, 3], "style, a castle on a hill", "Tyler Edlin"),
    ("Tyler Edlin style, a castle on a hill", [2], "Tyler style, a castle on a hill", "Edlin"),  # sub-word
    ("A castle on a hill, Tyler Edlin", [7, 8, 9], "A castle on a hill", "Tyler Edlin"),
    ("two cars parked near the café!", [2], "two parked near the café!", "cars"),
])
def test_split_prompt_removes_the_suppressed_words(tokenizer, prompt, indices, kept, removed):
    assert split_prompt(prompt, token_table(tokenizer, prompt).as_rows(), indices) == (kept, removed)


def test_dataset_of_task_ids():
    assert dataset_of("vangogh-07") == "vangogh"
    assert dataset_of("coco-car-gen-02") == "coco-car-gen"
    assert dataset_of("unsplash-03-a-brown-leather-chair") == "unsplash"
    assert dataset_of("examples-01") == "examples"
    assert dataset_of("generated-a-dog-tok4-a1-tau0.8-seed2") == "misc"


def test_clip_score_clamps_and_weights():
    np.testing.assert_allclose(clip_score(np.array([-0.4, 0.0, 0.2, 1.0])), [0.0, 0.0, 0.5, 2.5])


def test_clipscore_matches_hand_computed(tiny_clip):
    """The scorer against embeddings computed here with get_text_features/get_image_features and the formula."""
    images = [noise(0), noise(1), Image.new("RGB", (48, 40), "red")]
    texts = ["a dog", VANGOGH, "glasses", "the sky"]
    model = transformers.CLIPModel.from_pretrained(tiny_clip).eval()
    processor = transformers.CLIPProcessor.from_pretrained(tiny_clip)
    with torch.no_grad():
        text = model.get_text_features(**processor.tokenizer([PREFIX + t for t in texts], padding=True,
                                                             return_tensors="pt"))
        image = model.get_image_features(**processor.image_processor(images=images, return_tensors="pt"))
    text, image = (getattr(x, "pooler_output", x) for x in (text, image))
    text, image = text / text.norm(dim=-1, keepdim=True), image / image.norm(dim=-1, keepdim=True)
    cosine = (image @ text.T).numpy()
    assert (cosine > 0.05).any() and (cosine < -0.05).any()  # both sides of the clamp are exercised
    expected = 2.5 * np.maximum(cosine, 0)

    scorer = CLIPScorer(tiny_clip, device="cpu", batch_size=2)  # batches of 2: padding must not change scores
    np.testing.assert_allclose(scorer.scores(images, texts), expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(scorer.embed_texts(texts), axis=1), 1, atol=1e-5)


def test_eval_errors_are_one_line(capsys, tmp_path, tiny_clip, tokenizer, monkeypatch):
    def one_line(argv, expected):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err

    one_line(["eval", str(tmp_path / "missing")], "is not a folder")
    one_line(["eval", str(tmp_path)], "no run directories")
    fake_run(tmp_path, "vangogh-01--torch", tokenizer)
    one_line(["eval", str(tmp_path), "--clip-model", str(tmp_path / "no-such-model")], "cannot load the CLIP model")
    one_line(["eval", str(tmp_path), "--clip-model", str(tmp_path)], "cannot load the CLIP model")
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "skimage.metrics", None)  # as if scikit-image were not installed
        one_line(["eval", str(tmp_path), "--clip-model", str(tiny_clip)], "pip install 'suppresseot[eval]'")
    one_line(["report", str(tmp_path), str(tmp_path / "missing"), "--out", str(tmp_path / "r")], "is not a folder")
    one_line(["report", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "r"), "--labels", "a", "a"],
             "two different names")


# --- eval on a synthetic results folder -------------------------------------------------------------
@pytest.fixture
def synthetic(tmp_path, tokenizer):
    """7 runs: vangogh x2 backends x2 tasks, a COCO task, an add-mode run, a hand-named run, a dataset key."""
    out = tmp_path / "results"
    for backend in ("torch", "jittor"):
        for number in (1, 2):
            fake_run(out, f"vangogh-0{number}--{backend}", tokenizer, backend=backend,
                     image_seeds=(number, number + (10 if backend == "torch" else 20)))
    fake_run(out, "coco-car-gen-139--torch", tokenizer, prompt="two cars parked near the trees", indices=[2],
             extra={"task": {"id": "coco-car-gen-139", "set": "coco-car-gen", "target": "car"}})
    fake_run(out, "unsplash-01--torch", tokenizer, alpha=-0.001, prompt="a cake with strawberries", indices=[4])
    fake_run(out, "my-own-run", tokenizer, prompt="a red car", indices=[3], extra={"dataset": "custom"})
    fake_run(out, "generated-a-cat-tok3", tokenizer, prompt="a sleeping cat", indices=[3], extra={"backend": {}})
    (out / ".vangogh-03--torch.tmp-123").mkdir()  # a run being written: ignored
    return out


def test_eval_scores_groups_and_deltas(capsys, synthetic, tiny_clip):
    assert main(["eval", str(synthetic), "--clip-model", str(tiny_clip), "--device", "cpu", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    rows = {r["run_dir"]: r for r in read_csv(synthetic / "clipscores.csv")}
    assert len(rows) == 8
    assert {r["run_dir"]: (r["dataset"], r["backend"], r["mode"]) for r in rows.values()} == {
        **{f"vangogh-0{n}--{backend}": ("vangogh", backend, "suppress") for n in (1, 2)
           for backend in ("torch", "jittor")},
        "coco-car-gen-139--torch": ("coco-car-gen", "torch", "suppress"),
        "unsplash-01--torch": ("unsplash", "torch", "add"),
        "my-own-run": ("custom", "torch", "suppress"), "generated-a-cat-tok3": ("misc", "unknown", "suppress")}
    assert all(r["approach"] == "suppresseot" for r in rows.values())  # runs made before approaches existed
    assert rows["vangogh-01--torch"]["kept_prompt"] == "A dog in"
    assert rows["coco-car-gen-139--torch"]["kept_prompt"] == "two parked near the trees"

    # every score is the scorer's, and the deltas are suppressed minus original; preservation of the same pair
    scorer = CLIPScorer(tiny_clip, device="cpu")
    for run in find_runs(synthetic):
        row = rows[run.name]
        images = [Image.open(run.path / "original.png"), Image.open(run.path / "suppressed.png")]
        (op, ok), (sp, sk) = scorer.scores(images, [run.prompt, row["kept_prompt"]])
        for column, value in (("original_vs_prompt", op), ("suppressed_vs_prompt", sp),
                              ("original_vs_kept", ok), ("suppressed_vs_kept", sk),
                              ("delta_prompt", sp - op), ("delta_kept", sk - ok),
                              ("clip_image_similarity", cosine(*scorer.embed_images(images))),
                              ("ssim", ssim(*images))):
            assert float(row[column]) == pytest.approx(value, abs=1e-5), (run.name, column)
        assert -1 <= float(row["ssim"]) < 0.1  # two different noise images
        assert row["ssim_outside_boxes"] == row["boxes"] == ""  # they need --detector

    # one table row per dataset and backend; add-mode runs apart; means of the member runs
    table = {(e["dataset"], e["backend"]): e for e in summarise(list(rows.values()))}  # one approach here
    assert set(table) == {("vangogh", "torch"), ("vangogh", "jittor"), ("coco-car-gen", "torch"),
                          ("unsplash (add)", "torch"), ("custom", "torch"), ("misc", "unknown")}
    members = [rows[f"vangogh-0{n}--jittor"] for n in (1, 2)]
    assert table[("vangogh", "jittor")]["runs"] == 2
    assert table[("vangogh", "jittor")]["delta_prompt"] == pytest.approx(
        np.mean([float(r["delta_prompt"]) for r in members]))
    assert table[("vangogh", "jittor")]["dropped"] == np.mean([float(r["delta_prompt"]) < 0 for r in members])
    markdown = (synthetic / "clipscores.md").read_text()
    assert markdown in printed
    assert len(re.findall(r"^\| vangogh \| suppresseot \| (torch|jittor) \| 2 \|", markdown, re.M)) == 2
    assert "| unsplash (add) | suppresseot | torch | 1 |" in markdown
    assert "SSIM outside boxes" not in markdown


def test_eval_summarises_each_approach_apart(capsys, tmp_path, tokenizer, tiny_clip):
    """Runs of one task by two approaches (as `batch --approach` names them) are two rows of the table."""
    out = tmp_path / "results"
    fake_run(out, "vangogh-01--torch", tokenizer, image_seeds=(1, 2))
    fake_run(out, "vangogh-02--torch", tokenizer, image_seeds=(3, 4), extra={"approach": {"name": "suppresseot"}})
    fake_run(out, "vangogh-01--negative-prompt--torch", tokenizer, image_seeds=(1, 1),
             extra={"approach": {"name": "negative-prompt"}})
    assert main(["eval", str(out), "--clip-model", str(tiny_clip), "--device", "cpu", "--no-progress"]) == 0
    rows = {r["run_dir"]: r for r in read_csv(out / "clipscores.csv")}
    assert list(read_csv(out / "clipscores.csv")[0]) == COLUMNS
    assert COLUMNS.index("approach") == COLUMNS.index("mode") + 1
    assert rows["vangogh-01--negative-prompt--torch"]["approach"] == "negative-prompt"
    assert rows["vangogh-01--negative-prompt--torch"]["task"] == "vangogh-01"

    table = {(e["dataset"], e["approach"], e["backend"]): e for e in summarise(list(rows.values()))}
    assert set(table) == {("vangogh", "suppresseot", "torch"), ("vangogh", "negative-prompt", "torch")}
    assert table[("vangogh", "suppresseot", "torch")]["runs"] == 2
    assert table[("vangogh", "suppresseot", "torch")]["ssim"] == pytest.approx(
        np.mean([float(rows[f"vangogh-0{n}--torch"]["ssim"]) for n in (1, 2)]))
    unchanged = table[("vangogh", "negative-prompt", "torch")]  # its "edit" left the image as it was
    assert unchanged["ssim"] == pytest.approx(1.0) and unchanged["clip_image_similarity"] == pytest.approx(1, abs=1e-5)
    markdown = (out / "clipscores.md").read_text()
    assert "| dataset | approach | backend | runs |" in markdown
    assert re.search(r"^\| vangogh \| suppresseot \| torch \| 2 \|", markdown, re.M)
    assert re.search(r"^\| vangogh \| negative-prompt \| torch \| 1 \|.*\| 1\.000 \| 1\.000 \|$", markdown, re.M)


# --- preservation --------------------------------------------------------------------------------------
def changed_inside(box, size=64):
    """A noise image and a copy whose pixels inside ``box`` (xmin, ymin, xmax, ymax, inclusive) are new noise."""
    xmin, ymin, xmax, ymax = box
    a = np.asarray(noise(5, size))
    b = a.copy()
    b[ymin:ymax + 1, xmin:xmax + 1] = np.asarray(noise(6, size))[ymin:ymax + 1, xmin:xmax + 1]
    return Image.fromarray(a), Image.fromarray(b)


def test_ssim_of_an_image_with_itself_is_one_and_of_noise_low():
    assert ssim(noise(1), noise(1)) == pytest.approx(1.0)
    assert abs(ssim(noise(1), noise(2))) < 0.05
    assert ssim_columns(noise(1), noise(1, 32), boxes=None) == {
        "note": "original 64x64 and suppressed 32x32 differ in size: no SSIM"}


def test_ssim_outside_boxes_ignores_a_change_inside_a_box():
    box = (24, 20, 43, 39)
    original, edited = changed_inside(box)
    assert ssim(original, edited) < 0.95
    assert ssim_outside_boxes(original, edited, [box]) == pytest.approx(1.0)  # windows touching the box left out
    assert ssim_outside_boxes(original, edited, []) == pytest.approx(ssim(original, edited))  # no box: whole image
    assert ssim_outside_boxes(original, edited, [(0, 0, 10, 10)]) < 0.99  # a box elsewhere hides nothing
    assert ssim_outside_boxes(original, edited, [(0, 0, 10, 10), box]) == pytest.approx(1.0)  # the union
    assert ssim_outside_boxes(original, edited, [(-5, -5, 80, 80)]) is None  # boxes cover it all: no pixel left

    mask = outside_mask((64, 64), [(24, 20, 43, 39)])
    assert not mask[:3].any() and not mask[:, -3:].any()  # the border scikit-image leaves out of its mean
    assert not mask[17:43, 21:47].any() and mask[16, 30] and mask[30, 47]  # the box widened by the window radius


def test_clip_image_similarity_of_identical_images_is_one(tiny_clip):
    scorer = CLIPScorer(tiny_clip, device="cpu")
    assert clip_image_similarity(scorer, noise(1), noise(1)) == pytest.approx(1.0, abs=1e-5)
    assert -1 <= clip_image_similarity(scorer, noise(1), Image.new("RGB", (64, 64), "red")) < 1 - 1e-3


def test_detector_best_score_and_counts(tiny_owl, synthetic, capsys, tiny_clip):
    """The pipeline's best box score equals the model's own max sigmoid logit; counting follows the threshold."""
    from suppresseot.evaluation.detect import Detector, count_detected

    detector = Detector(tiny_owl, device="cpu")
    images = [noise(3), noise(4), Image.new("RGB", (60, 40), "blue")]
    scores = detector.best_scores(images, "car")
    model = transformers.Owlv2ForObjectDetection.from_pretrained(tiny_owl).eval()
    processor = transformers.Owlv2Processor.from_pretrained(tiny_owl)
    with torch.no_grad():
        for image, score in zip(images, scores):
            logits = model(**processor(text=[["car"]], images=image, return_tensors="pt")).logits
            assert score == pytest.approx(torch.sigmoid(logits.max()).item(), abs=1e-5)
    assert 0.2 < min(scores) < max(scores) < 0.8
    middle = sorted(scores)[1]
    assert count_detected(scores, 0.0) == 3
    assert count_detected(scores, middle) == 1  # strictly above
    assert count_detected(scores, (sorted(scores)[0] + middle) / 2) == 2
    assert count_detected(scores, 1.0) == 0

    # find: the same best scores, and boxes (pixels, inclusive) only where a box scores above the threshold
    found = detector.find(images, "car", middle)
    assert [f.best for f in found] == pytest.approx(scores, abs=1e-6)
    for f in found:
        assert bool(f.boxes) == (f.best > middle)
        assert all(len(box) == 4 and box[0] <= box[2] and box[1] <= box[3] and all(isinstance(v, int) for v in box)
                   for box in f.boxes)  # a random model's boxes may reach past the image: the mask clips them
    assert detector.find(images, " ", middle)[0].boxes == []

    # through the command: the batch task's target is the query, else the suppressed words
    out = synthetic / "scores.csv"
    assert main(["eval", str(synthetic), "--clip-model", str(tiny_clip), "--device", "cpu", "--no-progress",
                 "--out", str(out), "--detector", str(tiny_owl), "--detector-threshold", str(middle)]) == 0
    rows = {r["run_dir"]: r for r in read_csv(out)}
    assert rows["coco-car-gen-139--torch"]["detector_query"] == "car"
    assert rows["vangogh-01--torch"]["detector_query"] == "Van Gogh Style"
    for row in rows.values():
        for branch in ("original", "suppressed"):
            assert int(row[f"{branch}_detected"]) == int(float(row[f"{branch}_detector_score"]) > middle)

    # ssim_outside_boxes leaves out the boxes found in either image; with none it is the whole image's SSIM
    for run in find_runs(synthetic):
        row = rows[run.name]
        pair = [Image.open(run.path / "original.png").convert("RGB"), Image.open(run.path / "suppressed.png")]
        before, after = detector.find(pair, row["detector_query"], middle)
        assert int(row["boxes"]) == len(before.boxes) + len(after.boxes)
        expected = ssim_outside_boxes(*pair, before.boxes + after.boxes)
        assert (row["ssim_outside_boxes"] == "") if expected is None else (
            float(row["ssim_outside_boxes"]) == pytest.approx(expected, abs=1e-9))
        if row["boxes"] == "0":
            assert row["ssim_outside_boxes"] == row["ssim"]
        assert -1 <= float(row["ssim"]) <= 1
    assert {row["boxes"] for row in rows.values()} - {"0"}, "no run had a box: the masking went untested"
    markdown = (synthetic / "scores.md").read_text()
    vangogh_torch = [rows[f"vangogh-0{n}--torch"] for n in (1, 2)]
    detected = sum(int(r["suppressed_detected"]) for r in vangogh_torch)
    assert "SSIM outside boxes" in markdown
    assert re.search(rf"^\| vangogh \| suppresseot \| torch \| 2 \|.*\| \d/2 \| {detected}/2 \|$", markdown,
                     re.M), markdown


# --- report ------------------------------------------------------------------------------------------
@needs_matplotlib
def test_report_matches_backends_of_one_folder_and_computes_parity(tmp_path, tokenizer):
    """One folder with both backends' runs (as a batch writes them); GPU-style memory records and traces."""
    folder = tmp_path / "runs"
    rng = np.random.default_rng(0)
    base = rng.normal(size=(2, 4, 8, 8)).astype(np.float32)
    moved = base + np.float32(0.01) * rng.normal(size=base.shape).astype(np.float32)
    gib = 2 ** 30
    for backend, latents, ito, null, scale in (("torch", moved, (3.0, 2.0, 1.1), (0.5, 0.4), 1.0),
                                               ("jittor", base, (3.0, 2.0, 1.0), (0.5, 0.5), 1.5)):
        memory = {"null_text": {"allocated": 3 * gib * scale, "reserved": 4 * gib * scale},
                  "swr_ito_sampling": {"allocated": 5 * gib * scale, "reserved": 6 * gib * scale}}
        fake_run(folder, f"vangogh-01--{backend}", tokenizer, backend=backend, latents=latents, ito=ito, null=null,
                 memory=memory, trace=[(0.0, 2 * gib), (0.5, 6 * gib * scale), (1.0, 3 * gib)],
                 extra={"nvml": {"peak_used_bytes": 7 * gib * scale}, "task_seconds": 10 * scale})
    fake_run(folder, "tyler-02--jittor", tokenizer, backend="jittor", prompt="Tyler Edlin style, a castle",
             indices=[1, 2, 3])
    # a torch run named differently that matches the jittor run by prompt, tokens and seed
    fake_run(folder, "renamed--torch", tokenizer, backend="torch", prompt="Tyler Edlin style, a castle",
             indices=[1, 2, 3])

    write_csv(folder / "summary.csv", ["task", "backend", "status"], [
        {"task": "vangogh-01", "backend": "torch", "status": "finished"},
        {"task": "vangogh-02", "backend": "torch", "status": "failed"},
        {"task": "vangogh-01", "backend": "jittor", "status": "finished"},
        {"task": "tyler-02", "backend": "jittor", "status": "finished"}])

    out = tmp_path / "report"
    assert main(["report", str(folder), str(folder), "--out", str(out)]) == 2  # the labels must pick the backends
    assert main(["report", str(folder), str(folder), "--out", str(out), "--labels", "torch", "jittor"]) == 0
    md = (out / "report.md").read_text()
    assert "| jittor 1.3.11.0 |" in md and "{'version'" not in md  # the version, not the whole record
    for png in ("ito_loss.png", "seconds_per_iteration.png", "memory_per_stage.png", "memory_trace.png",
                "grid-vangogh-1.png"):
        with Image.open(out / png) as image:
            image.verify()
        assert f"]({png})" in md
    assert "2 tasks ran on both sides" in md
    rel = np.linalg.norm(moved.astype(np.float64) - base) / np.linalg.norm(base.astype(np.float64))
    row = next(line for line in md.splitlines() if line.startswith("| vangogh-01 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[1]) == pytest.approx(rel, rel=1e-2)
    assert float(cells[4]) == pytest.approx(np.abs(moved.astype(np.float64) - base).max(), rel=1e-2)
    assert float(cells[5]) == pytest.approx(0.1, rel=1e-2)  # ITO total 1.1 vs 1.0
    assert float(cells[7]) == pytest.approx(0.2, rel=1e-2)  # null-text 0.4 vs 0.5
    assert "| vangogh | 1 | 1 | 10.00 | 15.00 |" in md  # the batch's task seconds per side
    assert "No CLIPScores for torch, jittor" in md
    runs = _table(md, "label")
    assert runs["torch"][2] == "2" and runs["torch"][-1] == "1 failed, 1 finished"
    assert runs["jittor"][2] == "2" and runs["jittor"][-1] == "2 finished"


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory, small_model_dir):
    """Real runs of the tiny SD model at 256 px: A (faithful) generates and edits a photo, B (fused attention) generates."""
    from suppresseot.api import SuppressEOT
    from suppresseot.config import InversionSettings

    root = tmp_path_factory.mktemp("tiny-results")
    photo = root / "A car near trees.png"
    y, x = np.mgrid[0:300, 0:400]
    Image.fromarray(np.stack([x * 255 // 400, y * 255 // 300, (x + y) % 256], -1).astype(np.uint8)).save(photo)
    fast = dict(steps=2, iterations=1, max_step_to_erase=2, tau=0.5)
    a = SuppressEOT.from_pretrained(small_model_dir, progress=False)
    a.generate(VANGOGH, [4, 5, 6], seed=1, **fast).save(root / "A", name="vangogh-01--torch")
    a.edit(photo, "A car near trees", suppress="car", inversion=InversionSettings("nt", inner_steps=2),
           **fast).save(root / "A", name="examples-01--torch")
    b = SuppressEOT.from_pretrained(small_model_dir, progress=False, fast=True)
    b.generate(VANGOGH, [4, 5, 6], seed=1, **fast).save(root / "B", name="vangogh-01--torch")
    return root / "A", root / "B"


def _table(md: str, first_column: str) -> dict[str, list[str]]:
    """Rows of the markdown table whose header starts with ``first_column``, by first cell."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells
    return rows


@pytest.mark.slow
@needs_matplotlib
def test_report_from_tiny_model_runs(tiny_results, tiny_clip, tmp_path, capsys):
    runs_a, runs_b = tiny_results
    labels = ["--labels", "torch", "torch-fast", "--thumb", "48"]

    # before eval: the score columns are blank, and the report says so
    assert main(["report", str(runs_a), str(runs_b), "--out", str(tmp_path / "before")] + labels) == 0
    md = (tmp_path / "before" / "report.md").read_text()
    assert "No CLIPScores for torch, torch-fast" in md
    assert _table(md, "dataset")["vangogh"][5:] == [""] * 6

    for folder in tiny_results:
        assert main(["eval", str(folder), "--clip-model", str(tiny_clip), "--device", "cpu", "--no-progress"]) == 0
    assert set(r["dataset"] for r in read_csv(runs_a / "clipscores.csv")) == {"vangogh", "examples"}
    capsys.readouterr()

    out = tmp_path / "report"
    assert main(["report", str(runs_a), str(runs_b), "--out", str(out)] + labels) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.md")
    md = (out / "report.md").read_text()
    assert "No CLIPScores" not in md
    datasets = _table(md, "dataset")
    assert list(datasets) == ["examples", "vangogh", "all"]
    assert datasets["examples"][1:3] == ["1", "0"] and datasets["vangogh"][1:3] == ["1", "1"]
    assert all(datasets["vangogh"][3:11]), datasets["vangogh"]  # times and scores of both sides
    scores_a = {r["run_dir"]: r for r in read_csv(runs_a / "clipscores.csv")}
    assert float(datasets["vangogh"][7]) == pytest.approx(float(scores_a["vangogh-01--torch"]["delta_prompt"]),
                                                          abs=1e-3)

    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["grid-vangogh-1.png", "ito_loss.png", "seconds_per_iteration.png"]  # CPU: no memory plots
    for name in pngs:
        with Image.open(out / name) as image:
            image.verify()
        assert f"]({name})" in md
    assert "No peak memory was recorded" in md
    with Image.open(out / "grid-vangogh-1.png") as grid:
        assert grid.size[1] >= 48  # one task row

    # parity of the matching task, recomputed from the latents; the seconds table has both loops of A
    la = np.load(runs_a / "vangogh-01--torch" / "final_latents.npy").astype(np.float64)
    lb = np.load(runs_b / "vangogh-01--torch" / "final_latents.npy").astype(np.float64)
    parity = _table(md, "task")["vangogh-01"]
    assert float(parity[1]) == pytest.approx(np.linalg.norm(la - lb) / np.linalg.norm(lb), rel=1e-2, abs=1e-12)
    for side, loop in (("torch", "null-text"), ("torch", "ITO"), ("torch-fast", "ITO")):
        assert f"| {side} | {loop} |" in md
    assert "| torch-fast | null-text |" not in md  # B edited no photo
    assert "1 task ran on both sides" in md and "Runs without a match, not shown: torch: 1" in md


# --- the methods report: the approaches of one folder ----------------------------------------------------
APPROACH_SCORES = {  # approach: per task (delta_prompt, delta_kept, suppressed_detected, ssim); seconds; GiB
    "sega": ({"vangogh-01": (-0.1, -0.2, 1, 0.9), "vangogh-02": (0.1, -0.4, 1, 0.7),
              "coco-car-gen-139": (0.2, 0, 1, 0.8)}, 5.0, 3.0),
    "suppresseot": ({"vangogh-01": (-0.5, 0.05, 0, 0.6), "vangogh-02": (-0.3, -0.15, 0, 0.4),
                     "coco-car-gen-139": (-0.2, 0.1, 0, 0.5)}, 9.0, 4.0),
    "negative-prompt": ({"vangogh-01": (-0.2, -0.3, 0, 0.8), "vangogh-02": (-0.2, -0.3, 1, 0.8)}, 2.0, None),
}


@pytest.fixture
def approaches_folder(tmp_path, tokenizer):
    """Runs of 3 approaches on 2 vangogh tasks and of 2 of them on a COCO task, with a hand-made clipscores.csv."""
    folder = tmp_path / "runs"
    rows = []
    for number, (approach, (tasks, seconds, gib)) in enumerate(APPROACH_SCORES.items()):
        for task, (delta_prompt, delta_kept, detected, ssim_value) in tasks.items():
            dataset = task.rsplit("-", 1)[0]
            memory = {"swr_ito_sampling": {"allocated": None if gib is None else gib * 2 ** 30, "reserved": None}}
            fake_run(folder, f"{task}--{approach}--torch", tokenizer, image_seeds=(hash(task) % 99, 100 + number),
                     memory=memory, extra={"approach": {"name": approach}, "task_seconds": seconds,
                                           "task": {"id": task, "set": dataset}})
            rows.append({"run_dir": f"{task}--{approach}--torch", "task": task, "dataset": dataset,
                         "approach": approach, "backend": "torch", "suppressed_vs_prompt": 2 + delta_prompt,
                         "delta_prompt": delta_prompt, "delta_kept": delta_kept, "suppressed_detected": detected,
                         "original_detected": 1, "clip_image_similarity": 0.9, "ssim": ssim_value,
                         "ssim_outside_boxes": ssim_value})
    return folder, rows


def _table_after(md: str, heading: str) -> dict[str, list[str]]:
    """The first markdown table after the line ``heading``, rows by first cell (with the header row as "")."""
    lines = md.splitlines()
    start = lines.index(heading)
    first = next(i for i in range(start, len(lines)) if lines[i].startswith("|"))
    table = {"": [c.strip() for c in lines[first].strip().strip("|").split("|")]}
    for line in lines[first + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        table[cells[0]] = cells
    return table


def _cell(text: str) -> tuple[float, bool, tuple[float, float] | None]:
    """``**mean** [low, high]`` as (mean, bold, interval); percentages as fractions."""
    match = re.fullmatch(r"(\*\*)?(-?[\d.]+)(%?)(?:\*\*)?(?: \[(-?[\d.]+)%?, (-?[\d.]+)%?\])?(?: \(n=\d+\))?", text)
    assert match, text
    scale = 0.01 if match[3] else 1
    interval = (float(match[4]) * scale, float(match[5]) * scale) if match[4] else None
    return float(match[2]) * scale, bool(match[1]), interval


@needs_matplotlib
def test_methods_report_means_intervals_best_and_grids(approaches_folder, tmp_path, capsys):
    from scipy import stats

    folder, rows = approaches_folder
    out = tmp_path / "report"
    assert main(["report", str(folder), "--out", str(out), "--thumb", "32"]) == 0  # before eval: time and memory
    md = (out / "report.md").read_text()
    assert f"run `suppress-eot eval {folder}`" in md and "time and memory only" in md
    before = _table_after(md, "### vangogh")
    assert before[""] == ["approach", "n", "tasks", "s / run ↓", "peak GiB ↓"]
    assert list(before)[1:] == ["suppresseot", "negative-prompt", "sega"]  # the approaches table's order
    assert before["negative-prompt"][3:] == ["**2.00** [2.00, 2.00]", ""]
    assert "Left out, as no run has a value: CLIP edit→prompt (needs `suppress-eot eval`)" in md

    write_csv(folder / "clipscores.csv", COLUMNS, rows)
    capsys.readouterr()
    assert main(["report", str(folder), "--out", str(out), "--thumb", "32"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.md")
    md = (out / "report.md").read_text()
    assert "No CLIPScores" not in md
    table = _table_after(md, "### vangogh")
    columns = table[""]
    assert columns == ["approach", "n", "tasks", "CLIP edit→prompt ↓", "Δ prompt ↓", "Δ kept →0",
                       "still detected ↓", "CLIP img sim ↑", "SSIM ↑", "SSIM outside boxes ↑", "s / run ↓", "peak GiB ↓"]
    for approach, (tasks, _, _) in APPROACH_SCORES.items():
        values = [v for task, v in tasks.items() if task.startswith("vangogh")]
        assert table[approach][1:3] == ["2", "2/2"]
        for column, k in (("Δ prompt ↓", 0), ("Δ kept →0", 1), ("SSIM ↑", 3)):
            sample = [v[k] for v in values]
            mean, _, interval = _cell(table[approach][columns.index(column)])
            assert mean == pytest.approx(np.mean(sample), abs=5e-4)
            if np.std(sample):
                low, high = stats.t.interval(0.95, len(sample) - 1, loc=np.mean(sample), scale=stats.sem(sample))
                assert interval == pytest.approx((low, high), abs=5e-4), (approach, column)
        detected = sum(v[2] for v in values)
        share, _, interval = _cell(table[approach][columns.index("still detected ↓")])
        ci = stats.binomtest(detected, len(values)).proportion_ci(0.95, method="wilson")
        assert share == detected / len(values) and interval == pytest.approx((ci.low, ci.high), abs=5e-3)

    def bold(column):
        return [a for a in APPROACH_SCORES if _cell(table[a][columns.index(column)])[1]]

    assert bold("Δ prompt ↓") == ["suppresseot"]  # -0.4 < -0.2 < 0
    assert bold("Δ kept →0") == ["suppresseot"]  # |-0.05| is nearest 0
    assert bold("SSIM ↑") == ["sega", "negative-prompt"]  # 0.8 both: a tie marks both
    assert bold("still detected ↓") == ["suppresseot"] and bold("s / run ↓") == ["negative-prompt"]
    assert bold("CLIP img sim ↑") == list(APPROACH_SCORES)

    coco = _table_after(md, "### coco-car-gen")  # one run each: no interval
    assert list(coco)[1:] == ["suppresseot", "sega"] and coco["sega"][4] == "0.200"
    pooled = _table_after(md, "### all sets")
    assert pooled["suppresseot"][1:3] == ["3", "3/3"] and pooled["negative-prompt"][1:3] == ["2", "2/3"]
    assert _cell(pooled["suppresseot"][4])[0] == pytest.approx(np.mean([-0.5, -0.3, -0.2]), abs=5e-4)
    # best only among the approaches that ran every task: negative-prompt's 2.00 s is not marked
    assert "**" not in "".join(pooled["negative-prompt"]) and pooled["sega"][-2].startswith("**5.00**")
    assert "| still detected | lower (add: higher) |" in md

    # grids: per set, the original and one column per approach, tasks as rows; the original is the first approach's
    assert sorted(p.name for p in out.glob("*.png")) == ["grid-coco-car-gen-1.png", "grid-vangogh-1.png"]
    for name, approaches, tasks in (("vangogh", 3, 2), ("coco-car-gen", 2, 1)):
        assert f"![{name}](grid-{name}-1.png)" in md
        with Image.open(out / f"grid-{name}-1.png") as grid:
            assert grid.size[0] == 150 + (1 + approaches) * 36
            head = grid.size[1] - tasks * 36
            original = grid.crop((150, head, 182, head + 32))
    expected = Image.open(folder / "coco-car-gen-139--suppresseot--torch" / "original.png").convert("RGB")
    assert np.array_equal(np.array(original), np.array(expected.resize((32, 32), Image.Resampling.LANCZOS)))


def test_methods_best_flips_in_add_mode_and_labels_need_two_folders(approaches_folder, tmp_path, capsys):
    from suppresseot.evaluation.methods import METRICS, compare

    folder, rows = approaches_folder
    scores = {r["run_dir"]: r for r in rows}
    runs = [r for r in find_runs(folder) if r.dataset == "vangogh"]
    delta = next(m for m in METRICS if m.key == "delta_prompt")
    assert [r.key[0] for r in compare(runs, scores, [delta]) if r.best[0]] == ["suppresseot"]
    assert [r.key[0] for r in compare(runs, scores, [delta], mode="add") if r.best[0]] == ["sega"]  # should rise

    assert main(["report", str(folder), "--out", str(tmp_path / "r"), "--labels", "a", "b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give RUNS_B too" in err[0]


@needs_matplotlib
def test_two_folders_of_several_approaches_match_by_task_and_approach(tmp_path, tokenizer):
    """Each side ran vangogh-01 with two approaches: a run pairs with its own approach's, not the first task match."""
    from suppresseot.evaluation.report import match_runs

    latents = {"sega": np.full((2, 4, 8, 8), 2.0, np.float32), "suppresseot": np.ones((2, 4, 8, 8), np.float32)}
    for side, backend in (("A", "torch"), ("B", "jittor")):
        for approach in ("suppresseot", "sega"):
            fake_run(tmp_path / side, f"vangogh-01--{approach}--{backend}", tokenizer, backend=backend,
                     latents=latents[approach], extra={"approach": {"name": approach}})
        # a renamed run of the same prompt, tokens and seed: matched by those and the approach
        fake_run(tmp_path / side, f"{side}-renamed--{backend}", tokenizer, backend=backend, seed=7,
                 latents=latents["sega"], extra={"approach": {"name": "sega"}})
    pairs = match_runs(find_runs(tmp_path / "A"), find_runs(tmp_path / "B"))
    assert sorted((a.name, b.name) for a, b in pairs) == [
        ("A-renamed--torch", "B-renamed--jittor"), ("vangogh-01--sega--torch", "vangogh-01--sega--jittor"),
        ("vangogh-01--suppresseot--torch", "vangogh-01--suppresseot--jittor")]

    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "A"), str(tmp_path / "B"), "--out", str(out), "--labels", "torch",
                 "jittor", "--thumb", "32"]) == 0
    md = (out / "report.md").read_text()
    assert "3 tasks ran on both sides" in md and "one folder compares the approaches" in md
    parity = _table(md, "task")
    assert float(parity["vangogh-01 · suppresseot"][1]) == 0 and float(parity["vangogh-01 · sega"][1]) == 0
    with Image.open(out / "grid-vangogh-1.png") as grid:
        assert grid.size[0] == 150 + 4 * 36
