"""What ``--model``/``--lora`` accept: single-file checkpoints, .bin-only and fp16 folders, LoRA files.

Each becomes a cached diffusers folder (weights.py); these tests check that folder against the tiny model it
came from (bitwise), and LoRA fusing against diffusers' own ``load_lora_weights`` + ``fuse_lora``.
"""
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ldm_layout import to_ldm
from suppresseot import weights
from suppresseot.cli import main
from suppresseot.errors import SuppressEOTError

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")
from diffusers import StableDiffusionPipeline  # noqa: E402

PROMPT = "A man with a beard wearing glasses and a hat in blue shirt"
FAST = ["--steps", "1", "--iterations", "1", "--tau", "1.0", "--no-progress", "--suppress-tokens", "7"]
MODELS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A fresh model cache per test."""
    monkeypatch.setenv("SUPPRESSEOT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def pipe(small_model_dir):
    return StableDiffusionPipeline.from_pretrained(small_model_dir)


@pytest.fixture(scope="module")
def ldm_state(pipe):
    return to_ldm(pipe.unet, pipe.vae, pipe.text_encoder)


def folder_weights(folder):
    return {c: load_file(folder / c / f"{stem}.safetensors") for c, stem in MODELS.items()}


def assert_same_weights(folder, expected: dict, atol=0.0):
    got = folder_weights(folder)
    for component, state in expected.items():
        assert set(got[component]) == set(state), component
        for name, value in state.items():
            assert got[component][name].dtype == torch.float32, name
            torch.testing.assert_close(got[component][name], value.float(), atol=atol, rtol=0, msg=name)


def pipe_weights(pipe):
    return {c: {k: v.detach().clone() for k, v in getattr(pipe, c).state_dict().items()} for c in MODELS}


def test_shipped_configs_build_the_real_architectures():
    """Parameter counts of SD 1.5, SD 2.1 and SDXL base 1.0 (UNet, VAE, text encoders)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    expected = {"sd1": (859520964, 83653863, 123060480), "sd2": (865910724, 83653863, 340387840),
                "sd2-base": (865910724, 83653863, 340387840), "sdxl": (2567463684, 83653863, 123060480, 694659840)}
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    for name, sizes in expected.items():
        root = weights.CONFIGS / name
        with torch.device("meta"):
            built = [UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet")),
                     AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae")),
                     CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))]
            if (root / "text_encoder_2").is_dir():
                built.append(CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(root / "text_encoder_2")))
        assert tuple(count(m) for m in built) == sizes, name
        index = json.loads((root / "model_index.json").read_text())
        assert {k for k, v in index.items() if isinstance(v, list) and v[0]} == {
            p.name for p in root.iterdir() if p.is_dir()}, name


def test_config_chosen_from_the_checkpoint_keys(tmp_path, ldm_state):
    z = torch.zeros
    common = {"model.diffusion_model.x": z(1), "first_stage_model.x": z(1)}
    files = {
        "sd1": ldm_state,
        "sd2": {**common, "cond_stage_model.model.x": z(1),
                "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": z(1, 1024)},
        "sdxl": {**common, "conditioner.embedders.0.x": z(1),
                 "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": z(1)},
    }
    for name, state in files.items():
        save_file(state, tmp_path / f"{name}.safetensors")
        assert weights._config_folder(tmp_path / f"{name}.safetensors", None) == (weights.CONFIGS / name, name)
    path = tmp_path / "sd1.safetensors"
    assert weights._config_folder(path, "sd2-base")[0] == weights.CONFIGS / "sd2-base"


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_gives_the_folder_weights(tmp_path, small_model_dir, pipe, ldm_state, cache, suffix, capsys):
    path = tmp_path / f"model{suffix}"
    if suffix == ".ckpt":  # as the original training code saved it: a pickle with a state_dict inside
        torch.save({"state_dict": ldm_state, "global_step": 1}, path)
    else:
        save_file(ldm_state, path)
    folder = weights.resolve_model(path, config=small_model_dir)
    assert folder.parent == cache / "models" and not list(cache.glob("models/.*"))
    assert_same_weights(folder, pipe_weights(pipe))
    assert weights.resolve_model(path, config=small_model_dir) == folder  # converted once
    from suppresseot.tokens import Tokenizer

    ids = [Tokenizer.from_pretrained(m).padded_ids(PROMPT) for m in (folder, small_model_dir)]
    assert ids[0] == ids[1]
    from suppresseot.cli import main

    assert main(["tokens", PROMPT, "--model", str(path), "--model-config", str(small_model_dir)]) == 0
    table = capsys.readouterr().out
    assert "glasses" in table and "<|endoftext|>" in table


