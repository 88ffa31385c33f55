//! Streaming connected components: labels a map row by row with pbip-tiling's [`RowLabeler`] (a
//! union-find over provisional labels), so a whole-slide map is never held in memory (only the
//! current and previous rows, the union-find and per-component statistics).
//!
//! [`RowLabeler`] assigns each pixel a *provisional* label that depends only on the pixels already
//! seen (raster order), never on the union-find state: labelling the same rows twice gives the same
//! provisional labels. Two passes therefore suffice for [`remove_small_components_planes`]: the first
//! gathers component sizes and neighbour counts, the second relabels. Components equal those of
//! [`crate::morph::label_components`] (pixels with the same value that touch); the root of a
//! component is its smallest provisional label, which belongs to its first pixel in raster order.

use std::collections::HashMap;

use pbip_tiling::RowLabeler;

use crate::NO_LABEL;
use crate::error::{Result, invalid};
use crate::morph::Connectivity;
use crate::plane::{Planes, Rect};

/// Rows per read when streaming a plane (about 4 MiB of u8 per band).
fn band_rows(width: usize) -> usize {
    ((4 << 20) / width.max(1)).clamp(1, 4096)
}

/// Streaming version of [`crate::morph::remove_small_components_labels`] (identical result):
/// every per-value connected component of `src` smaller than `min_size` pixels is replaced by the
/// majority label among the pixels adjacent to it (`conn`) that belong to kept components (falling
/// back to all adjacent pixels; ties to the lower value). With `include_background` the
/// [`NO_LABEL`] pixels form components too (small holes are filled). Writes `dst` (may not be
/// `src`) and returns the number of components replaced.
pub fn remove_small_components_planes(
    src: &Planes<u8>,
    dst: &Planes<u8>,
    min_size: usize,
    conn: Connectivity,
    include_background: bool,
) -> Result<usize> {
    let (w, h) = (src.width(), src.height());
    if dst.width() != w || dst.height() != h {
        return invalid(format!(
            "remove_small_components: output is {}x{}, input {w}x{h}",
            dst.width(),
            dst.height()
        ));
    }
    if w == 0 || h == 0 {
        return Ok(0);
    }
    let bg = (!include_background).then_some(NO_LABEL);
    let band = band_rows(w);
    // Pass 1: sizes, values and neighbour counts per provisional label.
    let mut lab = RowLabeler::new(w, bg, conn);
    let mut sizes: Vec<u64> = vec![0];
    let mut vals: Vec<u8> = vec![NO_LABEL];
    // (root-at-insertion a, root b) -> number of (pixel of a, adjacent pixel of b) pairs.
    let mut pairs: HashMap<(u32, u32), u64> = HashMap::new();
    let mut compact_at = 1usize << 20;
    let mut prev_row: Vec<u8> = Vec::new();
    let mut prev_ids: Vec<u32> = Vec::new();
    for y0 in (0..h).step_by(band) {
        let rows = band.min(h - y0);
        let data = src.read_rows(0, y0, rows)?;
        for row in data.chunks_exact(w) {
            let ids = lab.push_row(row).to_vec();
            for x in 0..w {
                let id = ids[x];
                if id as usize >= sizes.len() {
                    sizes.resize(id as usize + 1, 0);
                    vals.resize(id as usize + 1, NO_LABEL);
                }
                sizes[id as usize] += 1;
                vals[id as usize] = row[x];
            }
            let mut add = |p: (u32, u8), q: (u32, u8), lab: &mut RowLabeler| {
                if p.1 == q.1 {
                    return;
                }
                let (a, b) = (lab.find(p.0), lab.find(q.0));
                *pairs.entry((a, b)).or_insert(0) += 1;
                *pairs.entry((b, a)).or_insert(0) += 1;
            };
            for x in 0..w {
                let p = (ids[x], row[x]);
                if x > 0 {
                    add(p, (ids[x - 1], row[x - 1]), &mut lab);
                }
                if !prev_row.is_empty() {
                    let (lo, hi) = match conn {
                        Connectivity::Four => (x, x),
                        Connectivity::Eight => (x.saturating_sub(1), (x + 1).min(w - 1)),
                    };
                    for xx in lo..=hi {
                        add(p, (prev_ids[xx], prev_row[xx]), &mut lab);
                    }
                }
            }
            prev_row.clear();
            prev_row.extend_from_slice(row);
            prev_ids = ids;
            if pairs.len() > compact_at {
                let mut re: HashMap<(u32, u32), u64> = HashMap::with_capacity(pairs.len());
                for ((a, b), c) in pairs.drain() {
                    *re.entry((lab.find(a), lab.find(b))).or_insert(0) += c;
                }
                pairs = re;
                compact_at = (2 * pairs.len()).max(1 << 20);
            }
        }
    }
    let n_ids = lab.id_count();
    sizes.resize(n_ids, 0);
    vals.resize(n_ids, NO_LABEL);
    let roots: Vec<u32> = (0..n_ids as u32).map(|i| lab.find(i)).collect();
    let mut root_size = vec![0u64; n_ids];
    for (i, &r) in roots.iter().enumerate() {
        root_size[r as usize] += sizes[i];
    }
    // Label 0 (background when excluded) is never small.
    let small = |r: u32| r != 0 && root_size[r as usize] < min_size as u64;
    // Per small root: value -> (count over kept neighbours, count over all neighbours).
    let mut hist: HashMap<u32, Vec<(u8, u64, u64)>> = HashMap::new();
    let mut merged: HashMap<(u32, u32), u64> = HashMap::with_capacity(pairs.len());
    for ((a, b), c) in pairs {
        let (ra, rb) = (roots[a as usize], roots[b as usize]);
        if ra != rb && small(ra) {
            *merged.entry((ra, rb)).or_insert(0) += c;
        }
    }
    for ((ra, rb), c) in merged {
        let v = vals[rb as usize];
        let kept = !small(rb);
        let e = hist.entry(ra).or_default();
        match e.iter_mut().find(|t| t.0 == v) {
            Some(t) => {
                t.2 += c;
                if kept {
                    t.1 += c;
                }
            }
            None => e.push((v, if kept { c } else { 0 }, c)),
        }
    }
    let pick = |entries: &[(u8, u64, u64)], kept: bool| -> Option<u8> {
        let mut best: Option<(u64, u8)> = None;
        for &(v, ck, ca) in entries {
            let c = if kept { ck } else { ca };
            if c > 0 && best.is_none_or(|(bc, bv)| c > bc || (c == bc && v < bv)) {
                best = Some((c, v));
            }
        }
        best.map(|(_, v)| v)
    };
    let mut replacement: Vec<Option<u8>> = vec![None; n_ids];
    let mut replaced = 0usize;
    for r in 0..n_ids as u32 {
        if roots[r as usize] != r || !small(r) {
            continue;
        }
        let entries = hist.get(&r).map(Vec::as_slice).unwrap_or(&[]);
        let rep = pick(entries, true).or_else(|| pick(entries, false));
        if rep.is_some() {
            replaced += 1;
        }
        replacement[r as usize] = rep;
    }
    let by_id: Vec<Option<u8>> = roots.iter().map(|&r| replacement[r as usize]).collect();
    // Pass 2: the same provisional labels again, mapped to their replacement.
    let mut lab = RowLabeler::new(w, bg, conn);
    for y0 in (0..h).step_by(band) {
        let rows = band.min(h - y0);
        let mut data = src.read_rows(0, y0, rows)?;
        for row in data.chunks_exact_mut(w) {
            let ids = lab.push_row(row);
            for (v, &id) in row.iter_mut().zip(ids) {
                if let Some(r) = by_id.get(id as usize).copied().flatten() {
                    *v = r;
                }
            }
        }
        dst.write_rect(0, Rect::new(0, y0, w, rows), &data)?;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The former whole-map implementation (components labelled at once, neighbour histograms per
    /// pixel), kept as an independent reference.
    fn reference_remove_small(
        labels: &[u8],
        w: usize,
        h: usize,
        min_size: usize,
        conn: Connectivity,
        include_background: bool,
    ) -> Vec<u8> {
        let bg = if include_background {
            None
        } else {
            Some(NO_LABEL)
        };
        let (comp, n) = crate::morph::label_components(labels, w, h, bg, conn).unwrap();
        let mut sizes = vec![0usize; n + 1];
        for &l in &comp {
            sizes[l as usize] += 1;
        }
        let small = |l: u32| l != 0 && sizes[l as usize] < min_size;
        let offs: &[(isize, isize)] = match conn {
            Connectivity::Four => &[(0, -1), (-1, 0), (1, 0), (0, 1)],
            Connectivity::Eight => &[
                (-1, -1),
                (0, -1),
                (1, -1),
                (-1, 0),
                (1, 0),
                (-1, 1),
                (0, 1),
                (1, 1),
            ],
        };
        let mut hk: HashMap<u32, [u32; 256]> = HashMap::new();
        let mut ha: HashMap<u32, [u32; 256]> = HashMap::new();
        for y in 0..h {
            for x in 0..w {
                let ci = comp[y * w + x];
                if !small(ci) {
                    continue;
                }
                for &(dx, dy) in offs {
                    let (xx, yy) = (x as isize + dx, y as isize + dy);
                    if xx < 0 || yy < 0 || xx >= w as isize || yy >= h as isize {
                        continue;
                    }
                    let j = yy as usize * w + xx as usize;
                    if comp[j] == ci {
                        continue;
                    }
                    ha.entry(ci).or_insert([0; 256])[labels[j] as usize] += 1;
                    if !small(comp[j]) {
                        hk.entry(ci).or_insert([0; 256])[labels[j] as usize] += 1;
                    }
                }
            }
        }
        let pick = |hst: &[u32; 256]| -> Option<u8> {
            let mut best: Option<(u32, usize)> = None;
            for (v, &c) in hst.iter().enumerate() {
                if c > 0 && best.is_none_or(|(bc, _)| c > bc) {
                    best = Some((c, v));
                }
            }
            best.map(|(_, v)| v as u8)
        };
        labels
            .iter()
            .zip(&comp)
            .map(|(&v, &c)| {
                if !small(c) {
                    return v;
                }
                hk.get(&c)
                    .and_then(pick)
                    .or_else(|| ha.get(&c).and_then(pick))
                    .unwrap_or(v)
            })
            .collect()
    }

    #[test]
    fn streaming_removal_equals_reference() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
        let dir = tempfile::tempdir().unwrap();
        for &(w, h, k, p_keep, min) in &[
            (1, 1, 2, 0.0, 2),
            (13, 9, 2, 0.0, 3),
            (40, 31, 3, 0.6, 5),
            (64, 64, 2, 0.8, 20),
            (7, 90, 3, 0.7, 4),
        ] {
            let mut img = vec![0u8; w * h];
            for y in 0..h {
                for x in 0..w {
                    img[y * w + x] = if rng.random_bool(p_keep) && x > 0 {
                        img[y * w + x - 1]
                    } else if rng.random_bool(0.2) {
                        NO_LABEL
                    } else {
                        rng.random_range(0..k) as u8
                    };
                }
            }
            for conn in [Connectivity::Four, Connectivity::Eight] {
                for bg in [false, true] {
                    let want = reference_remove_small(&img, w, h, min, conn, bg);
                    let src = Planes::scratch_file(&dir.path().join("src"), w, h, 1).unwrap();
                    src.write_rect(0, Rect::new(0, 0, w, h), &img).unwrap();
                    let dst = Planes::scratch_file(&dir.path().join("dst"), w, h, 1).unwrap();
                    remove_small_components_planes(&src, &dst, min, conn, bg).unwrap();
                    assert_eq!(dst.to_vec().unwrap(), want, "{w}x{h} {conn:?} bg {bg}");
                }
            }
        }
    }
}
