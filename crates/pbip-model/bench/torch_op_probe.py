#!/usr/bin/env python3
"""PyTorch CPU timings of the ops of benches/op_probe.rs (same shapes)."""
import torch, time
torch.manual_seed(0)
def bench(f, n=5):
    f(); t=time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter()-t)/n
for m,k,n in [(31360,64,256),(31360,256,64),(1960,512,2048),(1960,2048,512)]:
    a=torch.randn(m,k); b=torch.randn(k,n); s=bench(lambda: a@b); print(f"2d {m}x{k}x{n}: {s*1e3:.1f} ms {2*m*k*n/s/1e9:.1f} GFLOP/s")
a=torch.randn(31360,64); b=torch.randn(31360,256); s=bench(lambda: a.t()@b); print(f"aT@b: {s*1e3:.1f} ms {2*31360*64*256/s/1e9:.1f}")
q=torch.randn(10,8,196,64); k=torch.randn(10,8,64,196); s=bench(lambda: q@k); print(f"attn: {s*1e3:.1f} ms {2*80*196*64*196/s/1e9:.1f}")
x=torch.randn(10,256,56,56); c=torch.nn.Conv2d(256,256,3,1,1,groups=256)
with torch.no_grad(): s=bench(lambda: c(x)); print(f"dwconv: {s*1e3:.1f} ms")
