"""benchmarks/flops.py: the FLOPs of SuppressEOT's steps and runs, counted without computing, and what a bench
run achieved."""
import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from conftest import load_benchmark  # noqa: E402


@pytest.fixture(scope="module")
def flops():
    return load_benchmark("flops")


def test_fake_counts_are_the_computed_counts_and_the_unet_formula(flops, tiny_model_dir):
    """Counting on shapes alone (FakeTensorMode) gives what counting a real computation gives; a guided step is
    one batch-2 UNet call of diffusers, whose convolutions and attention products the formula counts (checked
    against a hand count of the first convolution: 2 * out * in * 3 * 3 * pixels)."""
    import torch

    from suppresseot.backends.torch_backend import TorchBackend

    backend = TorchBackend(tiny_model_dir, device="cpu", fused_attention=True)
    steps = flops.make_steps(backend)
    for name, (fn, inputs) in steps.items():
        assert flops.flops_of(fn, inputs, fake=True) == flops.flops_of(fn, inputs, fake=False), name
    unet = backend.unet_model
    text, latent = steps["ito_iteration"][1][:2]
    with torch.no_grad():
        direct = flops.flops_of(lambda: unet(torch.cat([latent] * 2), 500, encoder_hidden_states=torch.cat([text] * 2)),
                                ())
    assert flops.flops_of(*steps["diffusers_guided_step"]) == direct
    conv = unet.conv_in
    side = backend.latent_size
    assert flops.flops_of(conv, (latent,)) == 2 * conv.out_channels * conv.in_channels * 9 * side * side
    # what the pieces are: ITO's pass ends at the maps, so an iteration costs less than a null-text one
    f = flops.count_steps(backend)
    assert 0 < f.reference_maps < f.conditional_pass and f.ito_iteration < f.null_text_iteration
    assert 0 <= f.denoising_step_two_passes - 2 * f.guided_step < 0.05 * f.guided_step  # the recorded maps' extra


def test_run_counts_and_achieved_throughput(flops, tiny_model_dir, tmp_path):
    f = flops.StepFlops(text_encoding=1, vae_encode=10, vae_decode=100, conditional_pass=1000, reference_maps=500,
                        ito_iteration=2000, null_text_iteration=3000, guided_step=4000, denoising_step_two_passes=8100,
                        denoising_step_one_pass=8200)
    runs = flops.run_flops(f, steps=50, ito_steps=10, iterations=10, inner=10)
    assert runs["diffusers"] == 2 + 50 * 4000 + 100
    assert runs["gen0"] == 2 + 50 * 8100 + 200
    assert runs["gen10"] - runs["gen0"] == 10 * (500 + 10 * 2000)
    assert runs["real_npi"] - runs["gen10"] == 2 + 10 + 100 + 50 * 1000 - 1
    assert runs["real_nt"] - runs["real_npi"] == 50 * (1000 + 10 * 3000 + 4000)
    once = flops.run_flops(f, steps=50, first=10, ito_steps=10, iterations=10, inner=10, repeated_once=True)
    assert once["diffusers"] == runs["diffusers"] and runs["gen0"] - once["gen0"] == 10 * 4050
    assert runs["real_nt"] - once["real_nt"] == 10 * 4050 + 50 * (4000 - 1000)

    bench = {"device": "NVIDIA H100 80GB HBM3", "git_commit": "abc", "settings": {"approach_impl": "fast"},
             "backends": {"fast": {"repeated_samples_once": True}, "faithful": {"repeated_samples_once": False}},
             "results": {"diffusers": {"gen0": {"total_s": 2.0}, "gen10": {"total_s": 1.5}},
                         "official": {"gen10": {"total_s": 30.0}}, "faithful": {"gen0": {"total_s": 4.0}},
                         "fast": {"gen10": {"total_s": 3.0}, "real_nt": {"error": "x"}}},
             "approaches": {"suppresseot": {"generated": {"total_s": 2.5}}, "sega": {"generated": {"total_s": 1.0}}}}
    assert flops.measured(bench) == [("diffusers", "diffusers", 1.5), ("faithful", "gen0", 4.0),
                                     ("fast", "gen10", 3.0), ("fast (suppresseot)", "gen10", 2.5)]
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    report = flops.main(["--model-dir", str(tiny_model_dir), "--steps", "4", "--bench", str(tmp_path / "bench.json"),
                         "--out", str(tmp_path / "out")])
    row = next(r for r in report["measured"] if r["impl"] == "fast")  # its bench says it computes less
    assert row["flops"] == report["run_flops_repeated_once"]["gen10"] < report["run_flops"]["gen10"]
    assert row["tflops"] == pytest.approx(row["flops"] / 3.0 / 1e12)
    faithful = next(r for r in report["measured"] if r["impl"] == "faithful")
    assert faithful["flops"] == report["run_flops"]["gen0"]
    peaks = {r["impl"]: r["peak"] for r in report["measured"]}
    assert peaks == {"diffusers": 989.0, "fast": 989.0, "fast (suppresseot)": 989.0, "faithful": None}
    text = (tmp_path / "out" / "flops.md").read_text()
    assert "| fast | gen10 | 3.00 |" in text and "x diffusers' FLOPs" in text
