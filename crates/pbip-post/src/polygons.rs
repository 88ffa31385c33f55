//! Streaming polygon tracing of label maps: class regions become polygons (exterior + holes) on the
//! pixel-corner grid, one row at a time, so a whole-slide mask is never held in memory.
//!
//! Geometry (the same as [`crate::export`]'s docs): pixel `(x, y)` covers `[x, x+1] x [y, y+1]`;
//! every pixel side between the class and anything else (or the image border) is a directed
//! *crack* with the class on its right-hand side (image coordinates, y down): a pixel's top side
//! goes +x, its right side +y, its bottom side -x, its left side -y. At a vertex, an incoming crack
//! of direction `d` continues with the first outgoing crack among `(d+1) % 4` (turn toward the
//! class), `d`, `(d+3) % 4`: at a diagonal "saddle" the two class pixels stay separate, consistent
//! with 4-connectivity. Rings keep only their corners (collinear vertices are dropped), start at
//! their top-left-most corner and are closed (first point repeated). A ring that passes a corner
//! twice (a hole touching the outside, or two holes touching, at a saddle) is split there into
//! simple rings, as OGC simple features require (rings may touch each other at a point, never
//! themselves). Rings with positive shoelace area are exteriors; the others are holes. Every ring
//! is the boundary of exactly one 4-connected
//! component of the class (its pixels on the right of the ring), found with the streaming
//! [`crate::components`] labeller; each component gives one [`Polygon`] (its exterior and its
//! holes), in raster order of the component's first pixel; holes are sorted by their start corner.
//!
//! Memory: the open chains cross the current row (at most `width + 1` of them) plus the points of
//! the rings, i.e. the size of the output.

use std::collections::{HashMap, VecDeque};

use pbip_tiling::{RowLabeler, UnionFind};

use crate::error::{Result, invalid};
use crate::morph::Connectivity;

/// One polygon in output-grid corner coordinates: exterior ring and holes, each ring closed.
#[derive(Debug, Clone, PartialEq)]
pub struct Polygon {
    /// Exterior ring (closed).
    pub exterior: Vec<(i64, i64)>,
    /// Hole rings (closed).
    pub holes: Vec<Vec<(i64, i64)>>,
}

/// Directions: 0 = +x, 1 = +y, 2 = -x, 3 = -y.
type Dir = u8;

#[derive(Debug)]
struct Chain {
    /// Corners strictly inside the chain, in travel order.
    pts: VecDeque<(i64, i64)>,
    head_dir: Dir,
    tail_dir: Dir,
    /// Provisional component label of a class pixel on the chain's right.
    comp: u32,
}

/// A crack at the vertex being processed: one of an existing chain, or created at this vertex
/// (right = `H(x, y)`, down = `V(x, y)`) with the provisional label of its class pixel.
#[derive(Debug, Clone, Copy)]
enum Crack {
    Old(u32),
    New { slot: Slot, comp: u32 },
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Right,
    Down,
}

/// A closed ring with the provisional label of its component.
#[derive(Debug)]
struct Ring {
    pts: Vec<(i64, i64)>,
    comp: u32,
}

/// Traces the polygons of one class, fed one row at a time (see the module docs).
#[derive(Debug)]
pub struct PolygonTracer {
    width: usize,
    class: u8,
    rows_seen: usize,
    prev: Vec<bool>,
    labeler: RowLabeler,
    prev_ids: Vec<u32>,
    /// Chain slab; merged chains forward to their survivor (`chain_sets`).
    chains: Vec<Option<Chain>>,
    chain_sets: UnionFind,
    /// Chain of the vertical crack `V(x, y-1)` entering the vertex row being processed, per x.
    open: Vec<Option<u32>>,
    rings: Vec<Ring>,
}

fn dir_of(a: (i64, i64), b: (i64, i64)) -> Dir {
    if b.0 > a.0 {
        0
    } else if b.1 > a.1 {
        1
    } else if b.0 < a.0 {
        2
    } else {
        3
    }
}

impl PolygonTracer {
    /// A tracer of pixels equal to `class` in rows of `width` pixels.
    pub fn new(width: usize, class: u8) -> Self {
        Self {
            width,
            class,
            rows_seen: 0,
            prev: vec![false; width],
            labeler: RowLabeler::new(width, Some(0), Connectivity::Four),
            prev_ids: vec![0; width],
            chains: Vec::new(),
            chain_sets: UnionFind::default(),
            open: vec![None; width + 1],
            rings: Vec::new(),
        }
    }

