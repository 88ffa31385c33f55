"""Writes single-tensor torch.save files (as slide2vec writes its per-slide tile embeddings) and
the values torch itself reads back, for the pbip-weights `read_pth_tensor` tests.

Run: ~/.cache/pbip-torch/bin/python make_tensor_pt.py   (needs torch; outputs go next to this script).
Outputs:
  tile_features_f16.pt  torch.save of an fp16 [5, 3] tensor (slide2vec's default feature dtype)
  tile_features_view.pt torch.save of a transposed f32 [3, 4] view (non-contiguous, shares storage)
  tile_features.expected.json  {file: {"shape": [...], "data": [...]}} = torch.load(file).float()
  dict_not_tensor.pt    torch.save of {"features": tensor} (must be refused by read_pth_tensor)
"""
import json
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(3)

files = {
    "tile_features_f16.pt": (torch.randn(5, 3) * 4).half(),
    "tile_features_view.pt": (torch.arange(12, dtype=torch.float32).reshape(4, 3) / 3.0 - 2.0).t(),
}
expected = {}
for name, t in files.items():
    path = os.path.join(HERE, name)
    torch.save(t, path)
    back = torch.load(path, map_location="cpu", weights_only=True)
    expected[name] = {"shape": list(back.shape), "data": back.float().flatten().tolist()}
torch.save({"features": torch.ones(2, 2)}, os.path.join(HERE, "dict_not_tensor.pt"))
with open(os.path.join(HERE, "tile_features.expected.json"), "w") as f:
    json.dump(expected, f, indent=0)
print(f"torch {torch.__version__}: {len(expected)} tensors")
