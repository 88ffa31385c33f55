//! Test helper: a small hand-written TIFF/BigTIFF writer (tiled or stripped, JPEG with or without
//! JPEGTables, YCbCr or RGB photometric, deflate, LZW, none; sequential IFDs or SubIFDs).
#![allow(dead_code)]

use std::io::Write;

/// Chunk compression of a generated image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Comp {
    None,
    Deflate,
    Lzw,
    /// JPEG, Photometric YCbCr (colour converted), tables inline in every tile.
    JpegYcbcr,
    /// JPEG, Photometric YCbCr, DQT/DHT moved to a shared JPEGTables tag.
    JpegYcbcrTables,
    /// JPEG whose components are R, G, B (Photometric RGB, no colour conversion), with JPEGTables.
    JpegRgbTables,
}

/// One image (IFD) to write.
#[derive(Debug, Clone)]
pub struct Img {
    pub width: u32,
    pub height: u32,
    /// RGB8 pixels.
    pub rgb: Vec<u8>,
    /// Some(tile side) for tiled, None for strips.
    pub tile: Option<u32>,
    pub rows_per_strip: u32,
    pub comp: Comp,
    pub subfile_type: u32,
    pub description: Option<String>,
    /// Pixels per centimetre (ResolutionUnit = 3).
    pub res_per_cm: Option<f64>,
    pub predictor: bool,
    /// Extra LONG tags (tag, value).
    pub extra_long: Vec<(u16, u32)>,
    /// Extra ASCII tags (tag, value).
    pub extra_ascii: Vec<(u16, String)>,
}

impl Img {
    pub fn new(width: u32, height: u32, rgb: Vec<u8>, tile: Option<u32>, comp: Comp) -> Self {
        Self {
            width,
            height,
            rgb,
            tile,
            rows_per_strip: 16,
            comp,
            subfile_type: 0,
            description: None,
            res_per_cm: None,
            predictor: false,
            extra_long: Vec::new(),
            extra_ascii: Vec::new(),
        }
    }
}

/// Deterministic, smooth-but-textured test content (non-square friendly).
pub fn pattern(width: u32, height: u32, seed: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        for x in 0..width {
            let fx = x as f32;
            let fy = y as f32;
            let s = seed as f32;
            let r = 128.0 + 90.0 * ((fx * 0.031 + s).sin() * (fy * 0.017).cos());
            let g = 128.0 + 80.0 * ((fx * 0.011 - fy * 0.023 + s * 0.5).sin());
            let b = 150.0
                + 60.0 * (((fx + fy) * 0.05).sin() * 0.5 + ((fx - 2.0 * fy) * 0.013).cos() * 0.5);
            v.push(r.clamp(0.0, 255.0) as u8);
            v.push(g.clamp(0.0, 255.0) as u8);
            v.push(b.clamp(0.0, 255.0) as u8);
        }
    }
    v
}

/// 2x box downsample (ceil size) of an RGB8 image.
pub fn half(rgb: &[u8], w: u32, h: u32) -> (Vec<u8>, u32, u32) {
    let (nw, nh) = (w.div_ceil(2), h.div_ceil(2));
    let mut out = vec![0u8; nw as usize * nh as usize * 3];
    for y in 0..nh {
        for x in 0..nw {
            for c in 0..3 {
                let mut s = 0u32;
                let mut n = 0u32;
                for dy in 0..2 {
                    for dx in 0..2 {
                        let (sx, sy) = (2 * x + dx, 2 * y + dy);
                        if sx < w && sy < h {
                            s += u32::from(rgb[((sy * w + sx) * 3 + c) as usize]);
                            n += 1;
                        }
                    }
                }
                out[((y * nw + x) * 3 + c) as usize] = ((s + n / 2) / n) as u8;
            }
        }
    }
    (out, nw, nh)
}

