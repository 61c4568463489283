"""The Jittor SD v1 modules against diffusers/transformers on the same tiny random weights (fp32, CPU).

Skipped with a reason when jittor is missing or cannot run here. Few distinct shapes on purpose: each
new op shape makes jittor compile (seconds each on 2 cores).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.jittor

if __import__("importlib").util.find_spec("jittor") is None:
    pytest.skip("jittor is not installed (pip install 'suppresseot[jittor]')", allow_module_level=True)

from suppresseot.errors import BackendUnavailable  # noqa: E402

try:
    from suppresseot.backends.jittor.env import import_jittor

    jt = import_jittor("cpu")
except BackendUnavailable as exc:
    pytest.skip(f"jittor cannot run here: {exc}", allow_module_level=True)

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from suppresseot.backends.jittor import loading  # noqa: E402

LATENT = (1, 4, 64, 64)  # 512 px: all 32 attention layers, 16x16 maps in down_blocks.2 / up_blocks.1
TIMESTEP = 421
TOKENS = slice(1, 6)  # the "words" whose 16x16 cross maps the gradient test differentiates


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jt_models(tiny_model_dir):
    return loading.load_sd_components(tiny_model_dir)


@pytest.fixture(scope="module")
def torch_models(tiny_model_dir):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    load = lambda cls, sub: cls.from_pretrained(tiny_model_dir, subfolder=sub).eval()  # noqa: E731
    return load(CLIPTextModel, "text_encoder"), load(UNet2DConditionModel, "unet"), load(AutoencoderKL, "vae")


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    return {"ids": np.concatenate([[49406], rng.integers(400, 49000, 8), [49407] * 68])[None].astype(np.int64),
            "latent": rng.standard_normal(LATENT).astype(np.float32),
            "image": rng.uniform(-1, 1, (1, 3, 128, 128)).astype(np.float32),
            "z": rng.standard_normal((1, 4, 16, 16)).astype(np.float32)}


@pytest.fixture(scope="module")
def context(torch_models, inputs):
    with torch.no_grad():
        return torch_models[0](torch.from_numpy(inputs["ids"])).last_hidden_state.numpy()


class TorchRecorder:
    """A diffusers attention processor computing attention explicitly (as the SuppressEOT code does) and recording probs."""

    def __init__(self, place):
        self.place, self.calls = place, None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        is_cross = encoder_hidden_states is not None
        ctx = encoder_hidden_states if is_cross else hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k, v = attn.head_to_batch_dim(attn.to_k(ctx)), attn.head_to_batch_dim(attn.to_v(ctx))
        probs = attn.get_attention_scores(q, k, None)
        self.calls.append((probs, is_cross, self.place))
        return attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(torch.bmm(probs, v))))


def torch_recorded_forward(unet, latent, context, timestep=TIMESTEP):
    calls = []
    procs = {}
    for name in unet.attn_processors:
        procs[name] = TorchRecorder(name.split("_")[0])  # down_blocks / mid_block / up_blocks -> down / mid / up
        procs[name].calls = calls
    unet.set_attn_processor(procs)
    out = unet(latent, timestep, context).sample
    return out, calls


class Recorder16:
    """Like the algorithm's AttentionRecorder: ``wants`` limits recording to the 16x16 layers."""

    def __init__(self, calls):
        self.calls = calls

    def wants(self, query_length, place):
        return query_length == 256

    def __call__(self, probs, is_cross, place):
        self.calls.append((probs, is_cross, place))


def jittor_recorded_forward(unet, latent, context, timestep=TIMESTEP, only_16=False):
    calls = []
    unet.set_attention_recorder(Recorder16(calls) if only_16 else
                                lambda probs, is_cross, place: calls.append((probs, is_cross, place)))
    try:
        return unet(latent, timestep, context), calls
    finally:
        unet.set_attention_recorder(None)


def cross_16(calls):
    return [p for p, is_cross, _ in calls if is_cross and p.shape[1] == 256]