# The tiny SD 2 / SDXL of random_model at the least sizes diffusers' key-based family detection
# (infer_diffusers_model_type) accepts: SD 2 is told by a 1024-wide cross-attention (the stock tiny one, 128
# wide, reads as "v1"), SDXL by a 10th OpenCLIP layer (the stock tiny one, 2 layers, reads as nothing).
FAMILY_SIZES = {"v2": ("SD2_SIZES", ((32, 32, 64, 64), (32,) * 4, 1024, 64, 1, 2, (2, 4, 4, 4), 16)),
                "xl_base": ("SDXL_SIZES", ((32, 64, 64), (1, 1, 2), (2, 4, 4), (32,) * 4,
                                           ((80, 160, 2, 2), (128, 256, 10, 2)), 16))}


@pytest.mark.parametrize("family", ["v2", "xl_base"])
def test_sd2_and_sdxl_single_files_give_the_folder_weights(tmp_path, tokenizer_dir, monkeypatch, family):
    """A tiny SD 2 (OpenCLIP text encoder, fused q/k/v) or SDXL (CLIP-L + OpenCLIP bigG with projection) in the
    original layout: its family read from the keys, and converted back to exactly the folder's weights."""
    from suppresseot import random_model

    table, size = FAMILY_SIZES[family]
    monkeypatch.setitem(getattr(random_model, table), "ldm", size)
    build = random_model.build_random_sd2 if family == "v2" else random_model.build_random_sdxl
    pipe = build(tokenizer_dir, size="ldm")
    pipe.save_pretrained(tmp_path / "folder")
    encoders = [m for m in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if m is not None]
    save_file(to_ldm(pipe.unet, pipe.vae, *encoders, family=family), tmp_path / "model.safetensors")

    assert weights.checkpoint_family(tmp_path / "model.safetensors") == family
    assert weights._config_folder(tmp_path / "model.safetensors", None)[1] == weights.FAMILY_CONFIGS[family]
    folder = weights.resolve_model(tmp_path / "model.safetensors", config=tmp_path / "folder")
    components = ["unet", "vae", "text_encoder"] + ["text_encoder_2"] * (len(encoders) == 2)
    for component in components:
        got = load_file(folder / component / f"{weights.WEIGHTS[component]['safetensors']}.safetensors")
        expected = getattr(pipe, component).state_dict()
        assert set(got) == set(expected), component
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, atol=0, rtol=0, msg=f"{component}.{name}")


def test_bin_only_and_fp16_folders(tmp_path, pipe):
    pipe.save_pretrained(tmp_path / "bin", safe_serialization=False)
    # transformers 5 writes safetensors regardless: give the text encoder a .bin as older releases wrote it
    (tmp_path / "bin" / "text_encoder" / "model.safetensors").unlink()
    torch.save(pipe.text_encoder.state_dict(), tmp_path / "bin" / "text_encoder" / "pytorch_model.bin")
    assert not list((tmp_path / "bin").glob("*/*.safetensors"))
    assert_same_weights(weights.resolve_model(tmp_path / "bin"), pipe_weights(pipe))

    half = StableDiffusionPipeline.from_pretrained(tmp_path / "bin", torch_dtype=torch.float16)
    half.save_pretrained(tmp_path / "fp16", variant="fp16")
    with pytest.raises(SuppressEOTError, match="add --variant fp16"):
        weights.resolve_model(tmp_path / "fp16")
    upcast = {c: {k: v.float() for k, v in state.items()} for c, state in pipe_weights(half).items()}
    assert_same_weights(weights.resolve_model(tmp_path / "fp16", variant="fp16"), upcast)


