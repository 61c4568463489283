"""Unit tests of the shared algorithm against hand-checked values and the official formulations."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from suppresseot.algorithm.attention import ALL_PLACES, AttentionRecorder  # noqa: E402
from suppresseot.algorithm.ddim import DDIMSchedule  # noqa: E402
from suppresseot.algorithm.losses import (Lambdas, attention_loss, bilinear_matrix, loss_weights,  # noqa: E402
                                          token_mask)
from suppresseot.algorithm.pipeline import adam_step  # noqa: E402
from suppresseot.algorithm.swr import eot_and_negative_rows, regularize_matrix, soft_weight_regularize  # noqa: E402
from suppresseot.config import SuppressionSettings  # noqa: E402


# --- SWR ---------------------------------------------------------------------------------------

def test_swr_rows_are_negative_tokens_then_eot_and_padding():
    assert eot_and_negative_rows([4, 5], n_tokens=8) == [4, 5] + list(range(7, 77))


def test_soft_weight_scales_singular_values_by_exp_minus_alpha_s():
    # columns are orthogonal: singular values are the column norms 3 and 2
    m = np.array([[3.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    out = regularize_matrix(m, alpha=0.5, method="soft-weight")
    np.testing.assert_allclose(out, [[3 * np.exp(-1.5), 0], [0, 2 * np.exp(-1.0)], [0, 0]], atol=1e-12)


def test_strengthen_alpha_grows_singular_values():
    m = np.array([[3.0, 0.0], [0.0, 2.0]])
    out = regularize_matrix(m, alpha=-0.001, method="soft-weight")
    np.testing.assert_allclose(np.diag(out), [3 * np.exp(0.003) * 1.2, 2 * np.exp(0.002) * 1.2], rtol=1e-12)


def test_alpha_beta_delete_weight_methods():
    m = np.diag([4.0, 2.0, 1.0, 0.5])
    np.testing.assert_allclose(np.diag(regularize_matrix(m, 0.5, "alpha")), [0, 0, 1, 0.5], atol=1e-12)
    np.testing.assert_allclose(np.diag(regularize_matrix(m, 0.5, "beta")), [4, 2, 0, 0], atol=1e-12)
    np.testing.assert_allclose(np.diag(regularize_matrix(m, 0.5, "delete")), [0, 0, 1, 0.5], atol=1e-12)
    assert not regularize_matrix(m, 1.0, "delete").any()
    np.testing.assert_allclose(regularize_matrix(m, 0.3, "weight"), m * 0.3)


def test_soft_weight_regularize_leaves_other_rows_and_keeps_dtype():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((1, 77, 96)).astype(np.float32)
    out = soft_weight_regularize(emb, [2], n_tokens=5, alpha=1.0)
    assert out.shape == emb.shape and out.dtype == np.float32
    untouched = [0, 1, 3]
    np.testing.assert_array_equal(out[0, untouched], emb[0, untouched])
    assert not np.allclose(out[0, 2], emb[0, 2]) and not np.allclose(out[0, 4:], emb[0, 4:])
    # alpha 0 rebuilds the same matrix
    np.testing.assert_allclose(soft_weight_regularize(emb, [2], 5, 0.0), emb, atol=1e-5)


# --- masks and losses --------------------------------------------------------------------------

@pytest.mark.parametrize("size_in,size_out", [(16, 256), (256, 16), (7, 13)])
def test_bilinear_matrix_matches_torch_interpolate(size_in, size_out):
    a = np.random.default_rng(1).random((size_in, size_in))
    w = bilinear_matrix(size_in, size_out)
    expected = F.interpolate(torch.from_numpy(a)[None, None], size=(size_out, size_out), mode="bilinear")[0, 0]
    np.testing.assert_allclose(w @ a @ w.T, expected.numpy(), rtol=1e-12, atol=1e-12)


def official_mask(attn: torch.Tensor, threshold: float) -> torch.Tensor:
    """The official calc_mask for one token, written as it is there (threshold compares after the 255 set)."""
    a = 255 * attn / attn.max()
    a = F.interpolate(a[None, None], size=(256, 256), mode="bilinear")
    a[a >= a.max() * threshold] = 255
    a[a < a.max() * threshold] = 0
    return F.interpolate(a, size=attn.shape, mode="bilinear")[0, 0] > 0


def official_loss(cross, cross_e, self_, self_e, n, neg, lambdas):
    """The official AttnLoss loops (cosine, float64), to check the vectorized version against."""
    cos = torch.nn.CosineSimilarity()
    masks = [official_mask(cross[:, :, i], 0.85 if i in neg else 0.95) for i in range(1, n - 1)]
    h, w, k = cross.shape
    c, ce = cross.reshape(h * w, k)[None], cross_e.reshape(h * w, k)[None]
    parts = {"cross_retain": 0.0, "cross_erase": 0.0, "self_retain": 0.0, "self_erase": 0.0}
    for i in range(1, n - 1):
        part = "erase" if i in neg else "retain"
        parts["cross_" + part] += float(1 - cos(c[:, :, i], ce[:, :, i]))
        for j, m in enumerate(masks[i - 1].reshape(-1)):
            if m:
                parts["self_" + part] += float(1 - cos(self_[:, :, j].reshape(1, -1), self_e[:, :, j].reshape(1, -1)))
    total = (lambdas.retain * parts["cross_retain"] + lambdas.erase * parts["cross_erase"]
             + lambdas.self_retain * parts["self_retain"] + lambdas.self_erase * parts["self_erase"])
    return total, parts


def random_maps(seed, keys):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(16, 16, keys, generator=g, dtype=torch.float64) * 3, dim=-1)


def test_token_mask_matches_official_threshold_logic():
    for seed in range(3):
        attn = random_maps(seed, 77)[:, :, 3]
        for threshold in (0.85, 0.95):
            expected = official_mask(attn.clone(), threshold).numpy()
            np.testing.assert_array_equal(token_mask(attn.numpy(), threshold), expected)


def test_vectorized_attention_loss_equals_official_loops():
    n, neg = 9, [3, 4]
    cross, cross_e = random_maps(0, 77), random_maps(1, 77)
    self_, self_e = random_maps(2, 256), random_maps(3, 256)
    lambdas = Lambdas()
    weights = loss_weights(cross.numpy(), n, neg)
    weights_t = {k: torch.from_numpy(v) for k, v in vars(weights).items()}
    total, parts = attention_loss(cross, cross_e, self_, self_e, weights_t, lambdas)
    expected_total, expected_parts = official_loss(cross, cross_e, self_, self_e, n, neg, lambdas)
    assert float(total) == pytest.approx(expected_total, rel=1e-12)
    for key, value in expected_parts.items():
        assert float(parts[key]) == pytest.approx(value, rel=1e-12), key
    assert weights.cross_erase.sum() == 2 and weights.cross_retain.sum() == n - 2 - 2
    assert weights.self_erase.sum() > 0 and weights.self_retain.sum() > 0


def test_identical_maps_give_zero_loss():
    cross, self_ = random_maps(5, 77), random_maps(6, 256)
    weights = {k: torch.from_numpy(v) for k, v in vars(loss_weights(cross.numpy(), 6, [2])).items()}
    total, _ = attention_loss(cross, cross, self_, self_, weights, Lambdas())
    assert abs(float(total)) < 1e-12


# --- attention aggregation ---------------------------------------------------------------------

def test_aggregate_takes_first_half_of_rows_like_the_official_reshape():
    rec = AttentionRecorder()
    heads = 4
    probs = torch.arange(heads * 256 * 3, dtype=torch.float32).reshape(heads, 256, 3)  # batch 1: rows are heads
    rec(probs, True, "down")
    rec(torch.zeros(heads, 64, 3), True, "mid")  # 8x8: not kept
    assert list(rec.totals) == [("cross", "down")]
    first_half = probs[:2].mean(0).reshape(16, 16, 3)
    torch.testing.assert_close(rec.aggregate(True, ("up", "down")), first_half)
    torch.testing.assert_close(rec.aggregate(True, ("down",), halves=False), probs.mean(0).reshape(16, 16, 3))
    second_half = probs[2:].mean(0).reshape(16, 16, 3)
    torch.testing.assert_close(rec.aggregate(True, ("down",), select=1), second_half)
    with pytest.raises(RuntimeError):
        rec.aggregate(False)


def test_running_sums_give_the_official_mean_over_layers_heads_tasks_and_branches():
    """The recorder keeps per-place sums, not every layer: the result is the official concatenate-then-mean
    over the kept rows (here 2 tasks x 2 branches, layers in three places with 4 and 6 heads)."""
    torch.manual_seed(0)
    k, res, keys = 2, 4, 5
    layers = [("down", 4), ("mid", 6), ("up", 4), ("up", 6), ("down", 6)]
    probs = [(place, torch.rand(2 * k * heads, res * res, keys, dtype=torch.float64)) for place, heads in layers]
    rec = AttentionRecorder(res, batch=2 * k)
    for place, p in probs:
        rec(p, False, place)
    for select in (0, 1):
        for places in (("up", "down"), ("up", "down", "mid")):
            kept = [p.reshape(2, k, -1, res, res, keys)[select] for place, p in probs if place in places]
            expected = torch.cat(kept, dim=1).mean(1)
            got = rec.aggregate(False, places, select=select, tasks=k, branches=2)
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    ito = AttentionRecorder(res, batch=k)  # one branch: half ``select`` of each task's heads, or all heads
    for place, p in probs:
        ito(p[: k * p.shape[0] // (2 * k)], True, place)
    kept = [p[: p.shape[0] // 2].reshape(k, 2, -1, res, res, keys)[:, 0] for _, p in probs]
    torch.testing.assert_close(ito.aggregate(True, tasks=k), torch.cat(kept, dim=1).mean(1), rtol=1e-12, atol=0)
    everything = [p[: p.shape[0] // 2].reshape(k, -1, res, res, keys) for _, p in probs]
    torch.testing.assert_close(ito.aggregate(True, tasks=k, halves=False), torch.cat(everything, dim=1).mean(1),
                               rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="not the recorded batch"):
        ito.aggregate(True, tasks=3)


def test_a_recorder_that_skips_the_unconditional_half_keeps_what_the_conditional_pass_alone_gives():
    """One-pass guidance: the pass holds [uncond x 2K, cond x 2K]; skipping the first 2K samples records
    exactly what a recorder of the conditional pass alone records (2 tasks x 2 branches, 4 and 6 heads)."""
    torch.manual_seed(1)
    k, res, keys = 2, 4, 5
    layers = [("down", 4), ("up", 6), ("mid", 4)]
    cond = [(place, torch.rand(2 * k * heads, res * res, keys, dtype=torch.float64)) for place, heads in layers]
    alone, skipping = AttentionRecorder(res, batch=2 * k), AttentionRecorder(res, batch=2 * k, skip=2 * k)
    for place, p in cond:
        alone(p, True, place)
        skipping(torch.cat([torch.full_like(p, 7.0), p]), True, place)  # uncond rows first, never to be seen
        assert skipping.heads(2 * p.shape[0]) == alone.heads(p.shape[0]) == p.shape[0] // (2 * k)
    for select in (0, 1):
        torch.testing.assert_close(skipping.aggregate(True, ALL_PLACES, select=select, tasks=k, branches=2),
                                   alone.aggregate(True, ALL_PLACES, select=select, tasks=k, branches=2),
                                   rtol=0, atol=0)


# --- DDIM and Adam -----------------------------------------------------------------------------

def diffusers_ddim(steps):
    from diffusers import DDIMScheduler

    s = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1)
    s.set_timesteps(steps)
    return s


@pytest.mark.parametrize("steps", [10, 50])
def test_schedule_matches_diffusers(steps):
    ours, ref = DDIMSchedule.create(steps), diffusers_ddim(steps)
    assert list(ours.timesteps) == ref.timesteps.tolist()
    # torch's vectorized float32 linspace rounds differently from numpy in the last bit
    np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=2e-6)


def test_ddim_step_matches_diffusers_and_inverse_step_undoes_it():
    schedule, ref = DDIMSchedule.create(10), diffusers_ddim(10)
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    for t in (901, 401, 1):
        torch.testing.assert_close(schedule.step(eps, t, x), ref.step(eps, t, x).prev_sample, rtol=1e-5, atol=1e-5)
        back = schedule.inverse_step(eps, t, schedule.step(eps, t, x))
        torch.testing.assert_close(back, x, rtol=1e-4, atol=1e-4)


def test_adam_step_matches_torch_optim_adam():
    g = torch.Generator().manual_seed(0)
    start = torch.randn(1, 77, 8, generator=g)
    param = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([param], lr=1e-2)
    ours, state = start.clone(), {"step": 0, "m": start * 0, "v": start * 0}
    for _ in range(5):
        grad = torch.randn(1, 77, 8, generator=g) * 1e-3
        param.grad = grad.clone()
        opt.step()
        ours = adam_step(ours, grad, state, lr=1e-2)
    torch.testing.assert_close(ours, param.detach(), rtol=1e-6, atol=1e-7)


def test_ito_window_follows_tau_and_max_step():
    s = SuppressionSettings(tau=0.8, max_step_to_erase=5, iterations=3)
    assert s.first_step(10) == 2 and list(s.ito_steps(10)) == [2, 3, 4]
    assert s.first_step(50) == 10 and list(SuppressionSettings().ito_steps(50)) == list(range(10, 20))
    assert list(SuppressionSettings(iterations=0).ito_steps(50)) == []
    assert SuppressionSettings(tau=1.0).first_step(50) == 0


def test_sample_sizes_come_from_the_model_configs():
    """SD v1's 64x64 latents and 512 px images, read as diffusers' pipelines read them; non-square refused."""
    from suppresseot.backends.base import sample_sizes
    from suppresseot.errors import SuppressEOTError

    sd_vae = {"block_out_channels": [128, 256, 512, 512]}
    assert sample_sizes({"sample_size": 64}, sd_vae) == (64, 512)
    assert sample_sizes({"sample_size": [32, 32]}, sd_vae) == (32, 256)
    assert sample_sizes({"sample_size": 64}, {"block_out_channels": [64, 128]}) == (64, 128)
    with pytest.raises(SuppressEOTError, match="not square"):
        sample_sizes({"sample_size": [64, 48]}, sd_vae)
