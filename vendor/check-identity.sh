#!/usr/bin/env bash
# Checks that the vendored codecs (vendor/zune-jpeg + vendor/zune-core, vendor/jpeg-encoder)
# give the same output as the versions published on crates.io: two throw-away crates under
# $WORK (default /tmp/pbip-vendor-identity), one against the published crates and one patched
# to the vendored copies, run on the same inputs, their outputs compared.
#  - decoder: 612 JPEGs written by Pillow (widths 1-39 and 47-300, heights 1-33, 4:4:4 / 4:2:2 /
#    4:2:0, quality 85), decoded to RGB in strict mode: the hash of every image's pixels;
#  - encoder: 120 images (8 sizes from 1 x 1 to 301 x 77, quality 10-100, three sampling
#    factors) encoded with the `simd` feature: one hash of all the bytes.
# Needs network for crates.io (or a filled cargo registry) and python3 with Pillow (installed
# into a venv under $WORK when missing).   Usage: bash vendor/check-identity.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-/tmp/pbip-vendor-identity}"
mkdir -p "$WORK/jpegs"
PY=python3
if ! "$PY" -c "import PIL" 2>/dev/null; then
  [ -x "$WORK/venv/bin/python" ] || python3 -m venv "$WORK/venv"
  "$WORK/venv/bin/python" -c "import PIL" 2>/dev/null || "$WORK/venv/bin/pip" install -q pillow
  PY="$WORK/venv/bin/python"
fi
"$PY" - "$WORK/jpegs" <<'PYEOF'
import random, sys
from PIL import Image
out, r = sys.argv[1], random.Random(0)
for w in list(range(1, 40)) + [47, 48, 49, 63, 64, 65, 127, 250, 255, 256, 257, 300]:
    for h in (1, 7, 16, 33):
        for ss in (0, 1, 2):
            im = Image.new("RGB", (w, h))
            im.putdata([(min(255, max(0, int(r.gauss(128, 60)) + x * 80 // w)), r.randrange(256),
                         (x * 7 + y * 13) % 256) for y in range(h) for x in range(w)])
            im.save(f"{out}/img_{w}x{h}_s{ss}.jpg", quality=85, subsampling=ss)
PYEOF

make_crate() { # name, patch section
  mkdir -p "$WORK/$1/src"
  cat > "$WORK/$1/Cargo.toml" <<TOML
[package]
name = "$1"
version = "0.1.0"
edition = "2021"
publish = false
[workspace]
[dependencies]
zune-jpeg = "=0.5.15"
zune-core = "=0.5.3"
jpeg-encoder = { version = "=0.6.1", features = ["simd"] }
[profile.release]
debug = false
$2
TOML
  cat > "$WORK/$1/src/main.rs" <<'RS'
use std::hash::{Hash, Hasher};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

fn main() {
    let dir = std::env::args().nth(1).expect("usage: check JPEG_DIR");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files {
        let data = std::fs::read(&f).unwrap();
        let opts = DecoderOptions::default()
            .jpeg_set_out_colorspace(ColorSpace::RGB)
            .set_strict_mode(true);
        let px = JpegDecoder::new_with_options(ZCursor::new(&data[..]), opts).decode().unwrap();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        px.hash(&mut h);
        println!("decode {} {} {:016x}", f.file_name().unwrap().to_string_lossy(), px.len(), h.finish());
    }
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut all = std::collections::hash_map::DefaultHasher::new();
    let mut n = 0;
    for &(w, h) in &[(1u16, 1u16), (7, 5), (16, 16), (17, 33), (64, 48), (255, 256), (256, 256), (301, 77)] {
        for q in [10u8, 50, 75, 90, 100] {
            for sf in [
                jpeg_encoder::SamplingFactor::F_1_1,
                jpeg_encoder::SamplingFactor::F_2_1,
                jpeg_encoder::SamplingFactor::F_2_2,
            ] {
                let mut img = vec![0u8; w as usize * h as usize * 3];
                for (i, p) in img.iter_mut().enumerate() {
                    *p = ((rnd() % 97) as usize + i % 160) as u8;
                }
                let mut out = Vec::new();
                let mut e = jpeg_encoder::Encoder::new(&mut out, q);
                e.set_sampling_factor(sf);
                e.encode(&img, w, h, jpeg_encoder::ColorType::Rgb).unwrap();
                out.hash(&mut all);
                n += 1;
            }
        }
    }
    println!("encode {n} images {:016x}", all.finish());
}
RS
  (cd "$WORK/$1" && cargo build --release -q)
  "$WORK/$1/target/release/$1" "$WORK/jpegs" > "$WORK/$1.txt"
}

make_crate published ""
make_crate vendored "[patch.crates-io]
zune-jpeg = { path = \"$ROOT/vendor/zune-jpeg\" }
zune-core = { path = \"$ROOT/vendor/zune-core\" }
jpeg-encoder = { path = \"$ROOT/vendor/jpeg-encoder\" }"

echo "decoded images: $(grep -c '^decode' "$WORK/published.txt"); $(grep '^encode' "$WORK/published.txt")"
if diff -q "$WORK/published.txt" "$WORK/vendored.txt" > /dev/null; then
  echo "vendored codecs: output identical to the published crates"
else
  diff "$WORK/published.txt" "$WORK/vendored.txt" | head -20
  echo "vendored codecs: OUTPUT DIFFERS from the published crates" >&2
  exit 1
fi