    fn new_chain(&mut self, head_dir: Dir, tail_dir: Dir, comp: u32) -> u32 {
        let id = self.chains.len() as u32;
        self.chains.push(Some(Chain {
            pts: VecDeque::new(),
            head_dir,
            tail_dir,
            comp,
        }));
        self.chain_sets.push();
        id
    }

    /// Links the end of crack-chain `inc` (its tail) at vertex `v` to the start of `out` (its head).
    fn link(&mut self, inc: u32, out: u32, v: (i64, i64)) -> Result<()> {
        let (a, b) = (self.chain_sets.find(inc), self.chain_sets.find(out));
        if a == b {
            let Some(mut ch) = self.chains[a as usize].take() else {
                return invalid("polygon tracer: chain vanished (internal error)");
            };
            if ch.tail_dir != ch.head_dir {
                ch.pts.push_back(v);
            }
            self.rings.push(Ring {
                pts: ch.pts.into(),
                comp: ch.comp,
            });
            return Ok(());
        }
        let (Some(ca), Some(cb)) = (
            self.chains[a as usize].take(),
            self.chains[b as usize].take(),
        ) else {
            return invalid("polygon tracer: chain vanished (internal error)");
        };
        let corner = ca.tail_dir != cb.head_dir;
        let merged = if ca.pts.len() >= cb.pts.len() {
            let mut m = ca;
            if corner {
                m.pts.push_back(v);
            }
            m.pts.extend(cb.pts);
            m.tail_dir = cb.tail_dir;
            self.chain_sets.attach(b, a);
            (a, m)
        } else {
            let mut m = cb;
            if corner {
                m.pts.push_front(v);
            }
            for &p in ca.pts.iter().rev() {
                m.pts.push_front(p);
            }
            m.head_dir = ca.head_dir;
            m.comp = ca.comp;
            self.chain_sets.attach(a, b);
            (b, m)
        };
        self.chains[merged.0 as usize] = Some(merged.1);
        Ok(())
    }

    /// Adds the next row of labels (`width` values).
    pub fn push_row(&mut self, row: &[u8]) -> Result<()> {
        if row.len() != self.width {
            return invalid(format!(
                "polygon tracer: row of {} values, expected {}",
                row.len(),
                self.width
            ));
        }
        let cur: Vec<bool> = row.iter().map(|&l| l == self.class).collect();
        let vals: Vec<u8> = cur.iter().map(|&b| b as u8).collect();
        let cur_ids = self.labeler.push_row(&vals).to_vec();
        self.vertex_row(&cur, &cur_ids)?;
        self.prev = cur;
        self.prev_ids = cur_ids;
        self.rows_seen += 1;
        Ok(())
    }

