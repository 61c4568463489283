"""PyTorch backend specifics that the parity tests do not isolate."""
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")


def _gradient_and_saved_bytes(backend, latent, embedding):
    """d(sum of the UNet output)/d(embedding), and the bytes autograd kept for the backward pass."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    def loss(x):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            return backend.unet(latent, 901, x).square().mean(), None

    value, _, grad = backend.value_and_grad(loss, embedding)
    return value, grad, sum(saved)


def _output_loss_and_gradient(backend, latent, embedding, t):
    """The UNet output for the whole batch (no grad), and the first item's mean-square loss and its
    gradient to the embedding: what sampling and null-text/ITO ask of the attention layers."""
    with torch.no_grad():
        out = backend.unet(latent, t, embedding)
    value, _, grad = backend.value_and_grad(
        lambda x: (backend.unet(latent[:1], t, x).square().mean(), None), embedding[:1])
    return out, value, grad


def test_recomputed_attention_gives_the_same_gradient_and_keeps_less(tiny_model_dir):
    """Unrecorded explicit attention under autograd keeps q, k, v and recomputes the probabilities in the
    backward pass: bitwise the same gradient, without the 64x64 layers' probability matrices."""
    from suppresseot.backends.torch_backend import TorchBackend

    backend = TorchBackend(tiny_model_dir, device="cpu")
    assert backend.recompute_attention and backend.info()["recompute_attention"]
    torch.manual_seed(0)
    latent = torch.randn(1, 4, 64, 64)
    embedding = torch.randn(1, 77, backend.text_encoder.config.hidden_size)

    value, grad, kept = _gradient_and_saved_bytes(backend, latent, embedding)
    backend.recompute_attention = False
    value_stored, grad_stored, kept_stored = _gradient_and_saved_bytes(backend, latent, embedding)

    assert torch.equal(value, value_stored) and torch.equal(grad, grad_stored)
    assert grad.abs().sum() > 0
    # the tiny UNet's 64x64 self-attention layers after the first cross-attention: each keeps
    # heads x 4096 x 4096 float32 probabilities when stored
    heads = backend.unet_model.config.attention_head_dim
    heads = heads[0] if isinstance(heads, (list, tuple)) else heads
    probs_64 = heads * 4096 * 4096 * 4
    assert kept_stored - kept >= 3 * probs_64, (kept_stored, kept)


def test_recorded_attention_under_autograd_recomputes_its_probabilities(tiny_model_dir):
    """ITO's pass: the recorded layers' probabilities feed the loss through the recorder's sums and are
    recomputed in the backward pass (SDXL records 60 such layers): the same loss and gradient, bit for bit,
    while autograd keeps less than the recorded self-attention probabilities alone."""
    from suppresseot.algorithm.attention import ALL_PLACES, AttentionRecorder
    from suppresseot.backends.torch_backend import TorchBackend

    backend = TorchBackend(tiny_model_dir, device="cpu")
    torch.manual_seed(2)
    latent = torch.randn(1, 4, 64, 64)
    embedding = torch.randn(1, 77, backend.text_encoder.config.hidden_size)
    recorded = []

    def run():
        saved = []

        def pack(t):
            saved.append(t.numel() * t.element_size())
            return t

        def loss(x):
            recorder = AttentionRecorder(16)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                backend.record_attention(latent, 501, x, recorder)
                maps = recorder.aggregate(True, ALL_PLACES), recorder.aggregate(False, ALL_PLACES)
                recorded.append(recorder.totals)
                return maps[0][..., 2].square().sum() + maps[1].std(), None

        value, _, grad = backend.value_and_grad(loss, embedding)
        return value, grad, sum(saved)

    value, grad, kept = run()
    backend.recompute_attention = False
    value_stored, grad_stored, kept_stored = run()
    assert torch.equal(value, value_stored) and torch.equal(grad, grad_stored) and grad.abs().sum() > 0
    self_places = sum(1 for kind, _ in recorded[0] if kind == "self")  # a layer or more in each
    assert self_places >= 2
    heads = backend.unet_model.config.attention_head_dim
    heads = min(heads) if isinstance(heads, (list, tuple)) else heads
    assert kept_stored - kept >= self_places * heads * 256 * 256 * 4, (kept_stored, kept)


def test_sliced_attention_matches_whole_layers(tiny_model_dir):
    """Explicit attention split into single (batch x head) rows gives the unsliced UNet output and
    gradient to float rounding, with and without recomputation in the backward pass."""
    from suppresseot.backends.torch_backend import TorchBackend

    backend = TorchBackend(tiny_model_dir, device="cpu")
    assert backend.info()["attention_slice_bytes"] == 128 * 2**20  # the default
    torch.manual_seed(1)
    latent = torch.randn(2, 4, 64, 64)
    embedding = torch.randn(2, 77, backend.text_encoder.config.hidden_size)

    def run():
        return _output_loss_and_gradient(backend, latent, embedding, 501)

    backend.attention_slice_bytes = None
    whole = run()
    backend.attention_slice_bytes = 1  # one row per group
    for recompute in (True, False):
        backend.recompute_attention = recompute
        sliced = run()
        for a, b in zip(sliced, whole):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(whole[0][0], whole[0][1])  # the two batch entries really differ


