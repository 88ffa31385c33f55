#!/usr/bin/env python3
"""Reference fixtures for pbip's timm-style ViT encoder (crates/pbip-encoder/src/vit.rs).

Environment (CPU torch is enough; nothing is downloaded besides the packages):

    python3 -m venv /tmp/pbip-timm
    /tmp/pbip-timm/bin/pip install torch==2.9.0 timm safetensors transformers
    /tmp/pbip-timm/bin/python testdata/make_vit_fixtures.py            # writes the default fixtures
    /tmp/pbip-timm/bin/python testdata/make_vit_fixtures.py --list     # what it would write

Made with timm 1.0.31, transformers 5.24.0, torch 2.9.0 (the versions are recorded in each file).

Each fixture is one safetensors file built from a randomly initialised timm `VisionTransformer`
(small widths and depths so the files stay small; see `MODELS` and `--embed-dim/--depth` to make
full-width ones):

* `timm.<name>`   the timm state dict (what `timm.create_model(...).state_dict()` names);
* `hf.<name>`     the same weights under the Hugging Face Hub names (transformers < 5 layout, what
                  checkpoints such as `owkin/phikon` contain): `ViTModel` for a plain ViT,
                  `Dinov2WithRegistersModel` for registers + LayerScale + SwiGLU (absent for models
                  without an HF architecture);
* `hf5.<name>`    the same weights as transformers >= 5 `state_dict()` names them;
* `input.<tag>`   normalised images `[B, 3, H, W]`, one tag per input size (`224`, `160`, `256x192`);
* `out.<tag>.tokens`     `model.forward_features(x)`, `[B, N, D]` (prefix tokens first);
* `out.<tag>.pooled`     `model.forward_head(tokens, pre_logits=True)` (the model's own pooling);
* `out.<tag>.pooled_avg`, `out.<tag>.pooled_token_avg` (models without `fc_norm` only): the mean of
  the patch tokens, and the class token concatenated with it (Virchow's embedding);
* `out.<tag>.pos_embed`  the position embedding timm adds for that input size, for the sizes that
  need one resampled (`resample_abs_pos_embed`, bicubic with antialias, as
  `VisionTransformer._pos_embed` calls it).

`__metadata__` holds `vit` (the architecture as JSON, field names of `VitConfig` in vit.rs),
`inputs` (JSON list of tags), `hf_prefixes` (JSON object prefix -> description), `timm_model`
(the timm constructor arguments as JSON) and the library versions.

Weights and inputs are rounded to float16 before the reference forward runs, and the large tensors
are stored as F16 (exactly the values the reference used); outputs are F32.

The HF names are checked here, not assumed: the HF model is built from the `hf5.` tensors and its
`last_hidden_state` must match timm's tokens at the native size; the `hf.` tensors are loaded with
`from_pretrained` (transformers' own legacy-name conversion) and must match too.
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

import timm
from timm.layers import SwiGLUPacked, resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

try:
    import transformers
    from transformers import (
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
        ViTConfig,
        ViTModel,
    )
except ImportError:  # HF names are then skipped (and recorded as absent)
    transformers = None

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "crates", "pbip-encoder", "tests", "fixtures")

# name -> (timm kwargs, HF architecture or None, seed, input sizes [(batch, h, w)])
MODELS = {
    # ViT-S/16 family member with 4 registers, LayerScale, SwiGLU-packed MLP (the H-optimus-0 /
    # Virchow recipe, H-optimus-0's mlp_ratio), no_embed_class as timm's reg4 models; narrow
    # (96 wide, 3 heads of 32) to keep the file small.
    "vit-s16-reg4-ls-swiglu": (
        dict(
            img_size=224, patch_size=16, embed_dim=96, depth=2, num_heads=3,
            mlp_ratio=5.33334, mlp_layer="swiglu_packed", init_values=1e-5, reg_tokens=4,
            no_embed_class=True, class_token=True, qkv_bias=True, global_pool="token",
        ),
        "Dinov2WithRegistersModel",
        1,
        [(2, 224, 224), (1, 160, 160), (1, 256, 192)],
    ),
    # ViT-B/16 layout (class token, position embedding over it, GELU MLP, no LayerScale, no
    # registers), narrow: 96 wide, 2 heads of 48.
    "vit-b16-plain": (
        dict(
            img_size=224, patch_size=16, embed_dim=96, depth=2, num_heads=2, mlp_ratio=4.0,
            mlp_layer="gelu", init_values=None, reg_tokens=0, no_embed_class=False,
            class_token=True, qkv_bias=True, global_pool="token",
        ),
        "ViTModel",
        2,
        [(2, 224, 224), (1, 160, 160), (1, 256, 192)],
    ),
    # Patch 14, no class token, average pooling with fc_norm (final norm after pooling), no qkv
    # bias: timm only (no HF architecture with this layout).
    "vit-p14-gap": (
        dict(
            img_size=224, patch_size=14, embed_dim=96, depth=2, num_heads=2, mlp_ratio=4.0,
            mlp_layer="gelu", init_values=None, reg_tokens=0, no_embed_class=False,
            class_token=False, qkv_bias=False, global_pool="avg",
        ),
        None,
        3,
        [(2, 224, 224), (1, 168, 168), (1, 196, 252)],
    ),
}

EPS = 1e-6  # timm's ViT LayerNorm epsilon


def f16(t):
    """Rounds to float16 values (kept as float32)."""
    return t.to(torch.float16).to(torch.float32)


def build_timm(kw):
    kw = dict(kw)
    mlp = kw.pop("mlp_layer")
    extra = {}
    if mlp == "swiglu_packed":
        extra = dict(mlp_layer=SwiGLUPacked, act_layer=nn.SiLU)
    elif mlp != "gelu":
        raise ValueError(mlp)
    model = VisionTransformer(
        num_classes=0, dynamic_img_size=True, fc_norm=None, final_norm=True, **kw, **extra
    )
    return model.eval()


@torch.no_grad()
def randomise(model, seed):
    """Replaces timm's init by O(1) random values so that every part matters (LayerScale 1e-5,
    zero biases or unit norms would hide mistakes), all float16-representable."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        shape = p.shape
        r = torch.randn(shape, generator=g)
        if name.endswith("gamma"):  # LayerScale
            v = 0.5 + 0.5 * torch.rand(shape, generator=g)
        elif "norm" in name and name.endswith("weight"):
            v = 1.0 + 0.2 * r
        elif name.endswith("bias"):
            v = 0.1 * r
        elif name in ("cls_token", "reg_token", "pos_embed"):
            v = 0.5 * r
        elif p.dim() >= 2:  # linear / conv weight: fan-in scaling (conv: C*k*k)
            fan_in = int(np.prod(shape[1:]))
            v = r / np.sqrt(fan_in)
        else:
            raise ValueError(f"unhandled parameter {name} {tuple(shape)}")
        p.copy_(f16(v))


