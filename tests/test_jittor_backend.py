"""The Jittor backend runs the same algorithm: results against the PyTorch backend and the official code."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import reference_fixture_dir

pytestmark = [pytest.mark.jittor, pytest.mark.slow]
pytest.importorskip("diffusers")
if __import__("importlib").util.find_spec("jittor") is None:
    pytest.skip("jittor is not installed (pip install 'suppresseot[jittor]')", allow_module_level=True)

PROMPT = "A man with a beard wearing glasses and a hat in blue shirt"
SHORT = dict(steps=3, iterations=2, max_step_to_erase=3, tau=0.7)
RTOL = 1e-3


def relative(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def models(small_model_dir):
    from suppresseot.api import SuppressEOT
    from suppresseot.errors import BackendUnavailable

    try:
        jittor = SuppressEOT.from_pretrained(small_model_dir, backend="jittor", device="cpu", progress=False)
    except BackendUnavailable as exc:
        pytest.skip(f"jittor cannot run here: {exc}")
    return jittor, SuppressEOT.from_pretrained(small_model_dir, backend="torch", device="cpu", progress=False)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from PIL import Image

    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(path)
    return path


def compare_logs(ours, theirs, key):
    assert len(ours) == len(theirs) > 0
    np.testing.assert_allclose([r[key] for r in ours], [r[key] for r in theirs], rtol=RTOL)


def test_same_seed_same_starting_noise(models):
    jittor, torch_model = models
    a = jittor.backend.to_numpy(jittor.backend.initial_latent(2023))
    b = torch_model.backend.to_numpy(torch_model.backend.initial_latent(2023))
    np.testing.assert_array_equal(a, b)
    assert "torch.Generator" in jittor.backend.info()["initial_noise"]


def test_generate_matches_torch_backend(models):
    jittor, torch_model = models
    a = jittor.generate(PROMPT, "glasses", seed=5, **SHORT)
    b = torch_model.generate(PROMPT, "glasses", seed=5, **SHORT)
    compare_logs(a.ito_log, b.ito_log, "total")
    for part in ("cross_retain", "cross_erase", "self_retain", "self_erase"):
        compare_logs(a.ito_log, b.ito_log, part)
    assert relative(a.final_latents, b.final_latents) < RTOL
    assert a.backend_info["backend"] == "jittor"


def test_a_group_of_tasks_gives_the_one_by_one_results(models):
    """`batch --group-size` on Jittor: two tasks' UNet passes batched give each task's own run."""
    jittor, _ = models
    prompts, suppress, seeds = ["A dog in Van Gogh Style", PROMPT], [[4, 5, 6], "glasses"], [2, 7]
    alone = [jittor.generate(p, s, seed=seed, **SHORT) for p, s, seed in zip(prompts, suppress, seeds)]
    together = jittor.generate_many(prompts, suppress, seeds, **SHORT)
    for a, b in zip(alone, together):
        assert (b.prompt, b.seed, b.group_size) == (a.prompt, a.seed, 2)
        compare_logs(b.ito_log, a.ito_log, "total")
        assert relative(b.final_latents, a.final_latents) < 1e-4
        assert relative(b.cross_attention, a.cross_attention) < 1e-4


def test_one_pass_guidance_gives_the_two_pass_results(models):
    """The Jittor backend samples with guidance's two halves in one batch-4 pass (host-bound: half the launches);
    the official two passes give the same latents, ITO losses and recorded maps, for one task and a group."""
    jittor, _ = models
    backend = jittor.backend
    assert backend.one_pass_guidance and backend.info()["one_pass_guidance"] is True
    prompts, suppress, seeds = ["A dog in Van Gogh Style", PROMPT], [[4, 5, 6], "glasses"], [2, 7]
    one = jittor.generate_many(prompts, suppress, seeds, **SHORT)
    backend.one_pass_guidance = False
    try:
        two = jittor.generate_many(prompts, suppress, seeds, **SHORT)
    finally:
        backend.one_pass_guidance = True
    for a, b in zip(one, two):
        compare_logs(a.ito_log, b.ito_log, "total")
        assert relative(a.final_latents, b.final_latents) < 1e-5
        assert relative(a.cross_attention, b.cross_attention) < 1e-5
        assert relative(a.self_attention, b.self_attention) < 1e-5


def test_static_graphs_are_the_cuda_default_and_refused_off_cuda(models, small_model_dir):
    from suppresseot.api import load_backend
    from suppresseot.cli import build_parser
    from suppresseot.errors import SuppressEOTError

    assert models[0].backend.static_graphs is False  # the default (None) on the CPU: off
    with pytest.raises(SuppressEOTError, match="need jittor on a CUDA GPU"):
        load_backend("jittor", small_model_dir, "cpu", static_graphs=True)
    parse = build_parser().parse_args
    base = ["generate", "a cat", "--suppress-words", "cat"]
    assert [parse(base + extra).static_graphs for extra in ([], ["--static-graphs"], ["--no-static-graphs"])] \
        == [None, True, False]


def test_static_graphs_by_default_fall_back_to_eager_where_vcompiler_does_not_build(models):
    """vcompiler's C++ module needs CUDA's headers: here (no CUDA) it fails to build. Static graphs by default
    (CUDA's default) then warn and run eager steps; asked for explicitly, they fail in one line."""
    from suppresseot.errors import SuppressEOTError

    backend = models[0].backend

    def step(x):
        return x

    try:
        backend.static_graphs, backend._static_by_default, backend.record_step = True, True, None
        with pytest.warns(UserWarning, match="vcompiler does not build here.*eager steps"):
            assert backend.compile_step(step) is step
        assert backend.static_graphs is False
        backend.static_graphs, backend._static_by_default = True, False
        with pytest.raises(SuppressEOTError, match="--static-graphs: jittor.vcompiler does not build here") as err:
            backend.compile_step(step)
        assert "\n" not in str(err.value)
    finally:
        backend.static_graphs, backend._static_by_default, backend.record_step = False, True, None


def test_static_steps_keep_vcompilers_contract_and_the_results(models, photo):
    """--static-graphs records each step with jittor.vcompiler.build, whose C++ part builds only against CUDA's
    headers, so here a recorder checks its contract instead: every step is called with Vars and no Python
    numbers (vcompiler keys graphs on numbers: one graph per step function, not per timestep), recording it
    runs nothing (vcompiler asserts that jt.flags.exec_called does not move), and results stay the eager ones
    within float rounding (the coefficients become Vars: division becomes multiplication by the reciprocal).
    A photo with null-text and ITO passes through every kind of step. A second photo replays the steps the
    first one recorded (as the PyTorch backend keeps its CUDA graphs): nothing is recorded anew."""
    from suppresseot.config import InversionSettings

    jittor, _ = models
    backend, jt = jittor.backend, jittor.backend.jt
    signatures: dict = {}

    def shape_of(value):
        if isinstance(value, jt.Var):
            return ("Var", len(value.shape), str(value.dtype))
        if isinstance(value, (tuple, list)):
            return tuple(shape_of(v) for v in value)
        if isinstance(value, dict):
            return tuple((k, shape_of(v)) for k, v in value.items())
        assert value is None or isinstance(value, str), f"{type(value).__name__} {value!r} in a static step"
        return value

    builds = []

    def recording_build(record):
        builds.append(record)

        def call(*args):
            jt.sync_all(True)
            before = jt.flags.exec_called
            out = record(*args)
            assert jt.flags.exec_called == before, "recording a static step ran something"
            signatures.setdefault(record.__self__, set()).add(shape_of(args))
            return out
        return call

    null_text = InversionSettings(method="nt", inner_steps=2)
    eager = jittor.edit(photo, PROMPT, "glasses", inversion=null_text, **SHORT)
    backend.static_graphs, backend.record_step = True, recording_build
    try:
        static = jittor.edit(photo, PROMPT, "glasses", inversion=null_text, **SHORT)
        recorded = len(builds)
        again = jittor.edit(photo, PROMPT, "glasses", inversion=null_text, **SHORT)
    finally:
        backend.static_graphs, backend.record_step = False, None
        backend.release_cache(graphs=True)
    assert recorded == 7 and len(builds) == 7  # the second photo's steps: the first one's
    assert np.array_equal(again.final_latents, static.final_latents)
    assert sorted(step.fn.__name__ for step in signatures) == [
        "conditional_noise", "denoising_step", "denoising_step", "inversion_step", "optimization_step",
        "optimization_step", "reference_maps"]
    assert all(len(shapes) == 1 for shapes in signatures.values())  # one graph per step function
    compare_logs(static.ito_log, eager.ito_log, "total")
    compare_logs(static.inversion.null_text_log, eager.inversion.null_text_log, "loss")
    assert relative(static.final_latents, eager.final_latents) < RTOL


@pytest.mark.parametrize("inversion", ["nt", "npi"])
def test_edit_matches_torch_backend(models, photo, inversion):
    from suppresseot.config import InversionSettings

    jittor, torch_model = models
    settings = InversionSettings(method=inversion, inner_steps=2)
    a = jittor.edit(photo, PROMPT, [4, 5], inversion=settings, **SHORT)
    b = torch_model.edit(photo, PROMPT, [4, 5], inversion=settings, **SHORT)
    compare_logs(a.ito_log, b.ito_log, "total")
    if inversion == "nt":
        compare_logs(a.inversion.null_text_log, b.inversion.null_text_log, "loss")
    assert relative(a.final_latents, b.final_latents) < RTOL


def test_official_fixture_on_jittor(capsys):
    """The official code's generated case on the Jittor backend; the differences are printed (pytest -s)."""
    fixture = reference_fixture_dir()
    if fixture is None:
        pytest.skip("reference fixture not found (../shared/fixtures/reference-tiny)")
    from suppresseot.api import SuppressEOT

    expected = json.loads((fixture / "expected.json").read_text())["gen"]
    model = SuppressEOT.from_pretrained(fixture / "tiny-sd", backend="jittor", device="cpu", progress=False)
    s = expected["settings"]
    # decode=False: the latents are what is compared (jittor's CPU convolutions spend a minute on the decode)
    result = model.generate(s["prompt"], s["token_indices"][0], seed=s["seed"], steps=10, tau=0.8, decode=False,
                            iterations=s["iter_each_step"], max_step_to_erase=s["max_step_to_erase"])
    assert result.original is None and result.suppressed is None and "vae_decode" not in result.seconds
    ito = np.array([r["total"] for r in result.ito_log])
    ito_rel = float(np.max(np.abs(ito - expected["ito_losses"]) / np.abs(expected["ito_losses"])))
    final_rel = relative(result.final_latents, np.load(fixture / "gen" / "final_latents.npy"))
    with capsys.disabled():
        print(f"\njittor vs official (gen): ITO loss max rel {ito_rel:.2e}, final latents rel {final_rel:.2e}")
    assert ito_rel < RTOL and final_rel < RTOL


def test_cli_runs_without_torch(tmp_path, small_model_dir):
    """`suppress-eot generate --backend jittor` with torch made unimportable (as in a torch-free venv)."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['diffusers'] = None\n"
            "from suppresseot.cli import main\n"
            f"sys.exit(main(['generate', 'a red car', '--suppress-words', 'car', '--backend', 'jittor', "
            f"'--device', 'cpu', '--model', {str(small_model_dir)!r}, '--out', {str(tmp_path)!r}, '--steps', '2', "
            f"'--iterations', '1', '--max-step-to-erase', '2', '--tau', '0.5', '--no-progress']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = tmp_path.iterdir()
    record = json.loads((run / "run.json").read_text())
    assert record["backend"]["backend"] == "jittor"
    assert record["backend"]["initial_noise"].startswith("numpy")  # no torch: the documented numpy generator
    assert np.load(run / "final_latents.npy").shape == (2, 4, 32, 32)  # the small model's 256 px


def test_attention_recompute_is_opt_in_and_changes_no_value(models, small_model_dir):
    """The explicit attention ops are the default (the recomputing layer raised the null-text peak on an
    H200, docs/jittor.md); opting in flags every attention layer and gives the same UNet gradient."""
    from suppresseot.backends.jittor.backend import JittorBackend

    default = models[0].backend
    assert default.info()["recompute_attention"] is False
    assert not any(m.recompute for m in default.unet_model.attention_modules())
    recomputing = JittorBackend(small_model_dir, device="cpu", recompute_attention=True)
    assert all(m.recompute for m in recomputing.unet_model.attention_modules())

    rng = np.random.default_rng(4)
    latent = rng.standard_normal((1, 4, 32, 32)).astype(np.float32)
    embedding = default.to_numpy(default.encode_text([49406] + [320] * 5 + [49407] * 71))
    grads = []
    for backend in (default, recomputing):
        x, e = backend.from_numpy(latent), backend.from_numpy(embedding)
        value, _, grad = backend.value_and_grad(lambda c: ((backend.unet(x, 301, c) ** 2).mean(), None), e)
        grads.append((backend.item(value), backend.to_numpy(grad)))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    assert relative(grads[1][1], grads[0][1]) < 1e-5 and np.abs(grads[0][1]).sum() > 0


@pytest.mark.parametrize("places, skipped", [(("up", "down", "mid"), "conv_out"), (("down",), "mid_block")])
def test_record_attention_stops_after_the_maps_and_keeps_them(models, places, skipped):
    """Jittor's map-only pass returns after the 16x16 up block (after the down blocks where only their maps are
    kept: --ito-blocks down) with the maps (and gradient) of a whole pass."""
    from suppresseot.algorithm.attention import AttentionRecorder

    backend = models[0].backend
    ran = []
    module = getattr(backend.unet_model, skipped)
    execute = module.execute
    module.execute = lambda *args: ran.append(1) or execute(*args)
    rng = np.random.default_rng(5)
    x = backend.from_numpy(rng.standard_normal((1, 4, 32, 32)).astype(np.float32))
    e = backend.encode_text([49406] + [320] * 5 + [49407] * 71)

    def maps_loss(run):
        def loss(c):
            recorder = AttentionRecorder(places=places)
            run(x, 301, c, recorder)
            cross, self_ = recorder.aggregate(True), recorder.aggregate(False)
            return (cross ** 2).sum() + (self_ ** 2).sum(), {"cross": cross, "self": self_}
        value, aux, grad = backend.value_and_grad(loss, e)
        return backend.item(value), backend.to_numpy(aux["cross"]), backend.to_numpy(aux["self"]), backend.to_numpy(grad)

    try:
        whole = maps_loss(lambda *args: backend.unet(*args[:3], recorder=args[3]))
        assert len(ran) == 1
        cut = maps_loss(backend.record_attention)
        assert len(ran) == 1, f"record_attention ran {skipped}"
    finally:
        module.execute = execute
    assert cut[1].shape == (16, 16, 77) and cut[2].shape == (16, 16, 256)
    assert cut[0] == pytest.approx(whole[0], rel=1e-6)
    for a, b in zip(cut[1:], whole[1:]):
        assert relative(a, b) < 1e-6
    assert np.abs(whole[3]).sum() > 0