def test_vae_decodes_each_image_as_a_batch_would(tiny_model_dir):
    from suppresseot.backends.torch_backend import TorchBackend

    backend = TorchBackend(tiny_model_dir, device="cpu")
    torch.manual_seed(2)
    latents = torch.randn(2, 4, 64, 64)
    images = backend.vae_decode(latents)
    assert images.shape == (2, 512, 512, 3) and images.dtype.name == "uint8"
    with torch.no_grad():
        batch = backend.vae.decode(latents / backend.scaling_factor).sample
    batch = ((batch / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).astype("uint8")
    assert abs(images.astype(int) - batch.astype(int)).max() <= 1
    assert (images[0] != images[1]).any()


def test_fused_attention_and_nhwc_defaults_and_what_they_change(tiny_model_dir):
    """Faithful mode on the CPU computes every layer explicitly in NCHW (the parity fixture's arithmetic);
    fused attention and NHWC convolutions, the GPU defaults, change the UNet output and the null-text
    gradient by rounding only, and the options reach the backend from the CLI and the API."""
    from suppresseot.api import SuppressEOT
    from suppresseot.backends.torch_backend import TorchBackend
    from suppresseot.cli import build_parser

    backend = TorchBackend(tiny_model_dir, device="cpu")
    info = backend.info()
    assert info["fused_attention"] is False and info["channels_last"] is False
    assert TorchBackend(tiny_model_dir, device="cpu", fast=True).fused_attention is True
    torch.manual_seed(3)
    latent = torch.randn(1, 4, 64, 64)
    embedding = torch.randn(1, 77, backend.text_encoder.config.hidden_size)

    explicit = _output_loss_and_gradient(backend, latent, embedding, 301)
    backend.fused_attention = True
    backend.use_channels_last(True)
    assert next(p for p in backend.unet_model.parameters() if p.ndim == 4).is_contiguous(
        memory_format=torch.channels_last)
    fused = _output_loss_and_gradient(backend, latent, embedding, 301)
    for a, b in zip(fused, explicit):
        assert float((a - b).norm() / b.norm()) < 1e-5
    assert not torch.equal(fused[0], explicit[0])  # a different kernel really ran

    parse = build_parser().parse_args
    assert parse(["generate", "a cat", "--suppress-words", "cat"]).fused_attention is None
    assert parse(["generate", "a cat", "--suppress-words", "cat", "--no-fused-attention"]).fused_attention is False
    model = SuppressEOT.from_pretrained(tiny_model_dir, device="cpu", fused_attention=True, progress=False)
    assert model.backend.info()["fused_attention"] is True


def test_compiled_unet_modules_serve_every_call_once_per_shape(tiny_model_dir):
    """``compile_unet`` sends the UNet's ResNet blocks and feed-forward layers through torch.compile, in every
    call: recorded passes, passes that end at the maps and gradients give the eager values (traced here with a
    counting backend that runs the captured graphs as they are; on a GPU inductor fuses them), with one graph
    per module shape, batch and grad mode (not one per timestep, not one per recorder), and no graph breaks at
    the recorded attention layers, which stay outside. Jittor refuses the option."""
    from suppresseot.algorithm.attention import ALL_PLACES, AttentionRecorder
    from suppresseot.api import SuppressEOT, load_backend
    from suppresseot.backends.torch_backend import TorchBackend
    from suppresseot.cli import build_parser
    from suppresseot.errors import SuppressEOTError

    graphs = []

    def counting(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager = TorchBackend(tiny_model_dir, device="cpu")
    compiled = TorchBackend(tiny_model_dir, device="cpu", compile_unet=counting)
    assert eager.info()["compile_unet"] is False and compiled.info()["compile_unet"] == "custom"
    torch.manual_seed(5)
    latent = torch.randn(2, 4, 64, 64)
    embedding = torch.randn(2, 77, eager.text_encoder.config.hidden_size)

    def calls(backend, t):
        recorder, maps = AttentionRecorder(batch=2), AttentionRecorder()
        with torch.no_grad():
            backend.unet(latent, t, embedding, recorder=recorder)

        def map_loss(x):  # ITO's kind of pass: to the maps only, under autograd
            recorder = AttentionRecorder()
            backend.record_attention(latent[:1], t, x, recorder)
            return recorder.aggregate(False, ALL_PLACES).square().sum(), None
        value, _, grad = backend.value_and_grad(map_loss, embedding[:1])
        with torch.no_grad():
            backend.record_attention(latent[:1], t, embedding[:1], maps)
        return (*_output_loss_and_gradient(backend, latent, embedding, t), recorder.aggregate(True, ALL_PLACES, tasks=2),
                value, grad, maps.aggregate(True, ALL_PLACES))

    expected = calls(eager, 301)
    got = calls(compiled, 301)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert got[3].shape[-1] == 77
    made = len(graphs)
    assert made > 0
    calls(compiled, 281)  # another timestep, new recorders: nothing compiles again
    assert len(graphs) == made
    assert not torch._dynamo.utils.counters["graph_break"]

    parse = build_parser().parse_args
    assert parse(["generate", "a cat", "--suppress-words", "cat"]).compile is False
    assert parse(["generate", "a cat", "--suppress-words", "cat", "--compile"]).compile is True
    assert SuppressEOT.from_pretrained(tiny_model_dir, device="cpu", progress=False).backend.compile_unet is False
    with pytest.raises(SuppressEOTError, match="--compile .* PyTorch backend"):
        load_backend("jittor", tiny_model_dir, "cpu", compile_unet=True)
    with pytest.raises(TypeError, match="unknown backend option"):
        load_backend("torch", tiny_model_dir, "cpu", compile_graphs=True)
    with pytest.raises(SuppressEOTError, match="--static-graphs .* Jittor backend"):
        load_backend("torch", tiny_model_dir, "cpu", static_graphs=True)
    assert parse(["generate", "a cat", "--suppress-words", "cat", "--static-graphs"]).static_graphs is True


def test_record_attention_stops_after_the_maps_with_the_same_maps_and_gradient(small_model_dir):
    """Map-only passes (ITO and its reference) end after the last block at the maps' resolution: the
    blocks after it never run, and the maps and their gradient are those of the whole pass."""
    from suppresseot.algorithm.attention import AttentionRecorder
    from suppresseot.backends.torch_backend import TorchBackend

    backend = TorchBackend(small_model_dir, device="cpu")
    calls = {"last_up_block": 0, "conv_out": 0}

    def count(name):
        return lambda *args: calls.__setitem__(name, calls[name] + 1)

    backend.unet_model.up_blocks[-1].register_forward_hook(count("last_up_block"))
    backend.unet_model.conv_out.register_forward_hook(count("conv_out"))
    torch.manual_seed(0)
    latent = torch.randn(1, 4, backend.latent_size, backend.latent_size)
    embedding = torch.randn(1, 77, backend.text_encoder.config.hidden_size)

    def maps_loss(run):
        def loss(x):
            recorder = AttentionRecorder()
            run(latent, 501, x, recorder)
            cross, self_ = recorder.aggregate(True), recorder.aggregate(False)
            return cross.square().sum() + self_.square().sum(), {"cross": cross, "self": self_}
        return backend.value_and_grad(loss, embedding)

    whole = maps_loss(lambda *args: backend.unet(*args[:3], recorder=args[3]))
    assert calls == {"last_up_block": 1, "conv_out": 1}
    cut = maps_loss(backend.record_attention)
    assert calls == {"last_up_block": 1, "conv_out": 1}, "record_attention ran the blocks after the maps"
    (value, aux, grad), (value_cut, aux_cut, grad_cut) = whole, cut
    assert aux["cross"].shape == (16, 16, 77) and aux["self"].shape == (16, 16, 256)
    assert torch.equal(aux_cut["cross"], aux["cross"]) and torch.equal(aux_cut["self"], aux["self"])
    assert torch.equal(value_cut, value) and torch.equal(grad_cut, grad) and grad.abs().sum() > 0
    # a normal pass runs to the end again
    backend.unet(latent, 501, embedding)
    assert calls == {"last_up_block": 2, "conv_out": 2}


def test_null_text_queues_the_next_iteration_but_a_stop_discards_it(small_model_dir):
    """The next null-text iteration is queued before the early-stop read (where the previous step ran that
    far): when the loss stops the step, the queued update is dropped, so the embeddings are those of a run
    that never queued it."""
    from suppresseot import SuppressEOT
    from suppresseot.config import InversionSettings

    model = SuppressEOT.from_pretrained(small_model_dir, device="cpu", progress=False)
    photo = Path(__file__).parents[1] / "src/suppresseot/data/study/examples/A car near trees.jpg"
    calls = []
    unet = model.backend.unet
    model.backend.unet = lambda *args, **kwargs: calls.append(torch.is_grad_enabled()) or unet(*args, **kwargs)

    def invert(inner_steps):
        calls.clear()
        settings = InversionSettings(method="nt", inner_steps=inner_steps, early_stop_epsilon=1e9)  # stop at once
        return model.invert(photo, "A car near trees", settings, steps=3)

    queued = invert(3)
    gradient_passes = sum(calls)
    single = invert(1)
    assert [(r["step"], r["iteration"]) for r in queued.null_text_log] == [(0, 0), (1, 0), (2, 0)]
    assert [(r["step"], r["iteration"]) for r in single.null_text_log] == [(0, 0), (1, 0), (2, 0)]
    # step 0 queued iteration 1 (no earlier step stopped) and dropped it; steps 1 and 2 expected the stop
    assert gradient_passes == 3 + 1 and sum(calls) == 3
    for a, b in zip(queued.uncond_per_step, single.uncond_per_step):
        assert torch.equal(a, b)
    assert [r["loss"] for r in queued.null_text_log] == [r["loss"] for r in single.null_text_log]