    /// Processes vertex row `y = rows_seen` between the previous row and `cur` (or the bottom
    /// border when `cur` is empty). Cracks created here that continue an existing chain extend it;
    /// a chain is allocated only where a boundary starts (both cracks at a vertex new).
    fn vertex_row(&mut self, cur: &[bool], cur_ids: &[u32]) -> Result<()> {
        let w = self.width;
        let y = self.rows_seen as i64;
        let last = cur.is_empty();
        let at = |v: &[bool], x: isize| -> bool { x >= 0 && (x as usize) < w && v[x as usize] };
        let mut new_open: Vec<Option<u32>> = vec![None; w + 1];
        // Chain of the horizontal crack H(x-1, y) arriving from the left, with its direction.
        let mut pending_h: Option<(u32, Dir)> = None;
        for x in 0..=w {
            let xi = x as isize;
            let v = (x as i64, y);
            // Incoming (direction, crack) and outgoing cracks (by direction) at this vertex.
            let mut incoming: [Option<(Dir, Crack)>; 2] = [None, None];
            let mut outgoing: [Option<Crack>; 4] = [None; 4];
            let push_in = |d: Dir, c: Crack, incoming: &mut [Option<(Dir, Crack)>; 2]| {
                if incoming[0].is_none() {
                    incoming[0] = Some((d, c));
                } else {
                    incoming[1] = Some((d, c));
                }
            };
            // Up crack V(x, y-1): +y enters here, -y leaves.
            if let Some(c) = self.open[x] {
                if at(&self.prev, xi - 1) {
                    push_in(1, Crack::Old(c), &mut incoming);
                } else {
                    outgoing[3] = Some(Crack::Old(c));
                }
            }
            // Left crack H(x-1, y): +x enters, -x leaves.
            let mut right_dir = None;
            if let Some((c, d)) = pending_h.take() {
                if d == 0 {
                    push_in(0, Crack::Old(c), &mut incoming);
                } else {
                    outgoing[2] = Some(Crack::Old(c));
                }
            }
            // Right crack H(x, y), created here.
            if x < w {
                let above = at(&self.prev, xi);
                let below = !last && cur[x];
                if above != below {
                    let (d, comp) = if below {
                        (0, cur_ids[x])
                    } else {
                        (2, self.prev_ids[x])
                    };
                    let c = Crack::New {
                        slot: Slot::Right,
                        comp,
                    };
                    if d == 0 {
                        outgoing[0] = Some(c);
                    } else {
                        push_in(2, c, &mut incoming);
                    }
                    right_dir = Some(d);
                }
            }
            // Down crack V(x, y), created here.
            if !last {
                let left = at(cur, xi - 1);
                let right = at(cur, xi);
                if left != right {
                    let (d, comp) = if left {
                        (1, cur_ids[x - 1])
                    } else {
                        (3, cur_ids[x])
                    };
                    let c = Crack::New {
                        slot: Slot::Down,
                        comp,
                    };
                    if d == 1 {
                        outgoing[1] = Some(c);
                    } else {
                        push_in(3, c, &mut incoming);
                    }
                }
            }
            let (mut right_chain, mut down_chain) = (None, None);
            let mut assign = |slot: Slot, c: u32| match slot {
                Slot::Right => right_chain = Some(c),
                Slot::Down => down_chain = Some(c),
            };
            for (d_in, inc) in incoming.into_iter().flatten() {
                let next = [(d_in + 1) % 4, d_in, (d_in + 3) % 4]
                    .into_iter()
                    .find_map(|nd| outgoing[nd as usize].take().map(|c| (nd, c)));
                let Some((d_out, out)) = next else {
                    return invalid(format!(
                        "polygon tracer: dangling boundary at vertex {v:?} (internal error)"
                    ));
                };
                match (inc, out) {
                    (Crack::Old(a), Crack::Old(b)) => self.link(a, b, v)?,
                    (Crack::Old(a), Crack::New { slot, .. }) => {
                        let r = self.chain_sets.find(a);
                        let Some(ch) = self.chains[r as usize].as_mut() else {
                            return invalid("polygon tracer: chain vanished (internal error)");
                        };
                        if ch.tail_dir != d_out {
                            ch.pts.push_back(v);
                        }
                        ch.tail_dir = d_out;
                        assign(slot, r);
                    }
                    (Crack::New { slot, .. }, Crack::Old(b)) => {
                        let r = self.chain_sets.find(b);
                        let Some(ch) = self.chains[r as usize].as_mut() else {
                            return invalid("polygon tracer: chain vanished (internal error)");
                        };
                        if ch.head_dir != d_in {
                            ch.pts.push_front(v);
                        }
                        ch.head_dir = d_in;
                        assign(slot, r);
                    }
                    (Crack::New { slot: s1, comp }, Crack::New { slot: s2, .. }) => {
                        let c = self.new_chain(d_in, d_out, comp);
                        if d_in != d_out
                            && let Some(ch) = self.chains[c as usize].as_mut()
                        {
                            ch.pts.push_back(v);
                        }
                        assign(s1, c);
                        assign(s2, c);
                    }
                }
            }
            if outgoing.iter().any(Option::is_some) {
                return invalid(format!(
                    "polygon tracer: unmatched boundary at vertex {v:?} (internal error)"
                ));
            }
            if let Some(d) = right_dir {
                let Some(c) = right_chain else {
                    return invalid("polygon tracer: unlinked crack (internal error)");
                };
                pending_h = Some((c, d));
            }
            if let Some(c) = down_chain {
                new_open[x] = Some(c);
            }
        }
        self.open = new_open;
        Ok(())
    }