def vit_json(kw):
    """The architecture in pbip's `VitConfig` field names."""
    return {
        "embed_dim": kw["embed_dim"],
        "depth": kw["depth"],
        "num_heads": kw["num_heads"],
        "patch_size": kw["patch_size"],
        "img_size": kw["img_size"],
        "in_chans": 3,
        "mlp_ratio": kw["mlp_ratio"],
        "mlp": kw["mlp_layer"],
        "class_token": kw["class_token"],
        "num_reg_tokens": kw["reg_tokens"],
        "no_embed_class": kw["no_embed_class"],
        "init_values": kw["init_values"],
        "qkv_bias": kw["qkv_bias"],
        "layer_norm_eps": EPS,
        "global_pool": kw["global_pool"],
        "final_norm": True,
        "fc_norm": None,
        "pos_embed_interp": "bicubic_antialias",
    }


# ---------------------------------------------------------------- HF names


def split_qkv(sd, p, d):
    w = sd[f"{p}.attn.qkv.weight"]
    out = {"query.weight": w[:d], "key.weight": w[d : 2 * d], "value.weight": w[2 * d :]}
    b = sd.get(f"{p}.attn.qkv.bias")
    if b is not None:
        out.update({"query.bias": b[:d], "key.bias": b[d : 2 * d], "value.bias": b[2 * d :]})
    return out


