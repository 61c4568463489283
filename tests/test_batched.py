"""Several tasks run together (UNet passes batched): each task's results equal its one-by-one run."""
import json
from pathlib import Path

import numpy as np
import pytest

from suppresseot.study.batch import BatchOptions, make_groups
from suppresseot.study.manifests import Task

EXAMPLES = Path(__file__).parents[1] / "src/suppresseot/data/study/examples"
SHORT = dict(steps=4, iterations=2, max_step_to_erase=3, tau=0.75)  # SWR from step 1, ITO at steps 1 and 2
# Batched and single-sample kernels may round differently (oneDNN blocks a batch of 2 otherwise than a batch
# of 1); the rest of the arithmetic is the same. Generated images keep ~1e-6; photos chain inversion,
# null-text and thresholded attention masks, which amplify last-bit differences (see test_parity.py).
GENERATED_RTOL = 1e-4
REAL_RTOL = 1e-3
EARLY_STOP = 0.3  # tiny model, 4 steps: the car photo stops at step 0 (loss 0.15), the man photo never (>= 0.42)


def relative(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def totals(result):
    return np.array([row["total"] for row in result.ito_log])


def test_make_groups_gathers_tasks_of_one_kind_and_settings_in_order():
    tasks = [Task("g1", "generated", "a cat", [2]), Task("r1", "real", "a cat", [2], image="x.png"),
             Task("g2", "generated", "a dog", [2], seed=5), Task("g3", "generated", "a cow", [2], tau=0.5),
             Task("g4", "generated", "a fox", [2]), Task("g5", "generated", "an owl", [2]),
             Task("bad", "generated", "a bee", [2], tau=7.0)]
    groups = make_groups(tasks, BatchOptions(group_size=2))
    assert [[t.id for t in g] for g in groups] == [["g1", "g2"], ["r1"], ["g3"], ["g4", "g5"], ["bad"]]
    assert [[t.id for t in g] for g in make_groups(tasks, BatchOptions())] == [[t.id] for t in tasks]


def test_batch_ito_blocks_reach_every_tasks_settings():
    from suppresseot.cli import build_parser
    from suppresseot.study.batch import task_settings

    args = build_parser().parse_args(["batch", "m.json", "--out", "o", "--ito-blocks", "mid,down"])
    assert args.ito_blocks == ("mid", "down")
    settings, _ = task_settings(Task("g", "generated", "a cat", [2]), BatchOptions(ito_blocks=args.ito_blocks))
    assert settings.ito_blocks == ("down", "mid")
    assert task_settings(Task("g", "generated", "a cat", [2]), BatchOptions())[0].ito_blocks == ("up", "down", "mid")


@pytest.fixture(scope="module")
def model(small_model_dir):
    pytest.importorskip("diffusers")
    from suppresseot import SuppressEOT

    return SuppressEOT.from_pretrained(small_model_dir, device="cpu", progress=False)


@pytest.mark.slow
def test_generate_many_equals_generate_one_by_one(model):
    prompts = ["A dog in Van Gogh Style", "A man with a beard wearing glasses and a hat in blue shirt"]
    suppress, seeds = [[4, 5, 6], "glasses"], [2, 7]
    alone = [model.generate(p, s, seed=seed, **SHORT) for p, s, seed in zip(prompts, suppress, seeds)]
    together = model.generate_many(prompts, suppress, seeds, **SHORT)
    for a, b in zip(alone, together):
        assert (b.prompt, b.token_indices, b.seed, b.group_size) == (a.prompt, a.token_indices, a.seed, 2)
        assert len(b.ito_log) == len(a.ito_log) == 2 * 2
        assert [(r["step"], r["iteration"]) for r in b.ito_log] == [(r["step"], r["iteration"]) for r in a.ito_log]
        for step in {r["step"] for r in b.ito_log}:  # each iteration holds its step's mean time (GPUs queue them)
            assert len({r["seconds"] for r in b.ito_log if r["step"] == step}) == 1
        assert all(r["seconds"] > 0 for r in b.ito_log)
        np.testing.assert_allclose(totals(b), totals(a), rtol=GENERATED_RTOL)
        assert relative(b.final_latents, a.final_latents) < GENERATED_RTOL
        assert relative(b.cross_attention, a.cross_attention) < GENERATED_RTOL
        assert np.array_equal(b.swr_embedding, a.swr_embedding)
    # the two tasks really differ (a mix-up between them would not pass the checks above)
    assert relative(together[0].final_latents, together[1].final_latents) > 0.1


@pytest.mark.slow
def test_fast_batches_give_the_official_batches_results(model, small_model_dir):
    """Fast mode's batches: guidance's two halves in one pass of twice the batch (its unconditional half through
    fused attention in the recorded layers too), and the steps before SWR starts (where the branches are one
    image) run once. The official batches give the same latents, ITO losses and maps, for a group of two tasks."""
    from suppresseot import SuppressEOT

    backend = model.backend
    assert not backend.one_pass_guidance and not backend.repeated_samples_once
    fast = SuppressEOT.from_pretrained(small_model_dir, device="cpu", fast=True, progress=False).backend.info()
    assert fast["one_pass_guidance"] and fast["repeated_samples_once"]
    prompts, suppress, seeds = ["A dog in Van Gogh Style", "A man with a beard wearing glasses"], [[4, 5, 6], "glasses"], [2, 7]
    backend.fused_attention = True  # fast mode's attention (on the CPU faithful's is explicit everywhere)
    try:
        official = model.generate_many(prompts, suppress, seeds, **SHORT)
        batches, unet = [], backend.unet

        def counting(latents, t, context, recorder=None):
            if recorder is not None:
                batches.append(latents.shape[0])
            return unet(latents, t, context, recorder=recorder)

        backend.unet = counting
        backend.one_pass_guidance = backend.repeated_samples_once = True
        compact = model.generate_many(prompts, suppress, seeds, **SHORT)
    finally:
        backend.one_pass_guidance = backend.repeated_samples_once = backend.fused_attention = False
        backend.__dict__.pop("unet", None)
    # step 0 (before SWR): the originals' two halves in one pass; steps 1-3: both branches' (ITO's passes between)
    assert [b for b in batches if b != 2] == [4, 8, 8, 8]
    for a, b in zip(compact, official):
        np.testing.assert_allclose(totals(a), totals(b), rtol=GENERATED_RTOL)
        assert relative(a.final_latents, b.final_latents) < GENERATED_RTOL
        assert relative(a.cross_attention, b.cross_attention) < GENERATED_RTOL
        assert relative(a.self_attention, b.self_attention) < GENERATED_RTOL
    assert relative(compact[0].final_latents, compact[1].final_latents) > 0.1


@pytest.mark.slow
def test_fast_null_text_reuses_the_conditional_half(model):
    """A null-text step ends with a guided pass over [unconditional, conditional] on the latent whose conditional
    prediction the step began with: fast mode reuses that one (a batch-1 pass instead of batch 2), with the
    official batches' losses and embeddings."""
    from suppresseot.config import InversionSettings

    backend, photo = model.backend, EXAMPLES / "A man with a beard wearing glasses and a hat in blue shirt.jpg"
    inversion = InversionSettings(method="nt", inner_steps=2)
    unet, passes = backend.unet, []

    def counting(latents, t, context, recorder=None):
        import torch

        if not torch.is_grad_enabled():
            passes.append(latents.shape[0])
        return unet(latents, t, context, recorder=recorder)

    backend.fused_attention, backend.unet = True, counting
    try:
        official = model.invert(photo, photo.stem, inversion, steps=4)
        backend.repeated_samples_once = True
        compact = model.invert(photo, photo.stem, inversion, steps=4)
    finally:
        backend.repeated_samples_once = backend.fused_attention = False
        backend.__dict__.pop("unet", None)
    # DDIM inversion's 4 passes, then per step the conditional pass and the closing one: batch 2, then batch 1
    assert passes == [1] * 4 + [1, 2] * 4 + [1] * 4 + [1, 1] * 4
    np.testing.assert_allclose([r["loss"] for r in compact.null_text_log], [r["loss"] for r in official.null_text_log],
                               rtol=REAL_RTOL)
    for a, b in zip(compact.uncond_per_step, official.uncond_per_step):
        assert relative(a.numpy(), b.numpy()) < REAL_RTOL


@pytest.mark.slow
def test_photos_inverted_and_edited_together_keep_their_own_early_stop(model):
    from suppresseot.config import InversionSettings

    photos = [EXAMPLES / "A man with a beard wearing glasses and a hat in blue shirt.jpg",
              EXAMPLES / "A car near trees.jpg"]
    prompts = [p.stem for p in photos]
    # an early-stop threshold that one photo's loss crosses at some steps and the other's does not
    inversion = InversionSettings(method="nt", inner_steps=3, early_stop_epsilon=EARLY_STOP)
    alone = [model.invert(photo, prompt, inversion, steps=4) for photo, prompt in zip(photos, prompts)]
    together = model.invert_many(photos, prompts, inversion, steps=4)
    rows = [[(r["step"], r["iteration"]) for r in inv.null_text_log] for inv in alone]
    assert len(rows[0]) != len(rows[1]), "the threshold no longer separates the photos: pick another"
    for a, b in zip(alone, together):
        assert [(r["step"], r["iteration"]) for r in b.null_text_log] == [(r["step"], r["iteration"])
                                                                          for r in a.null_text_log]
        np.testing.assert_allclose([r["loss"] for r in b.null_text_log], [r["loss"] for r in a.null_text_log],
                                   rtol=1e-4)
        assert relative(b.x_T.numpy(), a.x_T.numpy()) < 1e-5
        for ua, ub in zip(a.uncond_per_step, b.uncond_per_step):
            assert ub.shape == ua.shape == (1, 77, ua.shape[-1])
            assert relative(ub.numpy(), ua.numpy()) < 1e-4
        assert b.group_size == 2 and np.array_equal(b.image, a.image)

    suppress = ["glasses", "car"]
    edited_alone = [model.edit(inv, suppress=s, **SHORT) for inv, s in zip(alone, suppress)]
    edited_together = model.edit_many(together, None, suppress, **SHORT)
    for a, b in zip(edited_alone, edited_together):
        assert b.inversion.prompt == a.inversion.prompt and b.token_indices == a.token_indices
        np.testing.assert_allclose(totals(b), totals(a), rtol=REAL_RTOL)
        assert relative(b.final_latents, a.final_latents) < REAL_RTOL


@pytest.mark.slow
def test_batch_group_size_runs_groups_and_isolates_a_failing_task(tmp_path, small_model_dir, capsys):
    from suppresseot.cli import main

    manifest = tmp_path / "groups.json"
    photo = EXAMPLES / "A car near trees.jpg"
    manifest.write_text(json.dumps({"name": "groups", "tasks": [
        {"id": "gen-a", "type": "generated", "prompt": "a cat sitting on a red car", "token_group": [6], "seed": 3},
        {"id": "real-a", "type": "real", "prompt": "A car near trees", "token_group": [2], "image": str(photo)},
        {"id": "gen-b", "type": "generated", "prompt": "a dog on a sofa", "token_group": [2], "seed": 4},
        {"id": "real-missing", "type": "real", "prompt": "a dog on a sofa", "token_group": [2],
         "image": "missing.png"},
    ]}))
    out = tmp_path / "out"
    argv = ["batch", str(manifest), "--model", str(small_model_dir), "--out", str(out), "--device", "cpu",
            "--steps", "2", "--iterations", "1", "--max-step-to-erase", "2", "--null-text-steps", "1",
            "--inversion", "npi", "--group-size", "2", "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "group of 2 failed" in err and "running its tasks one by one" in err
    runs = {p.name: json.loads((p / "run.json").read_text()) for p in out.iterdir() if (p / "run.json").is_file()}
    gen_a, gen_b, real_a = (f"{task}--suppresseot--torch" for task in ("gen-a", "gen-b", "real-a"))
    assert sorted(runs) == [gen_a, gen_b, real_a]
    assert runs[gen_a]["group_size"] == 2 and runs[gen_a]["group"] == ["gen-a", "gen-b"]
    assert runs[real_a]["group_size"] == 1 and "group" not in runs[real_a]
    from suppresseot.evaluation import find_runs

    shares = {run.path.name: run.wall_seconds for run in find_runs(out)}  # report: a grouped task's share
    assert shares[gen_a] == pytest.approx(runs[gen_a]["task_seconds"] / 2)
    assert shares[real_a] == pytest.approx(runs[real_a]["task_seconds"])
    summary = (out / "summary.csv").read_text().splitlines()
    assert "group_size" in summary[0].split(",")
    failures = (out / "failures.csv").read_text()
    assert "real-missing" in failures and "real-a" not in failures
    assert main(argv) == 1  # a rerun does no finished work again
    assert "3 of 4 runs already finished" in capsys.readouterr().err