/// A pyramid of `levels` images, each half the previous one.
pub fn pyramid(w: u32, h: u32, levels: usize, tile: Option<u32>, comp: Comp) -> Vec<Img> {
    let mut out = Vec::new();
    let (mut rgb, mut cw, mut ch) = (pattern(w, h, 1), w, h);
    for l in 0..levels {
        let mut img = Img::new(cw, ch, rgb.clone(), tile, comp);
        if l > 0 {
            img.subfile_type = 1;
        }
        out.push(img);
        let (r, nw, nh) = half(&rgb, cw, ch);
        rgb = r;
        cw = nw;
        ch = nh;
    }
    out
}

fn jpeg_encode(rgb: &[u8], w: u32, h: u32, as_rgb_components: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, 90);
    let ct = if as_rgb_components {
        enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_1_1);
        jpeg_encoder::ColorType::Ycbcr // no conversion: stored components are R, G, B
    } else {
        enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
        jpeg_encoder::ColorType::Rgb
    };
    enc.encode(rgb, w as u16, h as u16, ct)
        .expect("jpeg encode");
    out
}

/// Split a JPEG into (tables-only stream, stream without DQT/DHT/APPn).
fn split_jpeg(j: &[u8], move_tables: bool) -> (Vec<u8>, Vec<u8>) {
    let mut tables = vec![0xFF, 0xD8];
    let mut body = vec![0xFF, 0xD8];
    let mut i = 2;
    while i + 4 <= j.len() {
        assert_eq!(j[i], 0xFF);
        let m = j[i + 1];
        if m == 0xDA {
            body.extend_from_slice(&j[i..]);
            break;
        }
        let len = u16::from_be_bytes([j[i + 2], j[i + 3]]) as usize;
        let seg = &j[i..i + 2 + len];
        if (0xE0..=0xEF).contains(&m) {
            // drop APPn (TIFF JPEG tiles carry none)
        } else if move_tables && (m == 0xDB || m == 0xC4) {
            tables.extend_from_slice(seg);
        } else {
            body.extend_from_slice(seg);
        }
        i += 2 + len;
    }
    tables.extend_from_slice(&[0xFF, 0xD9]);
    (tables, body)
}

fn lzw_encode(data: &[u8]) -> Vec<u8> {
    let mut enc = weezl::encode::Encoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8);
    enc.encode(data).expect("lzw")
}

fn deflate_encode(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("deflate");
    e.finish().expect("deflate")
}

/// Encode the chunks of an image. Returns (chunks, jpeg tables, chunk w, chunk h).
fn encode_chunks(img: &Img) -> (Vec<Vec<u8>>, Option<Vec<u8>>, u32, u32) {
    let (cw, ch) = match img.tile {
        Some(t) => (t, t),
        None => (img.width, img.rows_per_strip.min(img.height)),
    };
    let across = img.width.div_ceil(cw);
    let down = img.height.div_ceil(ch);
    let mut chunks = Vec::new();
    let mut tables: Option<Vec<u8>> = None;
    for ty in 0..down {
        for tx in 0..across {
            // Tiles are padded to full size; strips are cut at the image bottom.
            let rows = if img.tile.is_some() {
                ch
            } else {
                ch.min(img.height - ty * ch)
            };
            let mut px = vec![0u8; (cw * rows * 3) as usize];
            for y in 0..rows {
                for x in 0..cw {
                    let (sx, sy) = (
                        (tx * cw + x).min(img.width - 1),
                        (ty * ch + y).min(img.height - 1),
                    );
                    let s = ((sy * img.width + sx) * 3) as usize;
                    let d = ((y * cw + x) * 3) as usize;
                    px[d..d + 3].copy_from_slice(&img.rgb[s..s + 3]);
                }
            }
            if img.predictor {
                for row in px.chunks_exact_mut((cw * 3) as usize) {
                    for i in (3..row.len()).rev() {
                        row[i] = row[i].wrapping_sub(row[i - 3]);
                    }
                }
            }
            let data = match img.comp {
                Comp::None => px,
                Comp::Deflate => deflate_encode(&px),
                Comp::Lzw => lzw_encode(&px),
                Comp::JpegYcbcr | Comp::JpegYcbcrTables | Comp::JpegRgbTables => {
                    let j = jpeg_encode(&px, cw, rows, img.comp == Comp::JpegRgbTables);
                    let move_tables = img.comp != Comp::JpegYcbcr;
                    let (t, b) = split_jpeg(&j, move_tables);
                    if move_tables {
                        if let Some(prev) = &tables {
                            assert_eq!(prev, &t, "tiles must share JPEG tables");
                        }
                        tables = Some(t);
                    }
                    b
                }
            };
            chunks.push(data);
        }
    }
    (chunks, tables, cw, ch)
}