def hf_embeddings(sd, kw, g):
    """Common embedding tensors (HF has a position for the class token, none for registers)."""
    out = {
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
    }
    pos = sd["pos_embed"]
    cls = sd["cls_token"]
    if kw["no_embed_class"]:
        # timm adds no position to the class token; HF does. Split the class token into an HF
        # token and a class position so that their sum is timm's token (a non-trivial fold).
        cls_pos = f16(0.5 * torch.randn(cls.shape, generator=g))
        cls_hf = f16(cls - cls_pos)
        sd["cls_token"] = cls_hf + cls_pos  # timm's token is exactly this float32 sum
        out["embeddings.cls_token"] = cls_hf
        out["embeddings.position_embeddings"] = torch.cat([cls_pos, pos], dim=1)
    else:
        out["embeddings.cls_token"] = cls
        out["embeddings.position_embeddings"] = pos
    if kw["reg_tokens"]:
        out["embeddings.register_tokens"] = sd["reg_token"]
    return out


def hf_vit_names(sd, kw, g):
    """timm -> HF ViTModel: (Hub/transformers<5 names, transformers>=5 names)."""
    d = kw["embed_dim"]
    old = hf_embeddings(sd, kw, g)
    new = dict(old)
    for i in range(kw["depth"]):
        p = f"blocks.{i}"
        o = f"encoder.layer.{i}"
        n = f"layers.{i}"
        qkv = split_qkv(sd, p, d)
        for k, v in qkv.items():
            old[f"{o}.attention.attention.{k}"] = v
            proj = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}[k.split(".")[0]]
            new[f"{n}.attention.{proj}.{k.split('.')[1]}"] = v
        for s in ("weight", "bias"):
            old[f"{o}.attention.output.dense.{s}"] = sd[f"{p}.attn.proj.{s}"]
            new[f"{n}.attention.o_proj.{s}"] = sd[f"{p}.attn.proj.{s}"]
            old[f"{o}.layernorm_before.{s}"] = sd[f"{p}.norm1.{s}"]
            new[f"{n}.layernorm_before.{s}"] = sd[f"{p}.norm1.{s}"]
            old[f"{o}.layernorm_after.{s}"] = sd[f"{p}.norm2.{s}"]
            new[f"{n}.layernorm_after.{s}"] = sd[f"{p}.norm2.{s}"]
            old[f"{o}.intermediate.dense.{s}"] = sd[f"{p}.mlp.fc1.{s}"]
            new[f"{n}.mlp.fc1.{s}"] = sd[f"{p}.mlp.fc1.{s}"]
            old[f"{o}.output.dense.{s}"] = sd[f"{p}.mlp.fc2.{s}"]
            new[f"{n}.mlp.fc2.{s}"] = sd[f"{p}.mlp.fc2.{s}"]
    for s in ("weight", "bias"):
        old[f"layernorm.{s}"] = sd[f"norm.{s}"]
        new[f"layernorm.{s}"] = sd[f"norm.{s}"]
    # the Hub checkpoints carry ViTModel's pooler (unused by the encoders): include a random one
    old["pooler.dense.weight"] = f16(torch.randn(d, d, generator=g) / np.sqrt(d))
    old["pooler.dense.bias"] = f16(0.1 * torch.randn(d, generator=g))
    return old, new


def hf_dinov2_reg_names(sd, kw, g):
    """timm -> HF Dinov2WithRegistersModel: (Hub/transformers<5 names, transformers>=5 names)."""
    d = kw["embed_dim"]
    old = hf_embeddings(sd, kw, g)
    # Dinov2's mask token is unused at inference; present in Hub checkpoints
    old["embeddings.mask_token"] = f16(torch.randn(1, d, generator=g))
    new = dict(old)
    for i in range(kw["depth"]):
        p = f"blocks.{i}"
        o = f"encoder.layer.{i}"
        qkv = split_qkv(sd, p, d)
        for k, v in qkv.items():
            old[f"{o}.attention.attention.{k}"] = v
            proj = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}[k.split(".")[0]]
            new[f"{o}.attention.{proj}.{k.split('.')[1]}"] = v
        for s in ("weight", "bias"):
            old[f"{o}.attention.output.dense.{s}"] = sd[f"{p}.attn.proj.{s}"]
            new[f"{o}.attention.o_proj.{s}"] = sd[f"{p}.attn.proj.{s}"]
            for nm in ("norm1", "norm2"):
                old[f"{o}.{nm}.{s}"] = sd[f"{p}.{nm}.{s}"]
                new[f"{o}.{nm}.{s}"] = sd[f"{p}.{nm}.{s}"]
            fc1 = sd[f"{p}.mlp.fc1.{s}"]
            old[f"{o}.mlp.weights_in.{s}"] = fc1
            half = fc1.shape[0] // 2
            new[f"{o}.mlp.gate_proj.{s}"] = fc1[:half]
            new[f"{o}.mlp.up_proj.{s}"] = fc1[half:]
            old[f"{o}.mlp.weights_out.{s}"] = sd[f"{p}.mlp.fc2.{s}"]
            new[f"{o}.mlp.down_proj.{s}"] = sd[f"{p}.mlp.fc2.{s}"]
        for j in (1, 2):
            old[f"{o}.layer_scale{j}.lambda1"] = sd[f"{p}.ls{j}.gamma"]
            new[f"{o}.layer_scale{j}.lambda1"] = sd[f"{p}.ls{j}.gamma"]
    for s in ("weight", "bias"):
        old[f"layernorm.{s}"] = sd[f"norm.{s}"]
        new[f"layernorm.{s}"] = sd[f"norm.{s}"]
    return old, new