def peft_lora(pipe, seed: int) -> dict:
    """A random LoRA (rank 2) on the UNet's and the text encoder's attention, in the diffusers/PEFT layout."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    state = {}
    torch.manual_seed(seed)
    for component, targets in (("unet", ["to_q", "to_k", "to_v", "to_out.0"]),
                               ("text_encoder", ["q_proj", "k_proj", "v_proj", "out_proj"])):
        model = type(getattr(pipe, component)).from_config(getattr(pipe, component).config) \
            if component == "unet" else type(pipe.text_encoder)(pipe.text_encoder.config)
        inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=targets, init_lora_weights=False), model)
        state.update({f"{component}.{k}": v.detach().clone() for k, v in get_peft_model_state_dict(model).items()})
    return state


def kohya(state: dict) -> dict:
    """The same LoRA under kohya's names (``lora_unet_...``/``lora_te_...``, ``lora_down``/``lora_up``, alpha)."""
    out = {}
    for name, value in state.items():
        component, rest = name.split(".", 1)
        module, kind = rest.rsplit(".lora_", 1)
        module = ("lora_unet_" if component == "unet" else "lora_te_text_model_") + module.replace(".", "_")
        out[f"{module}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value
        out[f"{module}.alpha"] = torch.tensor(float(value.shape[0 if kind.startswith("A") else 1]))
    return out


def test_lora_fuses_as_diffusers_does(tmp_path, small_model_dir, pipe, cache):
    first, second = peft_lora(pipe, 1), peft_lora(pipe, 2)
    save_file(first, tmp_path / "style.safetensors")
    save_file(kohya(second), tmp_path / "kohya.safetensors")
    loras = [(tmp_path / "style.safetensors", 0.7), tmp_path / "kohya.safetensors"]

    reference = StableDiffusionPipeline.from_pretrained(small_model_dir)
    reference.load_lora_weights(str(tmp_path / "style.safetensors"), adapter_name="a")
    reference.load_lora_weights(str(tmp_path / "kohya.safetensors"), adapter_name="b")
    reference.set_adapters(["a", "b"], adapter_weights=[0.7, 1.0])
    reference.fuse_lora(adapter_names=["a", "b"])
    reference.unload_lora_weights()
    expected = pipe_weights(reference)
    folder = weights.resolve_model(small_model_dir, lora=loras)
    assert_same_weights(folder, expected, atol=1e-6)
    # and by hand for one layer: W + 0.7 B1 A1 + B2 A2
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    delta = sum(scale * lora[f"unet.{layer}.lora_B.weight"] @ lora[f"unet.{layer}.lora_A.weight"]
                for lora, scale in ((first, 0.7), (second, 1.0)))
    torch.testing.assert_close(folder_weights(folder)["unet"][f"{layer}.weight"],
                               pipe.unet.state_dict()[f"{layer}.weight"] + delta, atol=1e-6, rtol=0)
    assert (delta.abs().max() > 0.01) and not torch.equal(
        folder_weights(folder)["text_encoder"]["encoder.layers.0.self_attn.q_proj.weight"],
        pipe.text_encoder.state_dict()["encoder.layers.0.self_attn.q_proj.weight"])

    # from the CLI: the fused model runs and run.json records each LoRA
    assert main(["generate", PROMPT, "--model", str(small_model_dir), "--lora", str(tmp_path / "style.safetensors"),
                 "--lora-scale", "0.7", "--lora", str(tmp_path / "kohya.safetensors"), "--out", str(tmp_path / "runs"),
                 *FAST]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "run.json").read_text())["loras"] == [
        {"file": "style.safetensors", "sha256": weights.file_sha256(tmp_path / "style.safetensors"), "scale": 0.7},
        {"file": "kohya.safetensors", "sha256": weights.file_sha256(tmp_path / "kohya.safetensors"), "scale": 1.0}]
    assert len(list((cache / "models").iterdir())) == 1  # the CLI reused the folder converted above


class Payload:
    pass


