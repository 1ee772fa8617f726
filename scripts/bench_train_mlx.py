#!/usr/bin/env python3
"""Reference training step in Python MLX, for examples/bench_train.rs to compare with.

    python3 scripts/bench_train_mlx.py --hidden 192 --depth 12 --heads 3 --batch 8 \
        --size 224 --patch 16 --rank 8 --mode lora --steps 5 --warmup 2

A minimal pre-norm ViT (fused qkv, exact GELU, class-token head) with LoRA on every
linear layer of the blocks (or full fine-tuning), AdamW, one `mx.eval` per step: the
loop a user writes with Python MLX. Prints one JSON line: ms per step, images/s, peak RSS.

Several configurations in one process, one JSON line each (the same syntax and keys as
scripts/bench_train_torch.py, so the two can be compared on one GPU machine):

    python3 scripts/bench_train_mlx.py --device gpu --steps 10 \
        --configs vit-ti16:192:12:3:64:lora:float32,vit-b16:768:12:12:256:full:bfloat16

Each config is name:hidden:depth:heads:batch:mode:precision; --size, --patch, --rank,
--alpha, --classes, --warmup and --steps apply to all of them.

--precision bfloat16 is mixed precision: the model and the optimizer hold float32 master
weights, the forward and backward run in bfloat16, the loss is taken in float32.
"""
import argparse
import gc
import json
import resource
import time

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

# Mixed precision casts each weight where it is used, to the dtype of the activation
# it meets, so the model never holds anything but its float32 masters: the optimizer
# updates them untouched, and since the backward of `astype` casts the gradient back,
# gradients arrive float32. Casting the input is then enough to run the whole network
# in bfloat16. In float32 every cast is a no-op (MLX returns the array itself), so that
# path is the plain MLX model.


class Linear(nn.Linear):
    def __call__(self, x):
        return mx.addmm(self.bias.astype(x.dtype), x, self.weight.astype(x.dtype).T)


class LayerNorm(nn.LayerNorm):
    def __call__(self, x):
        return mx.fast.layer_norm(x, self.weight.astype(x.dtype), self.bias.astype(x.dtype), self.eps)


class LoRALinear(nn.Module):
    def __init__(self, din, dout, rank, scale):
        super().__init__()
        self.linear = Linear(din, dout)
        self.rank = rank
        if rank:
            bound = 1.0 / din ** 0.5
            self.lora_a = mx.random.uniform(-bound, bound, (rank, din))
            self.lora_b = mx.zeros((dout, rank))
            self.scale = scale

    def __call__(self, x):
        y = self.linear(x)
        if self.rank:
            a, b = self.lora_a.astype(x.dtype), self.lora_b.astype(x.dtype)
            # A Python float scale stays weakly typed: it does not promote bf16 to f32.
            y = y + self.scale * ((x @ a.T) @ b.T)
        return y


