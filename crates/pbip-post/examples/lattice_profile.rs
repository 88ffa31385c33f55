//! Times the parts of one permutohedral bilateral filtering on a 1024x1024 image (lattice build vs
//! one `compute`), to see where dense-CRF time goes.
use pbip_post::crf::Permutohedral;
use std::time::Instant;
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (w, h) = (1024usize, 1024usize);
    let mut f = Vec::with_capacity(5 * w * h);
    let mut s: u32 = 1;
    for y in 0..h {
        for x in 0..w {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            let base = if (x / 200 + y / 150) % 2 == 0 {
                220.0
            } else {
                120.0
            };
            f.extend_from_slice(&[x as f32 / 80.0, y as f32 / 80.0]);
            for _ in 0..3 {
                f.push((base + ((s >> 24) as f32 - 128.0) * 0.25) / 13.0);
            }
        }
    }
    let t0 = Instant::now();
    let lat = Permutohedral::new(&f, 5)?;
    let t_build = t0.elapsed().as_secs_f64();
    let v = vec![0.5f32; 2 * w * h];
    let mut out = vec![0f32; 2 * w * h];
    let t0 = Instant::now();
    lat.compute(&v, 2, &mut out);
    let t_comp = t0.elapsed().as_secs_f64();
    println!(
        "bilateral lattice: {} vertices, build {t_build:.3} s, compute(2 values) {t_comp:.3} s",
        lat.num_vertices()
    );
    Ok(())
}