    /// Closes the bottom border and returns the polygons (see the module docs).
    pub fn finish(mut self) -> Result<Vec<Polygon>> {
        self.vertex_row(&[], &[])?;
        if self.chains.iter().any(Option::is_some) {
            return invalid("polygon tracer: open boundary at the end (internal error)");
        }
        let mut outers: HashMap<u32, Vec<(i64, i64)>> = HashMap::new();
        let mut holes: HashMap<u32, Vec<Vec<(i64, i64)>>> = HashMap::new();
        for ring in std::mem::take(&mut self.rings) {
            let root = self.labeler.find(ring.comp);
            for pts in split_pinches(ring.pts) {
                let pts = normalise_ring(pts);
                if ring_area2(&pts) > 0 {
                    if outers.insert(root, pts).is_some() {
                        return invalid(
                            "polygon tracer: two exteriors for one component (internal error)",
                        );
                    }
                } else {
                    holes.entry(root).or_default().push(pts);
                }
            }
        }
        let mut roots: Vec<u32> = outers.keys().copied().collect();
        roots.sort_unstable();
        let mut polys = Vec::with_capacity(roots.len());
        for r in roots {
            let Some(exterior) = outers.remove(&r) else {
                continue;
            };
            let mut hs = holes.remove(&r).unwrap_or_default();
            hs.sort_by_key(|h| (h[0].1, h[0].0, dir_of(h[0], h[1])));
            polys.push(Polygon {
                exterior,
                holes: hs,
            });
        }
        if !holes.is_empty() {
            return invalid("polygon tracer: hole without exterior (internal error)");
        }
        Ok(polys)
    }
}

/// Twice the signed (shoelace) area of a closed ring; positive = clockwise on screen (y down),
/// i.e. an exterior in the crack orientation of the module docs.
fn ring_area2(pts: &[(i64, i64)]) -> i64 {
    pts.windows(2)
        .map(|p| p[0].0 * p[1].1 - p[1].0 * p[0].1)
        .sum()
}

/// Splits a ring of corners (not closed) at every corner it passes twice into simple rings.
///
/// With 4-connected classes a ring passes a corner twice only at a saddle where the
/// 8-connected background touches itself: an exterior pinched there is a shell plus a hole
/// touching it at that point ("inverted hole"), a pinched hole is two holes touching at a point.
/// OGC simple features (shapely, JTS, QuPath) require the split form: a ring may not touch
/// itself, while rings may touch each other at single points. Both passes turn at a saddle, so
/// the split point stays a corner of each part.
fn split_pinches(pts: Vec<(i64, i64)>) -> Vec<Vec<(i64, i64)>> {
    let mut stack: Vec<(i64, i64)> = Vec::with_capacity(pts.len());
    let mut at: HashMap<(i64, i64), usize> = HashMap::with_capacity(pts.len());
    let mut parts = Vec::new();
    for p in pts {
        if let Some(&i) = at.get(&p) {
            let part: Vec<(i64, i64)> = stack.drain(i..).collect();
            for q in &part {
                at.remove(q);
            }
            parts.push(part);
        }
        at.insert(p, stack.len());
        stack.push(p);
    }
    if !stack.is_empty() {
        parts.push(stack);
    }
    parts
}

/// Rotates a ring of corners to start at its top-left-most corner (the occurrence leaving in the
/// lowest direction when the ring passes that corner twice) and closes it.
fn normalise_ring(pts: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    let n = pts.len();
    if n == 0 {
        return pts;
    }
    let key = |i: usize| {
        let p = pts[i];
        (p.1, p.0, dir_of(p, pts[(i + 1) % n]))
    };
    let start = (0..n).min_by_key(|&i| key(i)).unwrap_or(0);
    let mut out: Vec<(i64, i64)> = pts[start..].iter().chain(&pts[..start]).copied().collect();
    out.push(out[0]);
    out
}

/// Polygons of every class `0..num_classes` from rows fed once (one tracer per class).
#[derive(Debug)]
pub struct MultiClassTracer {
    tracers: Vec<PolygonTracer>,
}

impl MultiClassTracer {
    /// Tracers for classes `0..num_classes` in rows of `width` pixels.
    pub fn new(width: usize, num_classes: usize) -> Self {
        Self {
            tracers: (0..num_classes.min(255))
                .map(|k| PolygonTracer::new(width, k as u8))
                .collect(),
        }
    }

    /// Adds the next row.
    pub fn push_row(&mut self, row: &[u8]) -> Result<()> {
        self.tracers.iter_mut().try_for_each(|t| t.push_row(row))
    }

    /// Polygons per class.
    pub fn finish(self) -> Result<Vec<Vec<Polygon>>> {
        self.tracers
            .into_iter()
            .map(PolygonTracer::finish)
            .collect()
    }
}

