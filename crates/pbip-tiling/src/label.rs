//! Connected-component labelling: the one union-find and the one labeller of the workspace.
//!
//! The tissue components here ([`crate::label_components`]) and pbip-post's morphology, streaming
//! small-component removal and polygon tracing all label with the [`RowLabeler`]: it assigns each
//! pixel a *provisional* label that depends only on the pixels already seen (raster order), never
//! on the union-find state, so labelling the same rows twice gives the same provisional labels
//! (pbip-post's two-pass streaming removal relies on that). Pixels with the same value that touch
//! (4- or 8-connectivity) form a component; the root of a component is its smallest provisional
//! label, which belongs to its first pixel in raster order. [`label_image`] labels a whole image
//! with it, as `skimage.measure.label` does.

use crate::error::TilingError;

/// Pixel connectivity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connectivity {
    /// 4-connectivity (skimage `connectivity=1`).
    Four,
    /// 8-connectivity (skimage `connectivity=2`).
    Eight,
}

/// Union-find over `u32` ids (path halving; [`UnionFind::union`] keeps the smaller root).
#[derive(Debug, Default, Clone)]
pub struct UnionFind {
    parent: Vec<u32>,
}

impl UnionFind {
    /// Adds a new singleton set; returns its id (the number of ids before the call).
    pub fn push(&mut self) -> u32 {
        let id = self.parent.len() as u32;
        self.parent.push(id);
        id
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.parent.len()
    }

    /// True when there is no id.
    pub fn is_empty(&self) -> bool {
        self.parent.is_empty()
    }

    /// Root of `x`'s set.
    pub fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let p = self.parent[x as usize];
            self.parent[x as usize] = self.parent[p as usize];
            x = p;
        }
        x
    }

    /// Merges the sets of `a` and `b`; the smaller root becomes the root of both.
    pub fn union(&mut self, a: u32, b: u32) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.parent[hi as usize] = lo;
        }
    }

    /// Merges root `other` into root `survivor` (the caller picks which root survives; both must
    /// be roots, as [`UnionFind::find`] returns them).
    pub fn attach(&mut self, other: u32, survivor: u32) {
        self.parent[other as usize] = survivor;
    }
}

/// Row-by-row connected-component labelling (see the module docs). Provisional label 0 is the
/// background (pixels equal to `background`); the others start at 1.
#[derive(Debug)]
pub struct RowLabeler {
    width: usize,
    background: Option<u8>,
    conn: Connectivity,
    prev_vals: Vec<u8>,
    prev_ids: Vec<u32>,
    cur_ids: Vec<u32>,
    rows_seen: usize,
    uf: UnionFind,
}

impl RowLabeler {
    /// A labeller of rows of `width` pixels; `background = None` labels every pixel.
    pub fn new(width: usize, background: Option<u8>, conn: Connectivity) -> Self {
        let mut uf = UnionFind::default();
        uf.push(); // id 0 = background
        Self {
            width,
            background,
            conn,
            prev_vals: vec![0; width],
            prev_ids: vec![0; width],
            cur_ids: vec![0; width],
            rows_seen: 0,
            uf,
        }
    }

    /// Labels the next row (`vals` holds at least `width` pixels); returns its provisional labels.
    pub fn push_row(&mut self, vals: &[u8]) -> &[u32] {
        std::mem::swap(&mut self.prev_ids, &mut self.cur_ids);
        let w = self.width;
        let has_prev = self.rows_seen > 0;
        for x in 0..w {
            let v = vals[x];
            if Some(v) == self.background {
                self.cur_ids[x] = 0;
                continue;
            }
            let mut id = 0u32;
            let mut join = |cand: u32, uf: &mut UnionFind| {
                if id == 0 {
                    id = cand;
                } else if cand != id {
                    uf.union(id, cand);
                }
            };
            if x > 0 && vals[x - 1] == v {
                join(self.cur_ids[x - 1], &mut self.uf);
            }
            if has_prev {
                let (lo, hi) = match self.conn {
                    Connectivity::Four => (x, x),
                    Connectivity::Eight => (x.saturating_sub(1), (x + 1).min(w - 1)),
                };
                for xx in lo..=hi {
                    if self.prev_vals[xx] == v {
                        join(self.prev_ids[xx], &mut self.uf);
                    }
                }
            }
            if id == 0 {
                id = self.uf.push();
            }
            self.cur_ids[x] = id;
        }
        self.prev_vals.copy_from_slice(&vals[..w]);
        self.rows_seen += 1;
        &self.cur_ids
    }

    /// Root (smallest provisional label) of the component of provisional label `id`, as far as
    /// the rows seen so far connect it.
    pub fn find(&mut self, id: u32) -> u32 {
        self.uf.find(id)
    }

