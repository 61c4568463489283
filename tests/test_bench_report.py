"""benchmarks/bench.py's summary: ratios against the official code, Jittor's memory from its probe runs."""
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from conftest import load_benchmark  # noqa: E402

GIB = 2**30


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench")


def _run(total, peak=None, reserved=None, probe=None):
    r = {"total_s": total, "stages_s": {"swr_ito_sampling": total}, "stage_groups_s": {"sampling": total},
         "peak_allocated_bytes": peak, "peak_reserved_bytes": reserved}
    if probe is not None:
        r["memory_probe_peak_bytes"] = probe
    return r


def test_summary_uses_jittors_probe_peak_and_compares_latents(bench):
    results = {"official": {"gen10": _run(30.0, 10 * GIB, 12 * GIB)},
               "faithful": {"gen10": _run(15.0, 6 * GIB, 7 * GIB)},
               "jittor": {"gen10": _run(40.0, probe=5 * GIB)}}
    ref = np.ones((2, 4, 64, 64), np.float32)
    latents = {("official", "gen10"): ref, ("faithful", "gen10"): ref * 1.001, ("jittor", "gen10"): ref * 0.99}
    row = bench.summarize(results, latents, ["gen10"])["gen10"]
    assert row["faithful"]["speedup"] == pytest.approx(2.0)
    assert row["faithful"]["memory_ratio"] == pytest.approx(0.6)
    assert row["faithful"]["reserved_ratio"] == pytest.approx(7 / 12)
    assert row["jittor"]["speedup"] == pytest.approx(0.75)
    assert row["jittor"]["memory_ratio"] == pytest.approx(0.5)
    assert "reserved_ratio" not in row["jittor"]
    assert row["faithful"]["latent_rel_diff_vs_official"] == pytest.approx(1e-3, rel=1e-3)
    assert row["jittor"]["latent_rel_diff_vs_faithful"] == pytest.approx(0.011 / 1.001, rel=1e-3)

    report = {"results": results, "summary": {"gen10": row}, "device": "test",
              "settings": {"steps": 50, "null_text_steps": 10}}
    head, _, first = bench.markdown(report).splitlines()[:3]
    cells = dict(zip(head.strip("| ").split(" | "), first.strip("| ").split(" | ")))
    assert cells["jittor peak GiB"] == "5.00" and cells["jittor mem ratio"] == "0.50"
    assert cells["faithful speedup"] == "2.00x" and cells["official peak GiB"] == "10.00"
    assert "ITO reads" not in bench.markdown(report)
    report["settings"]["ito_blocks"] = ["down", "mid"]  # bench.py --ito-blocks down,mid
    assert "ours: ITO reads the down,mid blocks; speedup = official s / ours s" in bench.markdown(report)


def test_x_diffusers_divides_by_diffusers_fastest_generation_of_the_run(bench):
    """The model families' baseline: each generated mode repeats diffusers' same plain generation; ours are
    held to the fastest of them (the strict reading of 'diffusers' time in the same run')."""
    results = {"diffusers": {"gen0": _run(4.0), "gen10": _run(3.5)},
               "fast": {"gen0": _run(5.0), "gen10": _run(10.5), "real_nt": _run(35.0)}}
    summary = bench.summarize(results, {}, ["gen0", "gen10", "real_nt"])
    assert [summary[m]["fast"]["x_diffusers"] for m in ("gen0", "gen10", "real_nt")] == \
        pytest.approx([5.0 / 3.5, 3.0, 10.0])
    assert "x_diffusers" not in summary["gen0"]["diffusers"]


def test_conv_probe_reference_is_a_float64_same_convolution():
    """benchmarks/probes/probe_conv.py tells TF32 from exact fp32 by its float64 reference: it must be the
    convolution."""
    import torch

    probe = load_benchmark("probes/probe_conv")
    rng = np.random.default_rng(0)
    for k in (3, 1):
        x = rng.standard_normal((6, 9, 7)).astype(np.float32)
        w = rng.standard_normal((4, 6, k, k)).astype(np.float32)
        expected = torch.nn.functional.conv2d(torch.from_numpy(x)[None].double(), torch.from_numpy(w).double(),
                                              padding=k // 2)[0].numpy()
        got = probe.reference(x, w)
        assert got.shape == (4, 9, 7) and got.dtype == np.float64
        assert probe.rel(got, expected) < 1e-12
        assert probe.rel(got.astype(np.float32) + 1e-3, expected) > 1e-5  # and rel() sees a difference


def test_measure_keeps_each_stages_peak(bench):
    """bench.json says which stage holds a run's peak memory, not only the whole run's."""
    gib = GIB

    class Runner:
        measures_torch_memory = True

        def run(self, mode, steps, null_text_steps):
            stages = {"ddim_inversion": 0.1, "swr_ito_sampling": 0.2}
            memory = {"ddim_inversion": {"allocated": 4 * gib, "reserved": 5 * gib},
                      "swr_ito_sampling": {"allocated": 6 * gib, "reserved": 7 * gib}, "vae_decode": {}}
            return stages, np.zeros((2, 4, 8, 8)), memory

    result, latents = bench.measure(Runner(), "real_npi", bench.Settings(), "cpu")
    assert result["stage_peak_bytes"] == {"ddim_inversion": {"allocated": 4 * gib, "reserved": 5 * gib},
                                          "swr_ito_sampling": {"allocated": 6 * gib, "reserved": 7 * gib}}
    assert result["stage_groups_s"] == {"inversion": 0.1, "sampling": 0.2} and latents.shape == (2, 4, 8, 8)
    # the per-stage table names that stage and its peak
    report = {"results": {"faithful": {"real_npi": result}}, "summary": {}, "device": "test",
              "settings": {"steps": 50, "null_text_steps": 10}}
    rows = [line for line in bench.markdown(report).splitlines() if line.startswith("| faithful | real_npi")]
    assert rows and rows[0].rstrip(" |").endswith("swr_ito_sampling 6.00")
    assert bench.largest_stage({}) == "–"
