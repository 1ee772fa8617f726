#!/usr/bin/env python3
"""Where a ViT-B/16 batch-256 step's GPU time goes, MLX against PyTorch: fused attention
forward+backward, one MLP (fc1, GELU, fc2) forward+backward, and one fc1-sized GEMM, in
float32 and bfloat16. Run on the GPU machine after scripts/bench-gpu.sh has set up
Python MLX:

    PYTHONPATH=target/gpu-work/py LD_LIBRARY_PATH=<torch's nvidia/*/lib> \
        python3 scripts/bench_gpu_parts.py mlx
    python3 scripts/bench_gpu_parts.py torch
"""
import time, sys
def bench(f, n=10):
    f(); f(); s=time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter()-s)/n*1000
B,H,T,D = 256,12,197,64
res = {}
if sys.argv[1] == "mlx":
    import mlx.core as mx, mlx.nn as nn
    mx.set_default_device(mx.gpu)
    for dt, name in [(mx.float32,"f32"),(mx.bfloat16,"bf16")]:
        q = mx.random.normal((B,H,T,D)).astype(dt); k = mx.random.normal((B,H,T,D)).astype(dt); v = mx.random.normal((B,H,T,D)).astype(dt)
        g = mx.grad(lambda q,k,v: mx.fast.scaled_dot_product_attention(q,k,v,scale=0.125).astype(mx.float32).sum(), argnums=(0,1,2))
        res["sdpa fwd+bwd "+name] = bench(lambda: mx.eval(g(q,k,v)))
        def explicit(q, k, v):
            s = (q * 0.125) @ k.swapaxes(-1, -2)
            p = mx.softmax(s.astype(mx.float32), axis=-1).astype(dt)
            return p @ v
        ge = mx.grad(lambda q,k,v: explicit(q,k,v).astype(mx.float32).sum(), argnums=(0,1,2))
        res["explicit attention fwd+bwd "+name] = bench(lambda: mx.eval(ge(q,k,v)))
        ce = mx.grad(mx.compile(lambda q,k,v: explicit(q,k,v).astype(mx.float32).sum()), argnums=(0,1,2))
        res["explicit compiled fwd+bwd "+name] = bench(lambda: mx.eval(ce(q,k,v)))
        x = mx.random.normal((B*T,768)).astype(dt); w1 = (mx.random.normal((3072,768))*0.02).astype(dt); w2 = (mx.random.normal((768,3072))*0.02).astype(dt)
        gm = mx.grad(lambda x,w1,w2: (nn.gelu(x@w1.T)@w2.T).astype(mx.float32).sum(), argnums=(0,1,2))
        res["mlp fwd+bwd "+name] = bench(lambda: mx.eval(gm(x,w1,w2)))
        res["gemm 50432x768x3072 "+name] = bench(lambda: mx.eval(x@w1.T))
else:
    import torch, torch.nn.functional as F
    torch.backends.cuda.matmul.allow_tf32 = False
    for dt, name in [(torch.float32,"f32"),(torch.bfloat16,"bf16")]:
        q,k,v = [torch.randn(B,H,T,D,device="cuda",dtype=dt,requires_grad=True) for _ in range(3)]
        def a():
            F.scaled_dot_product_attention(q,k,v,scale=0.125).float().sum().backward(); torch.cuda.synchronize()
        res["sdpa fwd+bwd "+name] = bench(a)
        x = torch.randn(B*T,768,device="cuda",dtype=dt,requires_grad=True); w1=(torch.randn(3072,768,device="cuda")*0.02).to(dt).requires_grad_(); w2=(torch.randn(768,3072,device="cuda")*0.02).to(dt).requires_grad_()
        def m():
            (F.gelu(x@w1.T)@w2.T).float().sum().backward(); torch.cuda.synchronize()
        res["mlp fwd+bwd "+name] = bench(m)
        def gm():
            with torch.no_grad(): y = x@w1.T
            torch.cuda.synchronize()
        res["gemm 50432x768x3072 "+name] = bench(gm)
for k_, v_ in res.items(): print(f"{sys.argv[1]:6} {k_:28} {v_:8.2f} ms")