    /// Number of provisional labels handed out so far, background included.
    pub fn id_count(&self) -> usize {
        self.uf.len()
    }
}

/// Connected components of equal-valued pixels (`skimage.measure.label(image, background,
/// connectivity)`) of a row-major `width x height` image: returns `(labels, n)` with labels 0
/// (pixels equal to `background`) and 1..=n in raster order of each component's first pixel.
/// `background = None` labels every pixel.
pub fn label_image(
    image: &[u8],
    width: usize,
    height: usize,
    background: Option<u8>,
    conn: Connectivity,
) -> Result<(Vec<u32>, usize), TilingError> {
    let (w, h) = (width, height);
    if w.checked_mul(h) != Some(image.len()) {
        return Err(TilingError::param(
            "image size",
            format!(
                "label_image: array has {} values, expected width*height = {w}*{h}",
                image.len()
            ),
        ));
    }
    if w * h >= u32::MAX as usize {
        return Err(TilingError::param(
            "image size",
            format!("label_image: {w}x{h} is too large for u32 labels"),
        ));
    }
    let mut out = vec![0u32; w * h];
    if w == 0 {
        return Ok((out, 0));
    }
    let mut lab = RowLabeler::new(w, background, conn);
    for (row, ids) in image.chunks_exact(w).zip(out.chunks_exact_mut(w)) {
        ids.copy_from_slice(lab.push_row(row));
    }
    // Roots are the provisional labels of first pixels, met in raster order.
    let mut root_label = vec![0u32; lab.id_count()];
    let mut n = 0u32;
    for id in out.iter_mut() {
        if *id == 0 {
            continue;
        }
        let r = lab.find(*id) as usize;
        if root_label[r] == 0 {
            n += 1;
            root_label[r] = n;
        }
        *id = root_label[r];
    }
    Ok((out, n as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent reference: flood fill from each unlabelled pixel in raster order.
    fn flood_fill(
        img: &[u8],
        w: usize,
        h: usize,
        bg: Option<u8>,
        conn: Connectivity,
    ) -> (Vec<u32>, usize) {
        let neigh: &[(isize, isize)] = match conn {
            Connectivity::Four => &[(-1, 0), (1, 0), (0, -1), (0, 1)],
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
        let mut labels = vec![0u32; img.len()];
        let mut n = 0u32;
        for start in 0..img.len() {
            if labels[start] != 0 || Some(img[start]) == bg {
                continue;
            }
            n += 1;
            labels[start] = n;
            let mut stack = vec![start];
            while let Some(p) = stack.pop() {
                let (x, y) = ((p % w) as isize, (p / w) as isize);
                for &(dx, dy) in neigh {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                        continue;
                    }
                    let q = ny as usize * w + nx as usize;
                    if labels[q] == 0 && img[q] == img[p] {
                        labels[q] = n;
                        stack.push(q);
                    }
                }
            }
        }
        (labels, n as usize)
    }

    #[test]
    fn label_image_equals_flood_fill() {
        // xorshift: no rand dependency in this crate.
        let mut s = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for &(w, h, k) in &[(1, 1, 2), (7, 5, 2), (31, 17, 3), (64, 40, 2), (5, 60, 4)] {
            let img: Vec<u8> = (0..w * h).map(|_| (next() % k) as u8).collect();
            for conn in [Connectivity::Four, Connectivity::Eight] {
                for bg in [None, Some(0u8)] {
                    let got = label_image(&img, w, h, bg, conn).unwrap();
                    assert_eq!(
                        got,
                        flood_fill(&img, w, h, bg, conn),
                        "{w}x{h} {conn:?} {bg:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn checkerboard_connectivity() {
        let img = [1u8, 0, 1, 0, 1, 0, 1, 0, 1];
        let four = label_image(&img, 3, 3, Some(0), Connectivity::Four).unwrap();
        assert_eq!(four, (vec![1, 0, 2, 0, 3, 0, 4, 0, 5], 5));
        let eight = label_image(&img, 3, 3, Some(0), Connectivity::Eight).unwrap();
        assert_eq!(eight, (vec![1, 0, 1, 0, 1, 0, 1, 0, 1], 1));
        let all = label_image(&img, 3, 3, None, Connectivity::Eight).unwrap();
        assert_eq!(all, (vec![1, 2, 1, 2, 1, 2, 1, 2, 1], 2));
    }

    #[test]
    fn wrong_length_is_an_error() {
        assert!(label_image(&[0u8; 5], 2, 3, None, Connectivity::Four).is_err());
    }
}