# -- tests ----------------------------------------------------------------------------------------


def test_text_encoder_matches_transformers(jt_models, context, inputs):
    out = jt_models[0](jt.array(inputs["ids"].astype(np.int32))).numpy()
    assert out.shape == context.shape == (1, 77, 128)
    assert rel(out, context) < 1e-4


def test_unet_and_attention_maps_match_diffusers(jt_models, torch_models, inputs, context):
    with torch.no_grad():
        ref, ref_calls = torch_recorded_forward(torch_models[1], torch.from_numpy(inputs["latent"]),
                                                torch.from_numpy(context))
    out, calls = jittor_recorded_forward(jt_models[1], jt.array(inputs["latent"]), jt.array(context))
    assert rel(out.numpy(), ref.numpy()) < 1e-4
    assert len(calls) == len(jt_models[1].attention_modules()) == 32
    assert [(c, pl, tuple(p.shape)) for p, c, pl in calls] == [(c, pl, tuple(p.shape)) for p, c, pl in ref_calls]
    assert sum(c for _, c, _ in calls) == 16 and {pl for _, _, pl in calls} == {"down", "mid", "up"}
    ours, theirs = cross_16(calls), cross_16(ref_calls)
    assert len(ours) == 5  # down_blocks.2 x2, up_blocks.1 x3 in the tiny model
    assert rel(ours[0].numpy(), theirs[0].numpy()) < 1e-4
    assert ours[0].dtype == "float32"


def test_gradient_through_recorded_cross_maps(jt_models, torch_models, inputs, context):
    def loss_of(maps):
        return sum((m[:, :, TOKENS] ** 2).sum() for m in maps)

    ctx_t = torch.from_numpy(context).requires_grad_(True)
    _, ref_calls = torch_recorded_forward(torch_models[1], torch.from_numpy(inputs["latent"]), ctx_t)
    loss_of(cross_16(ref_calls)).backward()

    ctx_j = jt.array(context)
    _, calls = jittor_recorded_forward(jt_models[1], jt.array(inputs["latent"]), ctx_j, only_16=True)
    assert len(calls) == 10 and all(p.shape[1] == 256 for p, _, _ in calls)
    grad = jt.grad(loss_of(cross_16(calls)), ctx_j).numpy()
    assert np.abs(ctx_t.grad.numpy()).max() > 0
    assert rel(grad, ctx_t.grad.numpy()) < 1e-3


def test_vae_encode_decode_match_diffusers(jt_models, torch_models, inputs):
    vae, ref = jt_models[2], torch_models[2]
    with torch.no_grad():
        mean = ref.encode(torch.from_numpy(inputs["image"])).latent_dist.mean.numpy()
        image = ref.decode(torch.from_numpy(inputs["z"])).sample.numpy()
    assert rel(vae.encode(jt.array(inputs["image"])).numpy(), mean) < 1e-4
    assert rel(vae.decode(jt.array(inputs["z"])).numpy(), image) < 1e-4


def test_unet_linear_projection_and_per_block_heads(tiny_model_dir, inputs, context):
    """v1.5 fine-tunes may use ``use_linear_projection``; heads may be a per-block list; timestep as a Var."""
    from diffusers import UNet2DConditionModel

    from suppresseot.backends.jittor.models import UNet2DConditionModel as JtUNet

    config = json.loads((Path(tiny_model_dir) / "unet" / "config.json").read_text())
    config.update(use_linear_projection=True, attention_head_dim=[1, 2, 2, 4])
    torch.manual_seed(1)
    ref = UNet2DConditionModel.from_config(config).eval()
    unet = JtUNet(config)
    loading.load_state(unet, {k: v.numpy() for k, v in ref.state_dict().items()}, "linear-projection unet")
    unet.eval()
    with torch.no_grad():
        expected = ref(torch.from_numpy(inputs["latent"]), TIMESTEP, torch.from_numpy(context)).sample.numpy()
    out = unet(jt.array(inputs["latent"]), jt.array(np.array([TIMESTEP])), jt.array(context)).numpy()
    assert rel(out, expected) < 1e-4


