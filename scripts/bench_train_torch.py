#!/usr/bin/env python3
"""PyTorch counterpart of scripts/bench_train_mlx.py: the same minimal ViT training
step, timed in eager PyTorch on a CUDA GPU (or the CPU), one JSON line per config.

    python3 scripts/bench_train_torch.py --steps 10 \
        --configs vit-ti16:192:12:3:64:lora:float32,vit-b16:768:12:12:256:full:bfloat16

Each config is name:hidden:depth:heads:batch:mode:precision; --size, --patch, --rank,
--alpha, --classes, --warmup and --steps apply to all of them. The model is written
here rather than taken from timm/peft so that both scripts run the same layers: pre-norm
blocks with a fused qkv projection, scaled_dot_product_attention, an exact-GELU MLP of
4x width, LayerNorm eps 1e-6 and a class-token head. LoRA (mode lora) wraps every block
linear layer, rank 8 and alpha 16 by default, with the base weights frozen and the head
trained; mode full trains everything. AdamW, cross entropy.

bfloat16 is torch.autocast over forward and loss with float32 weights: the usual PyTorch
mixed precision, the counterpart of the float32 masters in the MLX script.

--tf32 lets float32 matmuls and convolutions run on tensor cores as TF32 (what MLX's
float32 does on CUDA); --compile runs the model through torch.compile (inductor, default
mode), compiled once per configuration before the warm-up steps, its compile time
reported as compile_s.

Under torchrun (WORLD_SIZE > 1) every process takes one GPU (LOCAL_RANK), the model is
wrapped in DistributedDataParallel over NCCL, the batch is per GPU, and rank 0 prints
images/s of all GPUs together (world_size in the record):

    torchrun --nproc_per_node 2 scripts/bench_train_torch.py --configs ...
"""
import argparse
import gc
import json
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


