#!/usr/bin/env python3
"""Writes the tiny DINOv2 classifier fixtures (tests/fixtures/hf-dinov2-classifier and
hf-dinov2-registers-classifier): a transformers `Dinov2ForImageClassification` /
`Dinov2WithRegistersForImageClassification` with synthetic weights, saved with
`save_pretrained`, plus a `reference.safetensors` of PyTorch outputs.

Their head reads concat(class token, mean of the patch tokens) after the final
LayerNorm (width 2 x hidden); in the registers model the mean leaves the registers out.
The `pooled` reference is exactly that vector, recomputed here from `last_hidden_state`
and checked against the logits transformers itself returns.

Usage: HF_HUB_OFFLINE=1 python3 scripts/make_dinov2_classifier_fixture.py [FIXTURES_DIR]
(default tests/fixtures). Needs torch, transformers and safetensors; no network.
"""

import json
import math
import os
import sys

import torch
import transformers
from safetensors.torch import save_file

LABELS = ["tumor", "stroma", "normal"]
BATCH = 3


def base_config(registers):
    """Like tests/fixtures/hf-dinov2/config.json: hidden 32, 2 layers, 2 heads, patch 7."""
    kw = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=4,
        patch_size=7,
        image_size=28,
        num_channels=3,
        layer_norm_eps=1e-6,
        layerscale_value=1.0,
        qkv_bias=True,
        hidden_act="gelu",
        use_swiglu_ffn=False,
        num_labels=len(LABELS),
        id2label={i: n for i, n in enumerate(LABELS)},
        label2id={n: i for i, n in enumerate(LABELS)},
    )
    if registers:
        return transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **kw)
    return transformers.Dinov2Config(**kw)


def perturb(model, seed):
    """The fixtures README's recipe, so LayerNorms, biases and layer scale all matter:
    LayerNorm weights 1 +- 0.1, biases N(0, 0.1), layer scale U(0.1, 1), linear/conv
    weights unit-gain noise, tokens and positions N(0, 0.5); then the whole embedding
    stage times 0.03 so the first LayerNorm sees tiny row variance and eps matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "lambda1" in name:
                p.copy_(0.1 + 0.9 * torch.rand(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif p.dim() == 1:  # LayerNorm weights
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("weight"):
                fan_in = math.prod(p.shape[1:])
                p.copy_(noise / math.sqrt(fan_in))
            else:  # cls / mask / register tokens, position embeddings
                p.copy_(0.5 * noise)
            if ".embeddings." in f".{name}":
                p.mul_(0.03)


def preprocessor(out):
    """BitImageProcessor as the public DINOv2 repos ship it (same as hf-dinov2's)."""
    cfg = {
        "crop_size": {"height": 28, "width": 28},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_processor_type": "BitImageProcessor",
        "image_std": [0.229, 0.224, 0.225],
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": 32},
    }
    with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def make(root, registers, seed):
    name = "hf-dinov2-registers-classifier" if registers else "hf-dinov2-classifier"
    out = os.path.join(root, name)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(seed)
    cls = (
        transformers.Dinov2WithRegistersForImageClassification
        if registers
        else transformers.Dinov2ForImageClassification
    )
    model = cls(base_config(registers)).eval()
    perturb(model, seed)
    model.save_pretrained(out)
    preprocessor(out)

    pixels = torch.randn(BATCH, 3, 28, 28, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
        backbone = model.dinov2_with_registers if registers else model.dinov2
        hidden = backbone(pixel_values=pixels).last_hidden_state
    # The head's input, written out independently of transformers' forward.
    prefix = 1 + (model.config.num_register_tokens if registers else 0)
    pooled = torch.cat([hidden[:, 0], hidden[:, prefix:].mean(dim=1)], dim=1)
    recomputed = model.classifier(pooled)
    err = (recomputed - logits).abs().max().item()
    assert err < 1e-6, f"{name}: pooled does not reproduce the logits ({err})"
    # Registers really are left out of the mean: including them changes the logits.
    if registers:
        wrong = torch.cat([hidden[:, 0], hidden[:, 1:].mean(dim=1)], dim=1)
        assert (model.classifier(wrong) - logits).abs().max().item() > 1e-3
    assert pooled.shape == (BATCH, 2 * model.config.hidden_size)

    # Reloading must give the same outputs bit for bit.
    again = cls.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.equal(again(pixel_values=pixels).logits, logits), f"{name}: reload differs"

    refs = {
        "pixel_values": pixels,
        "last_hidden_state": hidden,
        "pooled": pooled,
        "logits": logits,
    }
    refs = {k: v.contiguous().float() for k, v in refs.items()}
    save_file(refs, os.path.join(out, "reference.safetensors"), metadata={"format": "pt"})
    # safetensors writes 0600 files; fixtures are plain repository files.
    for f in os.listdir(out):
        os.chmod(os.path.join(out, f), 0o644)
    print(f"{name}: T={hidden.shape[1]} D={hidden.shape[2]} pooled {tuple(pooled.shape)} "
          f"logits {tuple(logits.shape)}")


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    make(root, registers=False, seed=20)
    make(root, registers=True, seed=21)


if __name__ == "__main__":
    main()
