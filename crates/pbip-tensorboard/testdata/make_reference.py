"""Writes a reference TensorBoard event file with the real `tensorboardX` writer.

Run:  pip install tensorboardX==2.6.5 && python3 make_reference.py
Outputs (next to this script):
  reference.tfevents   - the event file written by tensorboardX (renamed to a fixed name)
  reference.json       - the events it contains, as written: wall_time (f64 bits), step,
                         and for scalar events tag + simple_value (f32 bits); for text events tag + text.
The Rust tests read both; they never run Python.
"""
import json
import math
import os
import shutil
import struct
import tempfile

import numpy as np
import tensorboardX
from tensorboardX import SummaryWriter
import tensorboardX.event_file_writer as efw

HERE = os.path.dirname(os.path.abspath(__file__))
FILE_VERSION_WALL_TIME = 1700000000.25

# (tag, value, step, wall_time): covers step 0 and value 0.0 (proto3 defaults), negatives,
# large steps, non-finite values, a unicode tag, and float32 rounding of the value.
SCALARS = [
    ("loss/total", 1.5, 0, 1700000001.5),
    ("loss/total", 0.0, 1, 1700000002.125),
    ("loss/cls", -3.25, 2, 1700000003.0),
    ("val/miou", 0.1, 100, 1700000004.1),
    ("val/miou", 2.0 / 3.0, 1 << 40, 1700000005.7),
    ("lr", 1e-30, 7, 1700000006.0),
    ("weird/inf", math.inf, 8, 1700000007.0),
    ("weird/-inf", -math.inf, 9, 1700000008.0),
    ("ünïcode/τ", 12345.678, 10, 1700000009.999),
    ("neg_step", 42.0, -5, 1700000010.0),
]
TEXTS = [
    ("notes", "hello <b>tensorboard</b> ✓", 3, 1700000011.5),
]


def f32_bits(v):
    return struct.unpack("<I", struct.pack("<f", np.float32(v)))[0]


def f64_bits(v):
    return struct.unpack("<Q", struct.pack("<d", v))[0]


def main():
    tmp = tempfile.mkdtemp()
    real_time = efw.time.time
    efw.time.time = lambda: FILE_VERSION_WALL_TIME  # fix the file_version event's wall time
    try:
        w = SummaryWriter(logdir=tmp)
        # force the file writer (and its file_version event) to be created now
        w._get_file_writer()
    finally:
        efw.time.time = real_time
    events = [{"wall_time_bits": f64_bits(FILE_VERSION_WALL_TIME), "step": 0,
               "file_version": "brain.Event:2"}]
    for tag, value, step, wt in SCALARS:
        w.add_scalar(tag, value, step, walltime=wt)
        events.append({"wall_time_bits": f64_bits(wt), "step": step, "tag": tag,
                       "simple_value_bits": f32_bits(value)})
    for tag, text, step, wt in TEXTS:
        w.add_text(tag, text, step, walltime=wt)
        events.append({"wall_time_bits": f64_bits(wt), "step": step,
                       "tag": tag + "/text_summary", "text": text})
    w.close()
    files = [f for f in os.listdir(tmp) if f.startswith("events.out.tfevents.")]
    assert len(files) == 1, files
    shutil.copy(os.path.join(tmp, files[0]), os.path.join(HERE, "reference.tfevents"))
    with open(os.path.join(HERE, "reference.json"), "w") as f:
        json.dump({"generator": f"tensorboardX {tensorboardX.__version__}", "events": events},
                  f, indent=1, ensure_ascii=False)
        f.write("\n")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
