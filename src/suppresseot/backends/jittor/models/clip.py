"""The CLIP text encoders of Stable Diffusion 1.x, 2.x and SDXL (transformers' ``CLIPTextModel`` and
``CLIPTextModelWithProjection``) in Jittor.

Pre-LayerNorm transformer with a causal mask; returns ``last_hidden_state`` (after
``final_layer_norm``), which is what SD conditions on. Parameter names match the checkpoint
(``text_model.encoder.layers.0.self_attn.q_proj.weight``, ...).
"""
from __future__ import annotations

import numpy as np
import jittor as jt
from jittor import nn

from ....errors import SuppressEOTError
from .layers import LayerNorm, permute

_ACTIVATIONS = {
    "quick_gelu": lambda x: x * jt.sigmoid(1.702 * x),
    "gelu": nn.gelu,  # exact (erf) GELU, as transformers' "gelu"
}


class CLIPAttention(nn.Module):
    def __init__(self, dim, heads):
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def execute(self, x, mask):
        b, n, d = x.shape
        split = lambda t: t.reshape((b, n, self.heads, -1)).permute(0, 2, 1, 3)  # (B, H, L, D)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        scores = jt.matmul(q, permute(k, 0, 1, 3, 2)) * self.scale + mask
        probs = nn.softmax(scores.float32(), dim=-1).cast(v.dtype)
        out = jt.matmul(probs, v).permute(0, 2, 1, 3).reshape((b, n, d))
        return self.out_proj(out)


class CLIPMLP(nn.Module):
    def __init__(self, dim, hidden, act):
        self.fc1, self.fc2, self.act = nn.Linear(dim, hidden), nn.Linear(hidden, dim), act

    def execute(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, cfg, act):
        dim, eps = cfg["hidden_size"], cfg.get("layer_norm_eps", 1e-5)
        self.self_attn = CLIPAttention(dim, cfg["num_attention_heads"])
        self.layer_norm1 = LayerNorm(dim, eps=eps)
        self.mlp = CLIPMLP(dim, cfg["intermediate_size"], act)
        self.layer_norm2 = LayerNorm(dim, eps=eps)

    def execute(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, cfg):
        self.token_embedding = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.position_embedding = nn.Embedding(cfg["max_position_embeddings"], cfg["hidden_size"])

    def execute(self, input_ids):
        positions = jt.arange(input_ids.shape[1]).int32()
        return self.token_embedding(input_ids) + self.position_embedding(positions)[None]


class CLIPEncoder(nn.Module):
    """The layers (named as the checkpoint's ``encoder.layers.N``); ``CLIPTextTransformer`` runs them."""

    def __init__(self, cfg, act):
        self.layers = nn.ModuleList([CLIPEncoderLayer(cfg, act) for _ in range(cfg["num_hidden_layers"])])


class CLIPTextTransformer(nn.Module):
    def __init__(self, cfg, act):
        self.embeddings = CLIPTextEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg, act)
        self.final_layer_norm = LayerNorm(cfg["hidden_size"], eps=cfg.get("layer_norm_eps", 1e-5))

    def execute(self, input_ids, penultimate: bool = False):
        """last_hidden_state (after ``final_layer_norm``); with ``penultimate`` also transformers'
        ``hidden_states[-2]``, the input of the last layer (what SDXL conditions on)."""
        n = input_ids.shape[1]
        mask = jt.array(np.triu(np.full((n, n), -np.inf, dtype=np.float32), k=1))  # causal: no looking ahead
        x = self.embeddings(input_ids)
        mask = mask.cast(x.dtype)
        for layer in self.encoder.layers[:-1]:
            x = layer(x, mask)
        last = self.final_layer_norm(self.encoder.layers[-1](x, mask))
        return (last, x) if penultimate else last


class CLIPTextModel(nn.Module):
    """``CLIPTextModel(config)(input_ids (B, L) int) -> last_hidden_state (B, L, hidden)``."""

    def __init__(self, config: dict):
        act = config.get("hidden_act", "quick_gelu")
        if act not in _ACTIVATIONS:
            raise SuppressEOTError(f"text_encoder/config.json: hidden_act={act!r} is not supported by the Jittor "
                                   f"CLIP text encoder (supported: {sorted(_ACTIVATIONS)})")
        self.config = dict(config)
        self.text_model = CLIPTextTransformer(config, _ACTIVATIONS[act])

    def execute(self, input_ids, penultimate: bool = False):
        if not isinstance(input_ids, jt.Var):
            input_ids = jt.array(np.asarray(input_ids, dtype=np.int32))
        return self.text_model(input_ids, penultimate)


class CLIPTextModelWithProjection(CLIPTextModel):
    """SDXL's second encoder: also ``text_embeds``, the projected last hidden state at the end token.

    ``(input_ids (B, L)) -> (last_hidden_state, hidden_states[-2], text_embeds (B, projection_dim))``."""

    def __init__(self, config: dict):
        super().__init__(config)
        self.text_projection = nn.Linear(config["hidden_size"], config.get("projection_dim", config["hidden_size"]),
                                         bias=False)

    def execute(self, input_ids):
        ids = np.asarray(input_ids, dtype=np.int64)
        eos = self.config.get("eos_token_id", 2)
        # transformers: the highest id (the end token, in old configs with eos_token_id 2), else its first place
        ends = ids.argmax(-1) if eos == 2 else (ids == eos).argmax(-1)
        last, hidden = super().execute(jt.array(ids.astype(np.int32)), penultimate=True)
        pooled = jt.concat([last[b:b + 1, int(end)] for b, end in enumerate(ends)])
        return last, hidden, self.text_projection(pooled)
