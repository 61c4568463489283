"""Parity with the official SuppressEOT code on the reference-tiny fixture (fp32, CPU).

The fixture (``../shared/fixtures/reference-tiny`` or ``$SUPPRESSEOT_REFERENCE_FIXTURE``) holds a tiny
model and the official code's outputs for a generated image, a null-text-inverted photo and an
NPI-inverted photo. CI has it; elsewhere these tests skip and say why.
"""
import json
import os

import numpy as np
import pytest

from conftest import reference_fixture_dir

pytest.importorskip("diffusers")

FIXTURE = reference_fixture_dir()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    FIXTURE is None, reason="reference fixture not found: set SUPPRESSEOT_REFERENCE_FIXTURE or put "
                            "../shared/fixtures/reference-tiny beside the checkout")]
RTOL = 1e-4
PART_KEYS = {"cross_retain": "calc_retain_loss", "cross_erase": "calc_erase_loss",
             "self_retain": "calc_self_retain_loss", "self_erase": "calc_self_erase_loss"}


def relative(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def model():
    from suppresseot.api import SuppressEOT

    return SuppressEOT.from_pretrained(FIXTURE / "tiny-sd", progress=False)


@pytest.fixture(scope="module")
def expected():
    return json.loads((FIXTURE / "expected.json").read_text())


def run_case(model, case, settings):
    from suppresseot.config import InversionSettings, SuppressionSettings

    suppression = SuppressionSettings(alpha=settings["alpha"][0], tau=round(1 - settings["cross_retain_steps"][0], 6),
                                      method=settings["method"], iterations=settings["iter_each_step"],
                                      max_step_to_erase=settings["max_step_to_erase"])
    group = settings["token_indices"][0]
    if settings["type"] == "Generated-Image":
        return model.generate(settings["prompt"], group, seed=settings["seed"], settings=suppression, steps=10)
    image = FIXTURE.parents[1] / "data" / settings["image_path"]
    if not image.exists():
        pytest.skip(f"fixture photo {image} not found")
    inversion = InversionSettings(method=settings["inversion"].lower(), inner_steps=3, early_stop_epsilon=1e-5)
    return model.edit(image, settings["prompt"], group, settings=suppression, inversion=inversion, steps=10)


# The real cases chain DDIM inversion, null-text optimization and ITO, whose self-attention masks
# threshold maps at 0.85/0.95 of their maximum: last-bit differences between CPUs' float32 kernels
# (vector width, oneDNN paths) can flip a mask pixel and move the later ITO losses by percents. The
# fixture reproduces on the CPU it was made on (this implementation: final latents 4.8e-5 / 4.7e-5).
# On an AMD EPYC with AVX-512 the *official code itself*, rerun there on the fixture's inputs, differs
# from the fixture by 2.8e-4 (real_npi final latents) and by up to 8e-3 in late ITO losses, while this
# implementation matches that rerun to 2.3e-5. So the real cases' ITO losses and final latents are
# held to what the official code holds to itself across CPUs; SUPPRESSEOT_PARITY_STRICT=1 asks for
# 1e-4 everywhere (on the fixture's CPU). The generated case and the inversion are held to 1e-4 always.
STRICT = os.environ.get("SUPPRESSEOT_PARITY_STRICT", "") not in ("", "0")
REAL_ITO_RTOL = RTOL if STRICT else 2e-2
REAL_FINAL_RTOL = RTOL if STRICT else 1e-3


@pytest.mark.parametrize("case", ["gen", "real_nt", "real_npi"])
def test_matches_official_code(model, expected, case, capsys):
    ref = expected[case]
    result = run_case(model, case, ref["settings"])
    real = result.inversion is not None
    ito_rtol, final_rtol = (REAL_ITO_RTOL, REAL_FINAL_RTOL) if real else (RTOL, RTOL)

    ito = np.array([row["total"] for row in result.ito_log])
    assert ito.shape == (len(ref["ito_losses"]),)
    null_text = [row["loss"] for row in result.inversion.null_text_log] if real else []
    final = np.load(FIXTURE / case / "final_latents.npy")
    with capsys.disabled():
        print(f"\n{case}: ITO losses max rel {np.max(np.abs(ito - ref['ito_losses']) / np.abs(ref['ito_losses'])):.2e}, "
              f"final latents rel {relative(result.final_latents, final):.2e}"
              + (f", null-text losses max rel {np.max(np.abs(np.subtract(null_text, ref['null_text_losses'])) / np.abs(ref['null_text_losses'])):.2e}" if null_text else ""))

    np.testing.assert_allclose(ito, ref["ito_losses"], rtol=ito_rtol)
    for ours, theirs in PART_KEYS.items():
        np.testing.assert_allclose([row[ours] for row in result.ito_log],
                                   [p[theirs] for p in ref["ito_loss_parts"]], rtol=ito_rtol, err_msg=ours)

    assert len(null_text) == len(ref["null_text_losses"])
    if null_text:
        np.testing.assert_allclose(null_text, ref["null_text_losses"], rtol=RTOL)

    assert relative(result.swr_embedding, np.load(FIXTURE / case / "swr_embedding.npy")) < 1e-5
    if real:
        x_t = result.inversion.x_T.detach().cpu().numpy()
        assert relative(x_t, np.load(FIXTURE / case / "x_T.npy")) < RTOL
    assert result.final_latents.shape == final.shape == (2, 4, 64, 64)
    assert relative(result.final_latents, final) < final_rtol
    assert relative(result.final_latents[1], final[1]) < final_rtol  # the suppressed branch on its own