def hf_config(arch, kw):
    d = kw["embed_dim"]
    common = dict(
        hidden_size=d, num_hidden_layers=kw["depth"], num_attention_heads=kw["num_heads"],
        image_size=kw["img_size"], patch_size=kw["patch_size"], num_channels=3,
        layer_norm_eps=EPS, qkv_bias=kw["qkv_bias"], hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    if arch == "ViTModel":
        return ViTConfig(intermediate_size=int(d * kw["mlp_ratio"]), hidden_act="gelu", **common)
    # Dinov2 SwiGLU width: hidden = int(d * mlp_ratio); h = (int(hidden * 2 / 3) + 7) // 8 * 8,
    # weights_in = 2h. Find the HF mlp_ratio giving timm's fc1 width.
    fc1 = int(d * kw["mlp_ratio"])
    for r in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8):
        h = (int(int(d * r) * 2 / 3) + 7) // 8 * 8
        if 2 * h == fc1:
            break
    else:
        raise ValueError(f"no Dinov2 mlp_ratio gives a SwiGLU width of {fc1}")
    return Dinov2WithRegistersConfig(
        mlp_ratio=r, use_swiglu_ffn=True, num_register_tokens=kw["reg_tokens"],
        layerscale_value=1.0, drop_path_rate=0.0, **common,
    )


@torch.no_grad()
def check_hf(arch, kw, old, new, x, tokens):
    """Runs the HF model from both name sets; its tokens must equal timm's."""
    cfg = hf_config(arch, kw)
    cls = ViTModel if arch == "ViTModel" else Dinov2WithRegistersModel
    extra = {"add_pooling_layer": False} if arch == "ViTModel" else {}
    m = cls(cfg, **extra).eval()
    missing, unexpected = m.load_state_dict(new, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{arch}: transformers>=5 names: missing {missing}, unexpected {unexpected}")
    err = (m(pixel_values=x).last_hidden_state - tokens).abs().max().item()
    if err > 1e-4:
        raise RuntimeError(f"{arch} (transformers>=5 names) differs from timm by {err}")
    # legacy (Hub) names through transformers' own conversion
    with tempfile.TemporaryDirectory() as tmp:
        cfg.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in old.items()}, os.path.join(tmp, "model.safetensors"))
        m2 = cls.from_pretrained(tmp, **extra).eval()
        sd2 = m2.state_dict()
        for k, v in new.items():
            if k in sd2 and not torch.equal(sd2[k], v):
                raise RuntimeError(f"{arch}: Hub name conversion changed {k}")
        err2 = (m2(pixel_values=x).last_hidden_state - tokens).abs().max().item()
    if err2 > 1e-4:
        raise RuntimeError(f"{arch} (Hub names) differs from timm by {err2}")
    return max(err, err2)


# ---------------------------------------------------------------- main