def test_bad_files_are_one_line_and_write_nothing(tmp_path, capsys, small_model_dir, ldm_state, cache):
    good = tmp_path / "good.safetensors"
    save_file(ldm_state, good)
    bad = {"corrupt.safetensors": os.urandom(4096), "truncated.safetensors": good.read_bytes()[:len(good.read_bytes()) // 2],
           "notes.ckpt": b"not a pickle", "readme.txt": b"hello"}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    save_file({"encoder.weight": torch.zeros(3)}, tmp_path / "other.safetensors")

    # a pickle that would run code: weights_only loading refuses it
    torch.save({"state_dict": ldm_state, "payload": Payload()}, tmp_path / "code.ckpt")
    save_file({"unet.nothing.lora_A.weight": torch.zeros(2, 4), "unet.nothing.lora_B.weight": torch.zeros(4, 2)},
              tmp_path / "stray-lora.safetensors")
    cases = [
        (["--model", str(tmp_path / "corrupt.safetensors")], "cannot read"),
        (["--model", str(tmp_path / "truncated.safetensors")], "cannot read"),
        (["--model", str(tmp_path / "notes.ckpt")], "weights_only"),
        (["--model", str(tmp_path / "code.ckpt")], "weights_only"),
        (["--model", str(tmp_path / "readme.txt")], "is not a checkpoint file"),
        (["--model", str(tmp_path / "other.safetensors")], "is not a Stable Diffusion 1.x, 2.x or SDXL"),
        (["--model", str(good), "--model-config", str(tmp_path)], "neither a diffusers folder"),
        (["--model", str(small_model_dir), "--lora", str(tmp_path / "readme.txt")], "cannot load LoRA"),
        (["--model", str(small_model_dir), "--lora", str(tmp_path / "missing.safetensors")], "does not exist"),
        (["--model", str(small_model_dir), "--lora", str(good)], "cannot load LoRA"),
        (["--model", str(small_model_dir), "--lora-scale", "2"], "--lora-scale follows the --lora"),
    ]
    for extra, expected in cases:
        code = main(["generate", PROMPT, "--out", str(tmp_path / "runs"), *FAST, *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected in err[0], (extra, err)
    # a LoRA that fits no layer of the model shows only once the model is loaded, after the conversion's note
    code = main(["generate", PROMPT, "--out", str(tmp_path / "runs"), *FAST, "--model", str(small_model_dir),
                 "--lora", str(tmp_path / "stray-lora.safetensors")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 2 and err[0].startswith("converting") and "cannot load LoRA" in err[1], err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert not (cache / "models").exists() or not any((cache / "models").iterdir())


def test_batch_manifest_names_models_and_loras(tmp_path, small_model_dir, pipe, ldm_state, cache):
    """The batch's model is a checkpoint next to the manifest; one task adds a LoRA, one runs the diffusers folder
    the checkpoint came from (same outputs, offline): three models, each loaded once."""
    save_file(ldm_state, tmp_path / "model.safetensors")
    save_file(peft_lora(pipe, 1), tmp_path / "style.safetensors")
    task = {"type": "generated", "prompt": "a cat sitting on a red car", "token_group": [6], "tau": 1.0}
    (tmp_path / "tiny.json").write_text(json.dumps({"name": "tiny", "model": "model.safetensors", "tasks": [
        {"id": "plain", **task}, {"id": "styled", **task, "loras": [["style.safetensors", 0.5]]},
        {"id": "folder", **task, "model": str(small_model_dir)}]}))
    argv = ["batch", str(tmp_path / "tiny.json"), "--model-config", str(small_model_dir), "--out",
            str(tmp_path / "out"), "--steps", "1", "--iterations", "1", "--no-progress"]
    assert main(argv) == 0
    records = {name: json.loads((tmp_path / "out" / f"{name}--suppresseot--torch" / "run.json").read_text())
               for name in ("plain", "styled", "folder")}
    assert [r["model"] for r in records.values()] == [str(tmp_path / "model.safetensors")] * 2 + [str(small_model_dir)]
    assert [r["loras"] for r in records.values()] == [[], [{
        "file": "style.safetensors", "sha256": weights.file_sha256(tmp_path / "style.safetensors"), "scale": 0.5}], []]
    assert len(list((cache / "models").iterdir())) == 2  # the checkpoint's folder, and it with the LoRA fused
    latents = {name: np.load(tmp_path / "out" / f"{name}--suppresseot--torch" / "final_latents.npy")
               for name in records}
    np.testing.assert_allclose(latents["plain"], latents["folder"], atol=1e-6, rtol=0)
    assert not np.allclose(latents["plain"], latents["styled"])


def test_sharded_folder_is_used_as_it_is(tmp_path, pipe):
    """diffusers shards weights past 10 GB (SDXL's fp32 UNet): the shards' index stands for the file."""
    pipe.save_pretrained(tmp_path / "sharded")
    (tmp_path / "sharded" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    pipe.unet.save_pretrained(tmp_path / "sharded" / "unet", max_shard_size="300KB")
    assert len(list((tmp_path / "sharded" / "unet").glob("diffusion_pytorch_model-*-of-*.safetensors"))) > 1
    assert weights.resolve_model(tmp_path / "sharded") == tmp_path / "sharded"  # nothing to convert
    assert any(p.endswith("diffusion_pytorch_model-*-of-*.safetensors") for p in weights.HUB_PATTERNS)
