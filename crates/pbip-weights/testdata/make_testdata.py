"""Writes small PyTorch checkpoints and the values torch itself reads back, for pbip-weights tests.

Run: python3 make_testdata.py   (needs torch; outputs go next to this script).
Outputs:
  dtypes.pth          torch.save (zip) of a nested dict with many dtypes, strided/offset views, a Parameter
  dtypes.expected.json  {name: {"shape": [...], "data": [...]}} = tensor.float().flatten().tolist() per leaf
  dtypes.legacy.pth   the same dict saved with _use_new_zipfile_serialization=False (must be rejected)
  foreign_global.pth  torch.save of a dict holding an instance of a user class (GLOBAL __main__.Foo)
"""
import json
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(0)

base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7.0 - 1.0


class Foo:
    pass


ckpt = {
    "cfg": None,
    "iter": 5,
    "name": "x",
    "model": {
        "f32": torch.randn(2, 3),
        "f16": torch.randn(5).half(),
        "bf16": torch.randn(3, 2).bfloat16(),
        "f64": torch.randn(2, 2, dtype=torch.float64),
        "i64": torch.tensor([-3, 0, 7, 123456], dtype=torch.int64),
        "i32": torch.tensor([[1, -2], [3, -4]], dtype=torch.int32),
        "u8": torch.tensor([0, 255, 17], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "transposed": base.t(),            # non-contiguous view, shares storage with base
        "row": base[2],                    # offset view
        "col": base[:, 3],                 # offset + stride view
        "sliced": base[1:3, ::2],          # offset, 2-D strided
        "base": base,
        "empty": torch.zeros(0, 3),
        "param": torch.nn.Parameter(torch.randn(4)),
        "sub": {"deep": torch.randn(1, 1, 2)},
    },
    "list": [torch.ones(2), torch.zeros(1)],
}

expected = {}


def walk(v, prefix):
    if isinstance(v, torch.Tensor):
        expected[prefix] = {"shape": list(v.shape), "data": v.detach().float().flatten().tolist()}
    elif isinstance(v, dict):
        for k, x in v.items():
            walk(x, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            walk(x, f"{prefix}.{i}" if prefix else str(i))


walk(ckpt, "")
torch.save(ckpt, os.path.join(HERE, "dtypes.pth"))
torch.save(ckpt, os.path.join(HERE, "dtypes.legacy.pth"), _use_new_zipfile_serialization=False)
with open(os.path.join(HERE, "dtypes.expected.json"), "w") as f:
    json.dump(expected, f, indent=0)
torch.save({"w": torch.ones(2), "obj": Foo()}, os.path.join(HERE, "foreign_global.pth"))
print(f"torch {torch.__version__}: {len(expected)} tensors")