@torch.no_grad()
def make(name, kw, arch, seed, sizes, out_dir):
    torch.manual_seed(seed)
    model = build_timm(kw)
    randomise(model, seed)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(seed + 1000)

    hf_old = hf_new = None
    hf_note = {}
    if arch is not None and transformers is not None:
        fn = hf_vit_names if arch == "ViTModel" else hf_dinov2_reg_names
        hf_old, hf_new = fn(sd, kw, g)  # may adjust sd["cls_token"] (see hf_embeddings)
        model.load_state_dict(sd)
        hf_note = {
            "hf.": f"{arch}, Hugging Face Hub / transformers<5 names",
            "hf5.": f"{arch}, transformers>=5 state_dict names",
        }
    elif arch is not None:
        print(f"{name}: transformers not installed, HF names skipped", file=sys.stderr)

    tensors = {}
    for k, v in sd.items():
        tensors[f"timm.{k}"] = v
    for pre, m in (("hf.", hf_old), ("hf5.", hf_new)):
        if m is not None:
            for k, v in m.items():
                tensors[f"{pre}{k}"] = v

    gi = torch.Generator().manual_seed(seed + 2000)
    tags = []
    npt = model.num_prefix_tokens
    use_fc_norm = not isinstance(model.fc_norm, nn.Identity)
    hf_err = None
    for b, h, w in sizes:
        tag = f"{h}" if h == w else f"{h}x{w}"
        tags.append(tag)
        x = f16(torch.randn(b, 3, h, w, generator=gi))
        tokens = model.forward_features(x)
        pooled = model.forward_head(tokens, pre_logits=True)
        assert torch.allclose(pooled, model(x), atol=0, rtol=0)
        gh, gw = h // kw["patch_size"], w // kw["patch_size"]
        pos = resample_abs_pos_embed(
            model.pos_embed, new_size=(gh, gw), old_size=model.patch_embed.grid_size,
            num_prefix_tokens=0 if model.no_embed_class else npt,
        )
        tensors[f"input.{tag}"] = x
        tensors[f"out.{tag}.tokens"] = tokens
        tensors[f"out.{tag}.pooled"] = pooled
        if (gh, gw) != tuple(model.patch_embed.grid_size):  # else it is timm.pos_embed itself
            tensors[f"out.{tag}.pos_embed"] = pos
        if not use_fc_norm:
            avg = tokens[:, npt:].mean(dim=1)
            tensors[f"out.{tag}.pooled_avg"] = avg
            if model.cls_token is not None:
                tensors[f"out.{tag}.pooled_token_avg"] = torch.cat([tokens[:, 0], avg], dim=-1)
        if hf_old is not None and (h, w) == (kw["img_size"], kw["img_size"]):
            hf_err = check_hf(arch, kw, hf_old, hf_new, x, tokens)

    # the large tensors (weights, inputs) as F16: exactly the values used above
    stored = {}
    for k, v in tensors.items():
        v = v.detach().clone().contiguous()
        big = v.numel() >= 4096 and not k.startswith("out.")
        if big:
            assert torch.equal(f16(v), v), k
        stored[k] = v.to(torch.float16) if big else v.to(torch.float32)

    timm_args = dict(kw, num_classes=0, dynamic_img_size=True)
    if kw["mlp_layer"] == "swiglu_packed":
        timm_args.update(mlp_layer="SwiGLUPacked", act_layer="SiLU")
    meta = {
        "vit": json.dumps(vit_json(kw)),
        "inputs": json.dumps(tags),
        "hf_prefixes": json.dumps(hf_note),
        "hf_arch": arch or "",
        "timm_model": json.dumps(timm_args),
        "seed": str(seed),
        "timm_version": timm.__version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__ if transformers else "",
        "made_by": "testdata/make_vit_fixtures.py",
    }
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.safetensors")
    save_file(stored, path, metadata=meta)
    size = os.path.getsize(path)
    extra = f", HF tokens max |diff| {hf_err:.2e}" if hf_err is not None else ""
    print(f"wrote {path} ({size / 1e6:.2f} MB, inputs {tags}{extra})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder")
    ap.add_argument("--only", nargs="*", help="fixture names to make (default: all)")
    ap.add_argument("--embed-dim", type=int, help="override the width (e.g. 768 for a real ViT-B)")
    ap.add_argument("--num-heads", type=int, help="override the head count")
    ap.add_argument("--depth", type=int, help="override the depth")
    ap.add_argument("--suffix", default="", help="appended to the file names (--suffix=-w768)")
    ap.add_argument("--list", action="store_true", help="list the fixtures and exit")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    for name, (kw, arch, seed, sizes) in MODELS.items():
        if args.only and name not in args.only:
            continue
        kw = dict(kw)
        for k in ("embed_dim", "num_heads", "depth"):
            if getattr(args, k) is not None:
                kw[k] = getattr(args, k)
        if args.list:
            print(name, arch, seed, sizes, json.dumps(kw))
            continue
        make(name + args.suffix, kw, arch, seed, sizes, args.out)


if __name__ == "__main__":
    main()