/// Traces the polygons of pixels equal to `class` in an in-memory label map (see the module docs).
pub fn trace_class_polygons(
    labels: &[u8],
    width_px: usize,
    height_px: usize,
    class: u8,
) -> Result<Vec<Polygon>> {
    if labels.len() != width_px * height_px {
        return invalid(format!(
            "trace_class_polygons: {} values for {width_px}x{height_px}",
            labels.len()
        ));
    }
    let mut t = PolygonTracer::new(width_px, class);
    if width_px > 0 {
        for row in labels.chunks_exact(width_px) {
            t.push_row(row)?;
        }
    }
    t.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::morph::label_mask;
    use rand::{Rng, SeedableRng};

    /// The former whole-map tracer (every crack sorted, chained by lookup), kept as an independent
    /// reference.
    fn reference_trace(labels: &[u8], w: usize, h: usize, class: u8) -> Vec<Polygon> {
        let mask: Vec<bool> = labels.iter().map(|&l| l == class).collect();
        let (comp, n) = label_mask(&mask, w, h, Connectivity::Four).unwrap();
        if n == 0 {
            return Vec::new();
        }
        let vw = (w + 1) as u64;
        let vid = |x: usize, y: usize| y as u64 * vw + x as u64;
        let mut edges: Vec<(u64, u8)> = Vec::new();
        let inside = |x: isize, y: isize| {
            x >= 0
                && y >= 0
                && (x as usize) < w
                && (y as usize) < h
                && mask[y as usize * w + x as usize]
        };
        for y in 0..h {
            for x in 0..w {
                if !mask[y * w + x] {
                    continue;
                }
                let (xi, yi) = (x as isize, y as isize);
                if !inside(xi, yi - 1) {
                    edges.push((vid(x, y), 0));
                }
                if !inside(xi + 1, yi) {
                    edges.push((vid(x + 1, y), 1));
                }
                if !inside(xi, yi + 1) {
                    edges.push((vid(x + 1, y + 1), 2));
                }
                if !inside(xi - 1, yi) {
                    edges.push((vid(x, y + 1), 3));
                }
            }
        }
        edges.sort_unstable();
        let mut used = vec![false; edges.len()];
        let find = |v: u64, d: u8| edges.binary_search(&(v, d)).ok();
        let step = |v: u64, d: u8| match d {
            0 => v + 1,
            1 => v + vw,
            2 => v - 1,
            _ => v - vw,
        };
        let mut outers: Vec<Option<Vec<(i64, i64)>>> = vec![None; n + 1];
        let mut holes: Vec<Vec<Vec<(i64, i64)>>> = vec![Vec::new(); n + 1];
        for start in 0..edges.len() {
            if used[start] {
                continue;
            }
            let mut ring = Vec::new();
            let mut e = start;
            let mut prev_dir = None;
            loop {
                used[e] = true;
                let (v, d) = edges[e];
                if prev_dir != Some(d) {
                    ring.push(((v % vw) as i64, (v / vw) as i64));
                }
                prev_dir = Some(d);
                let nv = step(v, d);
                let ne = [(d + 1) % 4, d, (d + 3) % 4]
                    .iter()
                    .find_map(|&nd| find(nv, nd))
                    .unwrap();
                if ne == start {
                    break;
                }
                e = ne;
            }
            if ring.len() > 1 && Some(edges[start].1) == prev_dir {
                ring.remove(0);
            }
            let (v, d) = edges[start];
            let (vx, vy) = ((v % vw) as usize, (v / vw) as usize);
            let (px, py) = match d {
                0 => (vx, vy),
                1 => (vx - 1, vy),
                2 => (vx - 1, vy - 1),
                _ => (vx, vy - 1),
            };
            let c = comp[py * w + px] as usize;
            for part in split_pinches(ring) {
                let part = normalise_ring(part);
                if ring_area2(&part) > 0 {
                    assert!(outers[c].is_none(), "two exteriors");
                    outers[c] = Some(part);
                } else {
                    holes[c].push(part);
                }
            }
        }
        for h in &mut holes {
            h.sort_by_key(|h| (h[0].1, h[0].0, dir_of(h[0], h[1])));
        }
        (1..=n)
            .filter_map(|c| {
                outers[c].take().map(|exterior| Polygon {
                    exterior,
                    holes: std::mem::take(&mut holes[c]),
                })
            })
            .collect()
    }

    #[test]
    fn streaming_tracer_equals_reference_on_random_maps() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for &(w, h, k, p_keep) in &[
            (1, 1, 2, 0.0),
            (3, 2, 2, 0.0),
            (9, 7, 2, 0.0),
            (24, 19, 3, 0.0),
            (40, 33, 2, 0.7),
            (64, 48, 3, 0.85),
            (17, 80, 2, 0.5),
        ] {
            // Random maps, optionally smoothed (a pixel copies its left/upper neighbour with p_keep),
            // which gives large regions with holes as well as speckle and saddles.
            let mut img = vec![0u8; w * h];
            for y in 0..h {
                for x in 0..w {
                    img[y * w + x] = if rng.random_bool(p_keep) && (x > 0 || y > 0) {
                        if x > 0 && (y == 0 || rng.random_bool(0.5)) {
                            img[y * w + x - 1]
                        } else {
                            img[(y - 1) * w + x]
                        }
                    } else {
                        rng.random_range(0..k) as u8
                    };
                }
            }
            for class in 0..k as u8 {
                let want = reference_trace(&img, w, h, class);
                let got = trace_class_polygons(&img, w, h, class).unwrap();
                assert_eq!(got, want, "{w}x{h} class {class}");
            }
        }
    }

    #[test]
    fn a_hole_touching_the_outside_at_a_corner_is_a_separate_ring() {
        // The hole pixel (1, 1) meets the background (2, 2) diagonally at corner (2, 2): traced as
        // one ring, the exterior would pass (2, 2) twice (invalid OGC, "Ring Self-intersection").
        #[rustfmt::skip]
        let lab: Vec<u8> = vec![
            1, 1, 1, 0,
            1, 0, 1, 0,
            1, 1, 0, 0,
        ];
        let p = trace_class_polygons(&lab, 4, 3, 1).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(
            p[0].exterior,
            vec![(0, 0), (3, 0), (3, 2), (2, 2), (2, 3), (0, 3), (0, 0)]
        );
        assert_eq!(
            p[0].holes,
            vec![vec![(1, 1), (1, 2), (2, 2), (2, 1), (1, 1)]]
        );
        // The background's view of the same map: pixel (1, 1) is a 4-component of its own and
        // the outer background another, touching at corner (2, 2).
        let bg = trace_class_polygons(&lab, 4, 3, 0).unwrap();
        assert_eq!(bg.len(), 2);
        assert!(bg.iter().all(|p| p.holes.is_empty()));
    }

    #[test]
    fn split_pinches_cuts_a_figure_eight_into_two_rings() {
        let eight = vec![
            (0, 0),
            (1, 0),
            (1, 1),
            (2, 1),
            (2, 2),
            (1, 2),
            (1, 1),
            (0, 1),
        ];
        let parts = split_pinches(eight);
        assert_eq!(
            parts,
            vec![
                vec![(1, 1), (2, 1), (2, 2), (1, 2)],
                vec![(0, 0), (1, 0), (1, 1), (0, 1)]
            ]
        );
        let square = vec![(0, 0), (1, 0), (1, 1), (0, 1)];
        assert_eq!(split_pinches(square.clone()), vec![square]);
    }

    #[test]
    fn square_with_hole_and_saddle() {
        #[rustfmt::skip]
        let lab: Vec<u8> = vec![
            1, 1, 1, 0, 0,
            1, 0, 1, 0, 0,
            1, 1, 1, 0, 0,
            0, 0, 0, 1, 0,
            0, 0, 0, 0, 0,
        ];
        let p = trace_class_polygons(&lab, 5, 5, 1).unwrap();
        assert_eq!(p.len(), 2, "the diagonal pixel is a separate 4-component");
        assert_eq!(p[0].exterior, vec![(0, 0), (3, 0), (3, 3), (0, 3), (0, 0)]);
        assert_eq!(
            p[0].holes,
            vec![vec![(1, 1), (1, 2), (2, 2), (2, 1), (1, 1)]]
        );
        assert_eq!(p[1].exterior, vec![(3, 3), (4, 3), (4, 4), (3, 4), (3, 3)]);
        assert!(trace_class_polygons(&lab, 5, 5, 7).unwrap().is_empty());
        assert!(trace_class_polygons(&lab, 4, 5, 1).is_err());
    }
}
