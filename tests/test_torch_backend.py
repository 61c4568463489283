"""PyTorch backend specifics that the parity tests do not isolate."""
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
