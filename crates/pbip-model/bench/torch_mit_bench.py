#!/usr/bin/env python3
"""PyTorch CPU reference timing for the PBIP ClassNet (NVlabs MiT + prototype head).

Same model as crates/pbip-model (MiT with strides 4,2,2,1, AdaptiveLayer heads, linear logit
scales), timed the same way as `cargo bench -p pbip-model --bench mit_bench`:
  * training step: batch 10 at 224 px, forward + BCE(mean-merged cls) + 0.1*0.0005*mean(cam4)
    + backward + AdamW step;
  * inference: batch 32 at 224 px forward under torch.no_grad().
Usage: python3 torch_mit_bench.py [mit_b1] [threads] [device]   (pip install torch)
  threads 0 = PyTorch's default; device cpu (default) or cuda (eager, synchronised before timing).
"""
import math, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F

VARIANTS = {
    "mit_b0": ([32, 64, 160, 256], [2, 2, 2, 2]),
    "mit_b1": ([64, 128, 320, 512], [2, 2, 2, 2]),
    "mit_b2": ([64, 128, 320, 512], [3, 4, 6, 3]),
}


class Attention(nn.Module):
    def __init__(self, dim, heads, sr):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.sr_ratio = sr
        if sr > 1:
            self.sr = nn.Conv2d(dim, dim, sr, sr)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x, H, W):
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.heads, C // self.heads).permute(0, 2, 1, 3)
        if self.sr_ratio > 1:
            x_ = self.sr(x.permute(0, 2, 1).reshape(B, C, H, W)).reshape(B, C, -1).permute(0, 2, 1)
            x_ = self.norm(x_)
        else:
            x_ = x
        kv = self.kv(x_).reshape(B, -1, 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.dw = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)

    def forward(self, x, H, W):
        x = self.fc1(x)
        B, N, C = x.shape
        x = self.dw(x.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(x))


def drop_path(x, p, training):
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class Block(nn.Module):
    def __init__(self, dim, heads, sr, dp=0.0):
        super().__init__()
        self.dp = dp
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn, self.mlp = Attention(dim, heads, sr), Mlp(dim, 4 * dim)

    def forward(self, x, H, W):
        x = x + drop_path(self.attn(self.norm1(x), H, W), self.dp, self.training)
        return x + drop_path(self.mlp(self.norm2(x), H, W), self.dp, self.training)


class ClassNet(nn.Module):
    def __init__(self, variant, k_total):
        super().__init__()
        dims, depths = VARIANTS[variant]
        heads, srs, strides = [1, 2, 5, 8], [8, 4, 2, 1], [4, 2, 2, 1]
        self.pe, self.stages, self.norms, self.lfc = nn.ModuleList(), nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        cin = 3
        total = sum(depths)
        dpr = [0.1 * j / (total - 1) for j in range(total)]
        cur = 0
        for i in range(4):
            k = 7 if i == 0 else 3
            self.pe.append(nn.ModuleDict({"proj": nn.Conv2d(cin, dims[i], k, strides[i], k // 2), "norm": nn.LayerNorm(dims[i])}))
            self.stages.append(nn.ModuleList([Block(dims[i], heads[i], srs[i], dpr[cur + j]) for j in range(depths[i])]))
            cur += depths[i]
            self.norms.append(nn.LayerNorm(dims[i], eps=1e-6))
            self.lfc.append(nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, dims[i])))
            cin = dims[i]
        self.scales = nn.Parameter(torch.full((4,), 1 / 0.07))
        self.register_buffer("protos", F.normalize(torch.randn(k_total, 512), dim=1))

    def forward(self, x):
        outs = []
        for i in range(4):
            x = self.pe[i]["proj"](x)
            B, C, H, W = x.shape
            t = self.pe[i]["norm"](x.flatten(2).transpose(1, 2))
            for blk in self.stages[i]:
                t = blk(t, H, W)
            x = self.norms[i](t).reshape(B, H, W, C).permute(0, 3, 1, 2)
            f = F.normalize(x.permute(0, 2, 3, 1).reshape(-1, C), dim=-1)
            s = self.scales[i] * f @ self.lfc[i](self.protos).t()
            outs.append(s.view(B, H, W, -1).permute(0, 3, 1, 2))
        return outs


def main():
    variant = sys.argv[1] if len(sys.argv) > 1 else "mit_b1"
    if len(sys.argv) > 2 and int(sys.argv[2]) > 0:
        torch.set_num_threads(int(sys.argv[2]))
    dev = torch.device(sys.argv[3] if len(sys.argv) > 3 else "cpu")
    # argv[4] = f32 (default) or bf16: torch.autocast(bfloat16) around the forward passes (the
    # losses outside it, in f32), the counterpart of pbip's `training.precision: bf16`.
    precision = sys.argv[4] if len(sys.argv) > 4 else "f32"
    if precision not in ("f32", "bf16"):
        sys.exit(f"precision must be f32 or bf16, not {precision}")

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    k_list = [3, 3, 3, 3]
    model = ClassNet(variant, sum(k_list)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=1e-3, eps=1e-8)
    x = torch.randn(10, 3, 224, 224, device=dev)
    y = torch.randint(0, 2, (10, 4), device=dev).float()

    def step():
        with autocast():
            outs = model(x)
        outs = [o.float() for o in outs]
        loss = 0
        for w, o in zip([0.0, 0.1, 1.0, 1.0], outs):
            cls = o.mean((2, 3)).view(10, 4, 3).mean(2)
            loss = loss + w * F.binary_cross_entropy_with_logits(cls, y)
        loss = loss + 0.1 * 0.0005 * outs[3].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    n = 3 if dev.type == "cpu" else 20
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    train = (time.perf_counter() - t0) / n
    xi = torch.randn(32, 3, 224, 224, device=dev)
    model.eval()
    with torch.no_grad(), autocast():
        model(xi)
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            model(xi)
        sync()
        inf = (time.perf_counter() - t0) / n
    print(f"# pytorch {torch.__version__} threads={torch.get_num_threads()} device={dev} {precision}")
    label = f"pytorch-{dev.type}" + ("-bf16" if precision == "bf16" else "")
    print(f"RESULT {label} {variant} {train*1000:.0f} {inf*1000:.0f} {32/inf:.2f}")


if __name__ == "__main__":
    main()