def test_safetensors_reader_float16_bfloat16(tmp_path):
    from safetensors.torch import save_file

    x = torch.randn(3, 5)
    save_file({"f32": x, "f16": x.half(), "bf16": x.bfloat16(), "i64": torch.arange(4)}, tmp_path / "t.safetensors")
    got = loading.load_safetensors_numpy(tmp_path / "t.safetensors")
    assert got["f32"].dtype == np.float32 and np.array_equal(got["f32"], x.numpy())
    assert got["f16"].dtype == np.float16 and np.array_equal(got["f16"], x.half().numpy())
    assert got["bf16"].dtype == np.float32 and np.array_equal(got["bf16"], x.bfloat16().float().numpy())
    assert np.array_equal(got["i64"], np.arange(4))


def test_old_vae_attention_names_and_key_errors(jt_models, tiny_model_dir):
    from suppresseot.errors import SuppressEOTError

    vae = jt_models[2]
    state = loading.load_safetensors_numpy(Path(tiny_model_dir) / "vae" / "diffusion_pytorch_model.safetensors")
    old = {}
    for k, v in state.items():
        for new, legacy in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            k = k.replace(f"attentions.0.{new}.", f"attentions.0.{legacy}.")
        old[k] = v[:, :, None, None] if k.endswith("query.weight") else v  # one in the 1x1-conv form
    assert any(".query." in k for k in old)
    loading.load_state(vae, loading._rename_vae(old), "old-style vae")
    w = vae.encoder.mid_block.attentions[0].to_q.weight.numpy()
    assert np.array_equal(w, state["encoder.mid_block.attentions.0.to_q.weight"])
    broken = dict(state, extra_weight=state["quant_conv.bias"])
    del broken["quant_conv.weight"]
    with pytest.raises(SuppressEOTError, match=r"1 missing \(e.g. quant_conv.weight\); 1 unexpected \(e.g. extra_weight\)"):
        loading.load_state(vae, broken, "broken vae")


def test_loading_without_torch(tiny_model_dir, context, inputs, tmp_path):
    """The Jittor package must not need torch: load the tiny model and run the text encoder with torch blocked."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        from suppresseot.backends.jittor.env import import_jittor
        jt = import_jittor("cpu")
        from suppresseot.backends.jittor.loading import load_sd_components
        te, unet, vae = load_sd_components({str(tiny_model_dir)!r})
        ids = np.array({inputs["ids"].tolist()!r}, dtype=np.int32)
        np.save(sys.argv[1], te(jt.array(ids)).numpy())
    """)
    out = tmp_path / "hidden.npy"
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert rel(np.load(out), context) < 1e-4


def test_unsupported_config_is_a_clear_error(tiny_model_dir):
    from suppresseot.backends.jittor.models import UNet2DConditionModel as JtUNet
    from suppresseot.errors import SuppressEOTError

    config = json.loads((Path(tiny_model_dir) / "unet" / "config.json").read_text())
    with pytest.raises(SuppressEOTError, match="resnet_time_scale_shift"):
        JtUNet(dict(config, resnet_time_scale_shift="scale_shift"))


