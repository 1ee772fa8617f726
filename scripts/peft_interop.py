#!/usr/bin/env python3
"""PyTorch's side of tests/peft_interop.rs: the real transformers / timm / peft.

  load   runs the Python lines of an adapter folder's README (exactly as written there,
         from the run folder) on the given pixels, checks that PEFT really put every
         tensor of the adapter file into the model, and writes the model's output.
  train  trains a PEFT LoRA for a few seeded steps on a fixture in PyTorch, saves it with
         save_pretrained, and writes the adapted model's outputs on the fixture's inputs.
  versions  prints the versions in use.

Never used by the pipeline itself.
"""
import argparse
import json
import os
import re
import sys
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402


def versions():
    import peft
    import transformers

    out = {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__, "peft": peft.__version__}
    try:
        import timm

        out["timm"] = timm.__version__
    except ImportError:
        pass
    return out


def readme_code(path):
    text = open(path, encoding="utf-8").read()
    m = re.search(r"```python\n(.*?)```", text, re.S)
    if not m:
        sys.exit(f"{path}: no python block")
    return m.group(1)


def file_key_to_model_key(key, to_save):
    """adapter file key -> PeftModel.state_dict() key (adapter name `default`)."""
    for ab in ("lora_A", "lora_B"):
        if f".{ab}." in key:
            return key.replace(f".{ab}.", f".{ab}.default.")
    module, param = key.rsplit(".", 1)
    return f"{module}.modules_to_save.default.{param}"


def check_loaded(model, adapter_dir):
    """Every tensor of the adapter file must be in the live model, with its values."""
    tensors = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    cfg = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    sd = model.state_dict()
    for key, value in tensors.items():
        mk = file_key_to_model_key(key, cfg.get("modules_to_save") or [])
        if mk not in sd:
            sys.exit(f"PEFT did not load `{key}` (no `{mk}` in the model): the adapter names a module the model lacks")
        if sd[mk].shape != value.shape or not torch.equal(sd[mk].float(), value.float()):
            sys.exit(f"`{mk}` in the model differs from `{key}` in the file")
    n_lora = sum(1 for k in sd if ".lora_A.default." in k)
    n_file = sum(1 for k in tensors if ".lora_A." in k)
    if n_lora != n_file:
        sys.exit(f"the model has {n_lora} LoRA layers, the adapter file {n_file}")
    return n_file


def cmd_load(a):
    pixels = load_file(a.pixels)["pixel_values"]
    out_path = os.path.abspath(a.out)
    code = readme_code(os.path.join(a.run, "adapters", a.folder, "README.md"))
    os.chdir(a.run)
    ns = {"pixels": pixels}
    exec(compile(code, f"{a.folder}/README.md", "exec"), ns)
    model = ns["model"]
    n = check_loaded(model, os.path.join("adapters", a.folder))
    out = ns["logits"] if "logits" in ns else ns["features"]
    save_file({"output": out.detach().float().contiguous()}, out_path)
    print(json.dumps({"lora_layers": n, "shape": list(out.shape), **versions()}))


def build(kind, base, num_labels, swiglu):
    if kind == "timm":
        import timm

        extra = dict(mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU) if swiglu else {}
        return timm.create_model(f"local-dir:{base}", pretrained=True, num_classes=num_labels, **extra)
    from transformers import AutoModel, AutoModelForImageClassification

    if kind == "classifier":
        return AutoModelForImageClassification.from_pretrained(base, num_labels=num_labels, ignore_mismatched_sizes=True)
    return AutoModel.from_pretrained(base)


def targets(kind, variant):
    if kind == "timm":
        if variant == "conv":
            return r"(blocks\.\d+\.attn\.qkv|patch_embed\.proj)"
        return r"blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
    import transformers

    if transformers.__version__.startswith("4."):
        # Not "dense": that would also adapt the ViT pooler, which the converted base lacks.
        names = ["query", "key", "value", "output.dense", "intermediate.dense"]
    else:
        names = ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2", "gate_proj", "up_proj", "down_proj"]
    if variant == "conv":
        names = names[:1] + ["projection"]
    return names


def cmd_train(a):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(a.seed)
    model = build(a.kind, a.base, a.num_labels, a.swiglu)
    head = "head" if a.kind == "timm" else "classifier"
    cfg = LoraConfig(
        r=a.r,
        lora_alpha=a.alpha,
        target_modules=targets(a.kind, a.variant),
        modules_to_save=[head] if a.kind != "backbone" else None,
        use_rslora=a.rslora,
        use_dora=a.variant == "dora",
        init_lora_weights=True,
    )
    pm = get_peft_model(model, cfg)
    refs = load_file(os.path.join(a.base, "reference.safetensors"))
    x0 = refs["pixel_values"]
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=a.lr)
    g = torch.Generator().manual_seed(a.seed)
    pm.train()
    for _ in range(a.steps):
        x = torch.randn(x0.shape, generator=g)
        if a.kind == "backbone":
            out = pm(pixel_values=x).last_hidden_state
            loss = (out - 0.5).pow(2).mean()
        else:
            logits = pm(x) if a.kind == "timm" else pm(pixel_values=x).logits
            y = torch.randint(0, a.num_labels, (x.shape[0],), generator=g)
            loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pm.eval()
    with torch.no_grad():
        if a.kind == "backbone":
            out = pm(pixel_values=x0).last_hidden_state
        elif a.kind == "timm":
            out = pm(x0)
        else:
            out = pm(pixel_values=x0).logits
    pm.save_pretrained(a.out, safe_serialization=a.variant != "bin")
    save_file({"pixel_values": x0.contiguous(), "output": out.float().contiguous()}, a.outputs)
    print(json.dumps({"loss": float(loss), **versions()}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    ld = sub.add_parser("load")
    ld.add_argument("--run", required=True)
    ld.add_argument("--folder", required=True)
    ld.add_argument("--pixels", required=True)
    ld.add_argument("--out", required=True)
    tr = sub.add_parser("train")
    tr.add_argument("--kind", choices=["classifier", "backbone", "timm"], required=True)
    tr.add_argument("--base", required=True)
    tr.add_argument("--out", required=True)
    tr.add_argument("--outputs", required=True)
    tr.add_argument("--num-labels", type=int, default=3)
    tr.add_argument("--swiglu", action="store_true")
    tr.add_argument("--rslora", action="store_true")
    tr.add_argument("--variant", choices=["plain", "dora", "bin", "conv"], default="plain")
    tr.add_argument("--r", type=int, default=4)
    tr.add_argument("--alpha", type=float, default=8.0)
    tr.add_argument("--lr", type=float, default=2e-2)
    tr.add_argument("--steps", type=int, default=4)
    tr.add_argument("--seed", type=int, default=0)
    sub.add_parser("versions")
    a = p.parse_args()
    if a.cmd == "load":
        cmd_load(a)
    elif a.cmd == "train":
        cmd_train(a)
    else:
        print(json.dumps(versions()))


if __name__ == "__main__":
    main()
