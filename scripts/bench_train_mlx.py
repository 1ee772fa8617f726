#!/usr/bin/env python3
"""Reference training step in Python MLX, for examples/bench_train.rs to compare with.

    python3 scripts/bench_train_mlx.py --hidden 192 --depth 12 --heads 3 --batch 8 \
        --size 224 --patch 16 --rank 8 --mode lora --steps 5 --warmup 2

A minimal pre-norm ViT (fused qkv, exact GELU, class-token head) with LoRA on every
linear layer of the blocks (or full fine-tuning), AdamW, one `mx.eval` per step: the
loop a user writes with Python MLX. Prints one JSON line: ms per step, images/s, peak RSS.
"""
import argparse
import json
import resource
import time

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim


class LoRALinear(nn.Module):
    def __init__(self, din, dout, rank, scale):
        super().__init__()
        self.linear = nn.Linear(din, dout)
        self.rank = rank
        if rank:
            bound = 1.0 / din ** 0.5
            self.lora_a = mx.random.uniform(-bound, bound, (rank, din))
            self.lora_b = mx.zeros((dout, rank))
            self.scale = scale

    def __call__(self, x):
        y = self.linear(x)
        if self.rank:
            y = y + self.scale * ((x @ self.lora_a.T) @ self.lora_b.T)
        return y


class Block(nn.Module):
    def __init__(self, d, heads, rank, scale):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.qkv = LoRALinear(d, 3 * d, rank, scale)
        self.proj = LoRALinear(d, d, rank, scale)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
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
        self.patch_embed = nn.Linear(3 * a.patch * a.patch, d)
        n = (a.size // a.patch) ** 2
        self.cls_token = mx.random.normal((1, 1, d)) * 0.02
        self.pos_embed = mx.random.normal((1, n + 1, d)) * 0.02
        self.blocks = [Block(d, a.heads, rank, a.alpha / max(a.rank, 1)) for _ in range(a.depth)]
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Linear(d, a.classes)

    def __call__(self, x):
        b, c, hh, ww = x.shape
        p = self.patch
        x = x.reshape(b, c, hh // p, p, ww // p, p).transpose(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
        x = self.patch_embed(x)
        x = mx.concatenate([mx.broadcast_to(self.cls_token, (b, 1, x.shape[-1])), x], axis=1) + self.pos_embed
        for blk in self.blocks:
            x = self.checkpoint(blk)(x) if self.checkpoint else blk(x)
        return self.head(self.norm(x)[:, 0])


def main():
    ap = argparse.ArgumentParser()
    for k, v in dict(hidden=192, depth=12, heads=3, batch=8, size=224, patch=16, rank=8,
                     classes=10, steps=5, warmup=2).items():
        ap.add_argument(f"--{k}", type=int, default=v)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--mode", default="lora", choices=["lora", "full"])
    # Gradient checkpointing per block, MLX's module-aware way.
    ap.add_argument("--checkpoint", action="store_true")
    a = ap.parse_args()
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

    def loss_fn(m, x, y):
        return nn.losses.cross_entropy(m(x), y, reduction="mean")

    vg = nn.value_and_grad(model, loss_fn)
    times = []
    for i in range(a.warmup + a.steps):
        t = time.perf_counter()
        loss, grads = vg(model, x, y)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state, loss)
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    ms = 1000 * sum(times) / len(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"ms_per_step": ms, "images_per_second": a.batch * 1000 / ms, "peak_rss_bytes": rss}))


if __name__ == "__main__":
    main()