def test_a_killed_child_process_does_not_end_the_program():
    """jittor's SIGCHLD handler quick-exits on any child killed by a signal; import_jittor undoes it."""
    code = textwrap.dedent("""
        import os, signal, subprocess, sys, time
        from suppresseot.backends.jittor.env import import_jittor
        import_jittor("cpu")
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        time.sleep(0.3)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        time.sleep(0.3)
        print("still running", child.returncode)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "still running -9" in proc.stdout, proc.stderr[-1000:]


def test_permutes_that_move_the_last_axis_avoid_the_cpu_only_transpose():
    """jittor's plain ``transpose`` op (taken when a permutation moves the last axis and cuTT is absent)
    has only a CPU kernel, which on a GPU copies the tensor to the host and back; the models' ``permute``
    gives the same values (and gradient) through the fused, GPU-capable transpose."""
    from suppresseot.backends.jittor.models.layers import permute

    x_np = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    x = jt.array(x_np)
    for axes in [(0, 2, 3, 1), (0, 3, 1, 2), (0, 1, 3, 2), (0, 2, 1, 3)]:
        with jt.profile_scope() as report:
            y = permute(x, *axes)
            y.sync()
        ops = [row[0] for row in report[1:]]
        assert ops and not any(op.startswith("transpose«") for op in ops), (axes, ops)
        np.testing.assert_array_equal(y.numpy(), x_np.transpose(axes))
    weights = np.arange(120, dtype=np.float32).reshape(2, 4, 5, 3)
    grad = jt.grad((permute(x, 0, 2, 3, 1) * jt.array(weights)).sum(), x)
    np.testing.assert_array_equal(grad.numpy(), weights.transpose(0, 3, 1, 2))


def test_group_norm_matches_torch_on_each_path():
    """GroupNorm's two paths agree with torch's GroupNorm, with and without the fused SiLU, on a group past
    float32's safe sum size and with a large mean (where a one-pass variance loses digits): the statistics'
    kernel without gradients, and the kernel op carrying its own backward with them (values and input gradient).
    The CPU runs the kernels' C++ twins."""
    from suppresseot.backends.jittor.models import layers

    rng = np.random.default_rng(0)
    for shape, groups, silu in [((2, 64, 8, 8), 32, True), ((1, 12, 5, 3), 4, False), ((1, 4, 300, 300), 1, True)]:
        x = (rng.standard_normal(shape) * 3 + 40).astype(np.float32)
        weight, bias, upstream = (rng.standard_normal(s).astype(np.float32) for s in (shape[1], shape[1], shape))
        reference = torch.nn.GroupNorm(groups, shape[1], eps=1e-6)
        reference.weight.data[:], reference.bias.data[:] = torch.from_numpy(weight), torch.from_numpy(bias)
        tx = torch.tensor(x, requires_grad=True)
        ty = reference(tx)
        ty = torch.nn.functional.silu(ty) if silu else ty
        (ty * torch.from_numpy(upstream)).sum().backward()
        expected, expected_grad = ty.detach().numpy(), tx.grad.numpy()

        norm = layers.GroupNorm(groups, shape[1], eps=1e-6)
        norm.weight.assign(jt.array(weight))
        norm.bias.assign(jt.array(bias))
        jx = jt.array(x)
        with jt.no_grad():
            assert rel(norm(jx, silu=silu).numpy(), expected) < 1e-6, shape
        y = norm(jx, silu=silu)
        grad = jt.grad((y * jt.array(upstream)).sum(), jx)
        assert rel(y.numpy(), expected) < 1e-6, shape
        assert rel(grad.numpy(), expected_grad) < 1e-5, shape
        second = jt.grad((norm(jx * 2, silu=silu) * jt.array(upstream)).sum(), jx)  # the chain rule through it
        assert rel(second.numpy(), expected_grad) < 1e-5, shape  # GroupNorm ignores the input's scale


def test_peak_live_bytes_from_jittors_memory_profiler():
    """Runs in a child process: the profiler's maximum cannot be reset, so it must start clean."""
    code = textwrap.dedent("""
        import numpy as np
        from suppresseot.backends.jittor.env import import_jittor, peak_live_bytes
        jt = import_jittor("cpu")
        assert peak_live_bytes(jt) is None
        jt.flags.profile_memory_enable = 1
        a = jt.array(np.ones((500, 400), np.float32))
        (a * 2).sum().sync()
        small = peak_live_bytes(jt)
        b = jt.array(np.ones((2000, 400), np.float32))
        (b * 2).sum().sync()
        print(small, peak_live_bytes(jt))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    small, large = map(int, out.stdout.split()[-2:])
    assert 500 * 400 * 4 <= small < 2000 * 400 * 4  # a alone (a * 2 is fused into the sum)
    assert large >= 2000 * 400 * 4 + small  # b and a alive together


def test_attention_recomputed_in_the_backward_pass_matches_autodiff_and_keeps_no_probabilities():
    """Unrecorded attention layers differentiate through ``RecomputedAttention``: the same values and (to
    float32 rounding) the same gradients as autodiff of the explicit ops, without keeping the
    (B*heads, queries, keys) probabilities for the backward pass (measured in a child process with
    jittor's memory profiler, whose maximum cannot be reset)."""
    from suppresseot.backends.jittor.models.layers import RecomputedAttention, attention_probabilities

    rng = np.random.default_rng(0)
    for keys in (96, 7):  # self- and cross-attention shapes
        q_np, k_np, v_np = (rng.standard_normal(s).astype(np.float32) for s in [(4, 96, 8), (4, keys, 8), (4, keys, 8)])
        weights = jt.array(rng.standard_normal((4, 96, 8)).astype(np.float32))
        results = []
        for recompute in (False, True):
            q, k, v = jt.array(q_np), jt.array(k_np), jt.array(v_np)
            out = (RecomputedAttention.apply(q * 0.35, k, v) if recompute
                   else nn_bmm(attention_probabilities(q * 0.35, k), v))
            results.append([out.numpy()] + [g.numpy() for g in jt.grad((out * weights).sum(), [q, k, v])])
        for explicit, recomputed in zip(*results):
            np.testing.assert_allclose(recomputed, explicit, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(results[1][0], results[0][0])  # the forward is the explicit ops

    code = textwrap.dedent("""
        import sys
        import numpy as np
        from suppresseot.backends.jittor.env import import_jittor, peak_live_bytes
        from suppresseot.backends.jittor.models.layers import RecomputedAttention, attention_probabilities
        jt = import_jittor("cpu")
        jt.flags.profile_memory_enable = 1
        rng = np.random.default_rng(0)
        q, k, v = (jt.array(rng.standard_normal((8, 1024, 16)).astype(np.float32)) for _ in range(3))
        if sys.argv[1] == "recompute":
            out = RecomputedAttention.apply(q * 0.25, k, v)
        else:
            out = jt.nn.bmm(attention_probabilities(q * 0.25, k), v)
        out = out * 2  # a later layer
        out.sync()
        jt.grad(out.sum(), [q, k, v])[0].sync()
        print(peak_live_bytes(jt))
    """)
    peaks = {}
    for how in ("explicit", "recompute"):
        proc = subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks[how] = int(proc.stdout.split()[-1])
    probs_bytes = 8 * 1024 * 1024 * 4
    assert peaks["explicit"] - peaks["recompute"] >= probs_bytes, peaks


def test_attention_without_gradients_goes_in_chunks_of_queries_within_the_scores_budget(tmp_path):
    """``attend``: where a layer's scores would pass the chunk budget ($SUPPRESSEOT_JITTOR_ATTENTION_CHUNK_MIB) and no
    gradient is taken, chunks of
    queries give the same values with a peak of about two chunks' scores instead of the whole layer's scores and
    probabilities (each run in a child process: jittor's memory profiler maximum cannot be reset); with gradients
    it is one piece (every chunk's probabilities would be kept anyway)."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from suppresseot.backends.jittor.env import import_jittor, peak_live_bytes
        from suppresseot.backends.jittor.models import layers
        jt = import_jittor("cpu")
        rng = np.random.default_rng(0)
        q, k, v = (jt.array(rng.standard_normal((8, 1024, 16)).astype(np.float32)) for _ in range(3))
        jt.sync_all(True)
        jt.flags.profile_memory_enable = 1
        with jt.no_grad():
            out = layers.attend(q * 0.25, k, v).numpy()
        peak = peak_live_bytes(jt)
        jt.flags.profile_memory_enable = 0
        with jt.profile_scope() as report:  # with gradients: as many bmm ops as one piece has
            jt.grad((layers.attend(q * 0.25, k, v) * 2).sum(), q).sync()
        np.save(sys.argv[1], out)
        print(peak, sum(int(r[report[0].index("Count")]) for r in report[1:]))
    """)
    scores = 8 * 1024 * 1024 * 4
    results = {}
    for budget in (scores, scores // 4):
        path = tmp_path / f"{budget}.npy"
        proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "SUPPRESSEOT_JITTOR_ATTENTION_CHUNK_MIB": str(budget >> 20)})
        assert proc.returncode == 0, proc.stderr[-2000:]
        peak, grad_ops = map(int, proc.stdout.split()[-2:])
        results[budget] = (peak, grad_ops, np.load(path))
    whole, chunked = results[scores], results[scores // 4]
    np.testing.assert_allclose(chunked[2], whole[2], rtol=1e-6, atol=1e-7)
    assert whole[0] >= 2 * scores, whole[0]  # scores and probabilities alive together
    assert chunked[0] <= 2 * (scores // 4) + 4 * 1024 * 1024, chunked[0]  # two chunks' worth and the inputs
    assert chunked[1] == whole[1]  # the gradient pass made the same ops: no chunks


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5"])
def test_a_bad_attention_chunk_budget_is_one_clear_line(monkeypatch, value):
    from suppresseot.backends.jittor.models import layers
    from suppresseot.errors import SuppressEOTError

    monkeypatch.setenv("SUPPRESSEOT_JITTOR_ATTENTION_CHUNK_MIB", value)
    with pytest.raises(SuppressEOTError, match="SUPPRESSEOT_JITTOR_ATTENTION_CHUNK_MIB=.*whole number of MiB") as err:
        layers.attention_chunk_bytes()
    assert "\n" not in str(err.value)
    monkeypatch.setenv("SUPPRESSEOT_JITTOR_ATTENTION_CHUNK_MIB", " 256 ")
    assert layers.attention_chunk_bytes() == 256 << 20


def nn_bmm(a, b):
    return jt.nn.bmm(a, b)


def test_profile_op_kinds_sum_jittors_profiler_rows():
    """benchmarks/probes/profile_jittor.py's table by op kind: every profiled op counted once, under a kind that
    says what it is (jittor's CUDA ops by name, fused ops by their parts)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "probes" / "profile_jittor.py"
    spec = importlib.util.spec_from_file_location("suppresseot_profile_jittor", path)
    profile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile)
    assert profile.op_kind("cudnn_conv_backward_x\u00abTx:float32\u00abJIT:1") == "cuDNN convolution backward x"
    assert profile.op_kind("cublas_batched_matmul\u00abT:float32\u00abTrans_a:N") == "cuBLAS matmul"
    assert profile.op_kind("\u00abopkey0:fuse_transpose\u00abTx:float32") == "transpose"

    conv = jt.nn.Conv2d(4, 4, 3, padding=1)
    x = jt.array(np.ones((1, 4, 8, 8), dtype=np.float32))
    with jt.no_grad():
        jt.nn.relu(conv(x)).sync()
        with jt.profile_scope() as report:
            (jt.nn.relu(conv(x)) * 2).sum().sync()
    kinds = {kind: ops for kind, ops, _ in profile.op_kinds(report)}
    assert sum(kinds.values()) == sum(int(row[report[0].index("Count")]) for row in report[1:])
    assert kinds.get("reindex + reduction (fused)") == 1, kinds  # the convolution as jittor's CPU loops
    assert "elementwise (fused)" in kinds or "reduction (fused)" in kinds, kinds
    assert "### conv" in profile.kind_table("conv", report, 1.0)