class Block(nn.Module):
    def __init__(self, d, heads, rank, scale):
        super().__init__()
        self.heads = heads
        self.norm1 = LayerNorm(d, eps=1e-6)
        self.qkv = LoRALinear(d, 3 * d, rank, scale)
        self.proj = LoRALinear(d, d, rank, scale)
        self.norm2 = LayerNorm(d, eps=1e-6)
        self.fc1 = LoRALinear(d, 4 * d, rank, scale)
        self.fc2 = LoRALinear(4 * d, d, rank, scale)

    def __call__(self, x):
        b, t, d = x.shape
        h = self.heads
        qkv = self.qkv(self.norm1(x)).reshape(b, t, 3, h, d // h).transpose(2, 0, 3, 1, 4)
        o = mx.fast.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=(d // h) ** -0.5)
        x = x + self.proj(o.transpose(0, 2, 1, 3).reshape(b, t, d))
        return x + self.fc2(nn.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, a):
        super().__init__()
        d, rank = a.hidden, (a.rank if a.mode == "lora" else 0)
        self.patch = a.patch
        # nn.utils.checkpoint passes the module's parameters through the checkpointed
        # function, so their gradients survive (bare mx.checkpoint(module) would lose them).
        self.checkpoint = nn.utils.checkpoint if a.checkpoint else None
        self.patch_embed = Linear(3 * a.patch * a.patch, d)
        n = (a.size // a.patch) ** 2
        self.cls_token = mx.random.normal((1, 1, d)) * 0.02
        self.pos_embed = mx.random.normal((1, n + 1, d)) * 0.02
        self.blocks = [Block(d, a.heads, rank, a.alpha / max(a.rank, 1)) for _ in range(a.depth)]
        self.norm = LayerNorm(d, eps=1e-6)
        self.head = Linear(d, a.classes)

    def __call__(self, x):
        b, c, hh, ww = x.shape
        p = self.patch
        x = x.reshape(b, c, hh // p, p, ww // p, p).transpose(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
        x = self.patch_embed(x)
        cls = mx.broadcast_to(self.cls_token.astype(x.dtype), (b, 1, x.shape[-1]))
        x = mx.concatenate([cls, x], axis=1) + self.pos_embed.astype(x.dtype)
        for blk in self.blocks:
            x = self.checkpoint(blk)(x) if self.checkpoint else blk(x)
        return self.head(self.norm(x)[:, 0])


DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16}


def time_steps(a):
    """Builds the model for the config in `a`, trains it on one random batch and
    returns the mean milliseconds of a step, warm-up steps left out."""
    mx.random.seed(0)
    model = ViT(a)
    if a.mode == "lora":
        model.freeze()
        for blk in model.blocks:
            for lin in (blk.qkv, blk.proj, blk.fc1, blk.fc2):
                lin.unfreeze(keys=["lora_a", "lora_b"], recurse=False)
        model.head.unfreeze()
    opt = optim.AdamW(learning_rate=1e-3, weight_decay=0.01)
    x = mx.random.normal((a.batch, 3, a.size, a.size))
    y = mx.random.randint(0, a.classes, (a.batch,))
    dtype = DTYPES[a.precision]

    def loss_fn(m, x, y):
        # The cast sits inside the differentiated function, like the weights' casts,
        # so that a bf16 step is entirely this function's business. The loss is taken
        # in float32: log-softmax over bf16 logits loses most of its precision.
        logits = m(x.astype(dtype)).astype(mx.float32)
        return nn.losses.cross_entropy(logits, y, reduction="mean")

    vg = nn.value_and_grad(model, loss_fn)
    times = []
    for i in range(a.warmup + a.steps):
        t = time.perf_counter()
        loss, grads = vg(model, x, y)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state, loss)
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    return 1000 * sum(times) / len(times)


def parse_configs(spec):
    configs = []
    for item in spec.split(","):
        name, hidden, depth, heads, batch, mode, precision = item.split(":")
        if mode not in ("lora", "full") or precision not in DTYPES:
            raise SystemExit(f"bad config {item!r}: mode is lora|full, precision float32|bfloat16")
        configs.append(dict(name=name, hidden=int(hidden), depth=int(depth), heads=int(heads),
                            batch=int(batch), mode=mode, precision=precision))
    return configs


def run_configs(a):
    for cfg in parse_configs(a.configs):
        rec = {"framework": "python-mlx", "name": cfg["name"], "batch": cfg["batch"],
               "mode": cfg["mode"], "precision": cfg["precision"], "device": a.device}
        try:
            ms = time_steps(argparse.Namespace(**{**vars(a), **cfg}))
            rec.update(ms_per_step=ms, images_per_second=cfg["batch"] * 1000 / ms)
        except Exception as e:  # out of memory, say: report it and go on with the next
            rec["error"] = f"{type(e).__name__}: {e}"
        rec["mlx_version"] = mx.__version__
        # The model, optimizer state and graph died with time_steps' frame; hand their
        # buffers back so the next config starts from the same empty pool.
        gc.collect()
        if hasattr(mx, "clear_cache"):  # older MLX only has mx.metal.clear_cache
            mx.clear_cache()
        print(json.dumps(rec), flush=True)


def main():
    ap = argparse.ArgumentParser()
    for k, v in dict(hidden=192, depth=12, heads=3, batch=8, size=224, patch=16, rank=8,
                     classes=10, steps=5, warmup=2).items():
        ap.add_argument(f"--{k}", type=int, default=v)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--mode", default="lora", choices=["lora", "full"])
    ap.add_argument("--precision", default="float32", choices=list(DTYPES))
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    # Gradient checkpointing per block, MLX's module-aware way.
    ap.add_argument("--checkpoint", action="store_true")
    ap.add_argument("--configs", help="name:hidden:depth:heads:batch:mode:precision,...")
    a = ap.parse_args()
    if a.device == "gpu":
        mx.set_default_device(mx.gpu)
    if a.configs:
        run_configs(a)
        return
    ms = time_steps(a)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"ms_per_step": ms, "images_per_second": a.batch * 1000 / ms, "peak_rss_bytes": rss}))


if __name__ == "__main__":
    main()