enum Val {
    Short(Vec<u16>),
    Long(Vec<u32>),
    Long8(Vec<u64>),
    Ascii(String),
    Undef(Vec<u8>),
    Rational(u32, u32),
}

struct Out {
    buf: Vec<u8>,
    big: bool,
}

impl Out {
    fn off(&mut self, v: u64) {
        if self.big {
            self.buf.extend_from_slice(&v.to_le_bytes());
        } else {
            self.buf.extend_from_slice(&(v as u32).to_le_bytes());
        }
    }
    fn align(&mut self) {
        if self.buf.len() % 2 == 1 {
            self.buf.push(0);
        }
    }
    /// Write an IFD; returns (ifd offset, position of its next-IFD pointer).
    fn ifd(&mut self, mut entries: Vec<(u16, Val)>) -> (u64, usize) {
        entries.sort_by_key(|e| e.0);
        // Write out-of-line values first.
        let inline = if self.big { 8 } else { 4 };
        let mut encoded = Vec::new();
        for (tag, v) in &entries {
            let (typ, count, bytes): (u16, u64, Vec<u8>) = match v {
                Val::Short(s) => (
                    3,
                    s.len() as u64,
                    s.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
                Val::Long(s) => (
                    4,
                    s.len() as u64,
                    s.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
                Val::Long8(s) => (
                    16,
                    s.len() as u64,
                    s.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
                Val::Ascii(s) => {
                    let mut b = s.as_bytes().to_vec();
                    b.push(0);
                    (2, b.len() as u64, b)
                }
                Val::Undef(b) => (7, b.len() as u64, b.clone()),
                Val::Rational(n, d) => (5, 1, [n.to_le_bytes(), d.to_le_bytes()].concat()),
            };
            let field = if bytes.len() <= inline {
                let mut f = bytes.clone();
                f.resize(inline, 0);
                f
            } else {
                self.align();
                let pos = self.buf.len() as u64;
                self.buf.extend_from_slice(&bytes);
                if self.big {
                    pos.to_le_bytes().to_vec()
                } else {
                    (pos as u32).to_le_bytes().to_vec()
                }
            };
            encoded.push((*tag, typ, count, field));
        }
        self.align();
        let at = self.buf.len() as u64;
        if self.big {
            self.buf
                .extend_from_slice(&(encoded.len() as u64).to_le_bytes());
        } else {
            self.buf
                .extend_from_slice(&(encoded.len() as u16).to_le_bytes());
        }
        for (tag, typ, count, field) in encoded {
            self.buf.extend_from_slice(&tag.to_le_bytes());
            self.buf.extend_from_slice(&typ.to_le_bytes());
            if self.big {
                self.buf.extend_from_slice(&count.to_le_bytes());
            } else {
                self.buf.extend_from_slice(&(count as u32).to_le_bytes());
            }
            self.buf.extend_from_slice(&field);
        }
        let next_pos = self.buf.len();
        self.off(0);
        (at, next_pos)
    }
    fn patch(&mut self, pos: usize, v: u64) {
        if self.big {
            self.buf[pos..pos + 8].copy_from_slice(&v.to_le_bytes());
        } else {
            self.buf[pos..pos + 4].copy_from_slice(&(v as u32).to_le_bytes());
        }
    }
}

fn entries_for(out: &mut Out, img: &Img, subifds: Option<&[u64]>) -> Vec<(u16, Val)> {
    let (chunks, tables, cw, ch) = encode_chunks(img);
    let mut offsets = Vec::new();
    let mut counts = Vec::new();
    for c in &chunks {
        out.align();
        offsets.push(out.buf.len() as u64);
        counts.push(c.len() as u64);
        out.buf.extend_from_slice(c);
    }
    let offs = |v: Vec<u64>, big: bool| {
        if big {
            Val::Long8(v)
        } else {
            Val::Long(v.iter().map(|&x| x as u32).collect())
        }
    };
    let big = out.big;
    let (comp, photometric) = match img.comp {
        Comp::None => (1, 2),
        Comp::Deflate => (8, 2),
        Comp::Lzw => (5, 2),
        Comp::JpegYcbcr | Comp::JpegYcbcrTables => (7, 6),
        Comp::JpegRgbTables => (7, 2),
    };
    let mut e = vec![
        (256u16, Val::Long(vec![img.width])),
        (257, Val::Long(vec![img.height])),
        (258, Val::Short(vec![8, 8, 8])),
        (259, Val::Short(vec![comp])),
        (262, Val::Short(vec![photometric])),
        (277, Val::Short(vec![3])),
        (284, Val::Short(vec![1])),
    ];
    if img.subfile_type != 0 {
        e.push((254, Val::Long(vec![img.subfile_type])));
    }
    if let Some(d) = &img.description {
        e.push((270, Val::Ascii(d.clone())));
    }
    if let Some(r) = img.res_per_cm {
        e.push((282, Val::Rational((r * 1000.0) as u32, 1000)));
        e.push((283, Val::Rational((r * 1000.0) as u32, 1000)));
        e.push((296, Val::Short(vec![3])));
    }
    if img.predictor {
        e.push((317, Val::Short(vec![2])));
    }
    for (tag, v) in &img.extra_long {
        e.push((*tag, Val::Long(vec![*v])));
    }
    for (tag, v) in &img.extra_ascii {
        e.push((*tag, Val::Ascii(v.clone())));
    }
    if photometric == 6 {
        e.push((530, Val::Short(vec![2, 2])));
    }
    if let Some(t) = tables {
        e.push((347, Val::Undef(t)));
    }
    if img.tile.is_some() {
        e.push((322, Val::Long(vec![cw])));
        e.push((323, Val::Long(vec![ch])));
        e.push((324, offs(offsets, big)));
        e.push((325, offs(counts, big)));
    } else {
        e.push((278, Val::Long(vec![ch])));
        e.push((273, offs(offsets, big)));
        e.push((279, offs(counts, big)));
    }
    if let Some(s) = subifds {
        e.push((
            330,
            if big {
                Val::Long8(s.to_vec())
            } else {
                Val::Long(s.iter().map(|&x| x as u32).collect())
            },
        ));
    }
    e
}

/// Serialise images as a TIFF. `subifds`: images[1..] become SubIFDs of images[0] instead of
/// following it in the main IFD chain.
pub fn tiff_bytes(images: &[Img], big: bool, subifds: bool) -> Vec<u8> {
    let mut out = Out {
        buf: Vec::new(),
        big,
    };
    if big {
        out.buf.extend_from_slice(b"II");
        out.buf.extend_from_slice(&43u16.to_le_bytes());
        out.buf.extend_from_slice(&8u16.to_le_bytes());
        out.buf.extend_from_slice(&0u16.to_le_bytes());
    } else {
        out.buf.extend_from_slice(b"II");
        out.buf.extend_from_slice(&42u16.to_le_bytes());
    }
    let first_ptr = out.buf.len();
    out.off(0);
    if subifds {
        let mut sub_offsets = Vec::new();
        for img in &images[1..] {
            let e = entries_for(&mut out, img, None);
            let (at, _) = out.ifd(e);
            sub_offsets.push(at);
        }
        let e = entries_for(&mut out, &images[0], Some(&sub_offsets));
        let (at, _) = out.ifd(e);
        out.patch(first_ptr, at);
    } else {
        let mut prev = first_ptr;
        for img in images {
            let e = entries_for(&mut out, img, None);
            let (at, next) = out.ifd(e);
            out.patch(prev, at);
            prev = next;
        }
    }
    out.buf
}

/// Write a TIFF into `dir` and return its path.
pub fn write_tiff(
    dir: &std::path::Path,
    name: &str,
    images: &[Img],
    big: bool,
    subifds: bool,
) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, tiff_bytes(images, big, subifds)).expect("write tiff");
    p
}

/// Max and mean absolute difference of two equally sized buffers.
pub fn diff(a: &[u8], b: &[u8]) -> (u8, f64) {
    assert_eq!(a.len(), b.len());
    let mut max = 0u8;
    let mut sum = 0u64;
    for (x, y) in a.iter().zip(b) {
        let d = x.abs_diff(*y);
        max = max.max(d);
        sum += u64::from(d);
    }
    (max, sum as f64 / a.len().max(1) as f64)
}

/// Crop an RGB8 image region (clipped coordinates must be inside).
pub fn crop(rgb: &[u8], w: u32, x: u32, y: u32, cw: u32, ch: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity((cw * ch * 3) as usize);
    for yy in y..y + ch {
        let s = ((yy * w + x) * 3) as usize;
        out.extend_from_slice(&rgb[s..s + (cw * 3) as usize]);
    }
    out
}

/// A BigTIFF whose `width` x `height` image uses `tile`-px deflate tiles that all point to the
/// same stored tile of colour `rgb` (cheap way to get huge TileOffsets arrays).
pub fn bigtiff_shared_tile(width: u32, height: u32, tile: u32, rgb: [u8; 3]) -> Vec<u8> {
    let mut out = Out {
        buf: Vec::new(),
        big: true,
    };
    out.buf.extend_from_slice(b"II");
    out.buf.extend_from_slice(&43u16.to_le_bytes());
    out.buf.extend_from_slice(&8u16.to_le_bytes());
    out.buf.extend_from_slice(&0u16.to_le_bytes());
    let first_ptr = out.buf.len();
    out.off(0);
    let px: Vec<u8> = (0..tile * tile).flat_map(|_| rgb).collect();
    let data = deflate_encode(&px);
    let off = out.buf.len() as u64;
    out.buf.extend_from_slice(&data);
    let n = (width.div_ceil(tile) * height.div_ceil(tile)) as usize;
    let e = vec![
        (256u16, Val::Long(vec![width])),
        (257, Val::Long(vec![height])),
        (258, Val::Short(vec![8, 8, 8])),
        (259, Val::Short(vec![8])),
        (262, Val::Short(vec![2])),
        (277, Val::Short(vec![3])),
        (322, Val::Long(vec![tile])),
        (323, Val::Long(vec![tile])),
        (324, Val::Long8(vec![off; n])),
        (325, Val::Long8(vec![data.len() as u64; n])),
    ];
    let (at, _) = out.ifd(e);
    out.patch(first_ptr, at);
    out.buf
}

/// Whether OpenSlide-backed checks run. They must run when libopenslide is installed (CI installs
/// libopenslide0); without it the test fails, unless `PBIP_SLIDE_NO_OPENSLIDE=1` explicitly
/// opts out (then the check is skipped with a message).
pub fn require_openslide() -> bool {
    if pbip_slide::openslide_available() {
        return true;
    }
    if std::env::var("PBIP_SLIDE_NO_OPENSLIDE").is_ok_and(|v| v == "1") {
        eprintln!(
            "SKIPPING OpenSlide checks: libopenslide not installed and PBIP_SLIDE_NO_OPENSLIDE=1"
        );
        return false;
    }
    panic!(
        "libopenslide is not installed: apt-get install libopenslide0 (or set PBIP_SLIDE_NO_OPENSLIDE=1 to skip)"
    );
}

/// An entry of the first IFD of a classic little-endian TIFF: (position of the entry, type,
/// count, raw 4-byte value/offset field).
pub fn ifd0_entry(b: &[u8], tag: u16) -> Option<(usize, u16, u32, u32)> {
    let u16_at = |i: usize| Some(u16::from_le_bytes([*b.get(i)?, *b.get(i + 1)?]));
    let u32_at = |i: usize| {
        Some(u32::from_le_bytes([
            *b.get(i)?,
            *b.get(i + 1)?,
            *b.get(i + 2)?,
            *b.get(i + 3)?,
        ]))
    };
    let ifd = u32_at(4)? as usize;
    let n = usize::from(u16_at(ifd)?);
    for k in 0..n {
        let e = ifd + 2 + 12 * k;
        if u16_at(e)? == tag {
            return Some((e, u16_at(e + 2)?, u32_at(e + 4)?, u32_at(e + 8)?));
        }
    }
    None
}

/// The LONG array of a first-IFD tag (inline when count is 1).
pub fn ifd0_longs(b: &[u8], tag: u16) -> Option<Vec<u32>> {
    let (_, typ, count, field) = ifd0_entry(b, tag)?;
    if typ != 4 {
        return None;
    }
    if count == 1 {
        return Some(vec![field]);
    }
    let at = field as usize;
    (0..count as usize)
        .map(|i| {
            b.get(at + 4 * i..at + 4 * i + 4)
                .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        })
        .collect()
}

/// Byte ranges of the TIFF structure of a classic little-endian TIFF: every IFD (entries and
/// next pointer) and every out-of-line tag value of the main IFD chain.
pub fn structure_ranges(b: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    out.push(0..8.min(b.len()));
    let u16_at = |i: usize| b.get(i..i + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |i: usize| {
        b.get(i..i + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let mut ifd = u32_at(4).unwrap_or(0) as usize;
    let mut guard = 0;
    while ifd != 0 && guard < 64 {
        guard += 1;
        let Some(n) = u16_at(ifd).map(usize::from) else {
            break;
        };
        out.push(ifd..(ifd + 2 + 12 * n + 4).min(b.len()));
        for k in 0..n {
            let e = ifd + 2 + 12 * k;
            let (Some(typ), Some(count), Some(field)) =
                (u16_at(e + 2), u32_at(e + 4), u32_at(e + 8))
            else {
                break;
            };
            let size = match typ {
                1 | 2 | 6 | 7 => 1,
                3 | 8 => 2,
                4 | 9 | 11 => 4,
                5 | 10 | 12 => 8,
                _ => 0,
            } * count as usize;
            if size > 4 {
                let at = field as usize;
                out.push(at.min(b.len())..(at + size).min(b.len()));
            }
        }
        ifd = u32_at(ifd + 2 + 12 * n).unwrap_or(0) as usize;
    }
    out
}

/// `../shared/fixtures` (or `$PBIP_SLIDE_FIXTURE_DIR`).
pub fn fixtures_dir() -> std::path::PathBuf {
    match std::env::var("PBIP_SLIDE_FIXTURE_DIR") {
        Ok(d) if !d.is_empty() => std::path::PathBuf::from(d),
        _ => pbip_testdata::fixtures_dir(),
    }
}

/// The real Aperio slide `CMU-1-Small-Region.svs` (in `../shared/data`).
pub fn cmu1_path() -> std::path::PathBuf {
    pbip_testdata::data_dir().join("CMU-1-Small-Region.svs")
}