class LoRALinear(nn.Module):
    def __init__(self, din, dout, rank, scale):
        super().__init__()
        self.linear = nn.Linear(din, dout)
        self.rank = rank
        if rank:
            # B starts at zero so the adapted layer starts equal to the base layer;
            # A is random so that B's first gradient is not zero too.
            bound = 1.0 / din ** 0.5
            self.lora_a = nn.Parameter(torch.empty(rank, din).uniform_(-bound, bound))
            self.lora_b = nn.Parameter(torch.zeros(dout, rank))
            self.scale = scale

    def forward(self, x):
        y = self.linear(x)
        if self.rank:
            # Through the rank-r bottleneck, never forming B A: that is the point of LoRA.
            y = y + self.scale * F.linear(F.linear(x, self.lora_a), self.lora_b)
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

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        # Default scale is 1/sqrt(head dim); PyTorch picks the flash, memory-efficient
        # or math kernel from dtype and shapes, as a user's code would get.
        o = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(o.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, rank = c.hidden, (c.rank if c.mode == "lora" else 0)
        self.use_checkpoint = c.checkpoint
        # A stride-p convolution is the same map as MLX's linear layer over flattened
        # patches; it is how PyTorch ViTs are written, so it is what users run.
        self.patch_embed = nn.Conv2d(3, d, c.patch, stride=c.patch)
        n = (c.size // c.patch) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, d) * 0.02)
        self.blocks = nn.ModuleList(
            Block(d, c.heads, rank, c.alpha / max(c.rank, 1)) for _ in range(c.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Linear(d, c.classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            # Non-reentrant checkpointing is the one that works with frozen inputs
            # (LoRA) and is PyTorch's recommended kind.
            x = checkpoint(blk, x, use_reentrant=False) if self.use_checkpoint else blk(x)
        return self.head(self.norm(x)[:, 0])


def time_steps(c, device):
    """Builds the model for config `c`, trains it on one random batch and returns
    the mean milliseconds of a step, warm-up steps left out."""
    torch.manual_seed(0)
    model = ViT(c).to(device)
    if c.mode == "lora":
        model.requires_grad_(False)
        for blk in model.blocks:
            for lin in (blk.qkv, blk.proj, blk.fc1, blk.fc2):
                lin.lora_a.requires_grad_(True)
                lin.lora_b.requires_grad_(True)
        model.head.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    run = torch.compile(model) if c.compile else model
    if torch.distributed.is_initialized():
        # Gradients all-reduced over NCCL in DDP's buckets, overlapped with backward.
        ids = [device.index] if device.type == "cuda" else None
        run = torch.nn.parallel.DistributedDataParallel(run, device_ids=ids)
    # The fused CUDA AdamW updates every tensor in a few kernels instead of several
    # per tensor; it is what a user who cares for speed turns on.
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, fused=device.type == "cuda")
    x = torch.randn(c.batch, 3, c.size, c.size, device=device)
    y = torch.randint(0, c.classes, (c.batch,), device=device)
    bf16 = c.precision == "bfloat16"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            # Autocast would run cross entropy in float32 anyway; the explicit cast
            # says so, and matches the MLX script.
            loss = F.cross_entropy(run(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    t = time.perf_counter()
    step()
    sync()
    c.compile_s = time.perf_counter() - t
    for _ in range(c.warmup):
        step()
    # CUDA work is asynchronous: the clock is read only once the GPU has caught up,
    # so the timed window holds exactly the timed steps' kernels. Inside it the CPU
    # may queue the next step while the GPU runs this one, as it does in a training
    # loop that does not read the loss every step.
    sync()
    t = time.perf_counter()
    for _ in range(c.steps):
        step()
    sync()
    return 1000 * (time.perf_counter() - t) / c.steps


def parse_configs(spec):
    configs = []
    for item in spec.split(","):
        name, hidden, depth, heads, batch, mode, precision = item.split(":")
        if mode not in ("lora", "full") or precision not in ("float32", "bfloat16"):
            raise SystemExit(f"bad config {item!r}: mode is lora|full, precision float32|bfloat16")
        configs.append(dict(name=name, hidden=int(hidden), depth=int(depth), heads=int(heads),
                            batch=int(batch), mode=mode, precision=precision))
    return configs


def main():
    ap = argparse.ArgumentParser()
    for k, v in dict(size=224, patch=16, rank=8, classes=10, steps=5, warmup=2).items():
        ap.add_argument(f"--{k}", type=int, default=v)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    # Off by default: float32 here is to be true IEEE float32, like MLX's float32,
    # not TF32 matmuls and convolutions with a 10-bit mantissa (PyTorch's default
    # for cuDNN convolutions).
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--checkpoint", action="store_true", help="gradient checkpointing per block")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--configs", required=True, help="name:hidden:depth:heads:batch:mode:precision,...")
    a = ap.parse_args()
    configs = parse_configs(a.configs)
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(a.device)
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if a.device == "cuda":
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        # NCCL between GPUs; gloo lets the same code be tried on CPUs.
        torch.distributed.init_process_group("nccl" if a.device == "cuda" else "gloo")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device visible to PyTorch")
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = "cpu"

    for cfg in configs:
        rec = {"framework": "pytorch", "name": cfg["name"], "batch": cfg["batch"],
               "mode": cfg["mode"], "precision": cfg["precision"], "device": device_name,
               "tf32": a.tf32, "compile": a.compile, "world_size": world}
        try:
            ns = argparse.Namespace(**{**vars(a), **cfg})
            ms = time_steps(ns, device)
            rec.update(ms_per_step=ms, images_per_second=world * cfg["batch"] * 1000 / ms)
            if a.compile:
                rec["compile_s"] = ns.compile_s
        except Exception as e:  # out of memory, say: report it and go on with the next
            rec["error"] = f"{type(e).__name__}: {e}"
        rec["torch_version"] = torch.__version__
        # The model, optimizer state and activations died with time_steps' frame (and
        # with the exception's traceback, once the except block ended); give the cached
        # blocks back so the next config starts from the same empty pool.
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if rank == 0:
            print(json.dumps(rec), flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
