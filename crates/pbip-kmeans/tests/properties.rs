//! Behavioural tests: planted clusters, and the objective against a simple reference
//! implementation written here.

use pbip_kmeans::{EmptyClusterPolicy, InitMethod, KMeansConfig, fit, fit_f32};

/// SplitMix64 + Box–Muller: a small deterministic generator independent of the crate.
struct Gen(u64);

impl Gen {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// `n` points around `k` random directions in `dim` dimensions with Gaussian noise `sigma`.
fn planted(seed: u64, n: usize, dim: usize, k: usize, sigma: f64) -> (Vec<f64>, Vec<usize>) {
    let mut g = Gen(seed);
    let dirs: Vec<f64> = (0..k * dim).map(|_| g.normal()).collect();
    let mut x = Vec::with_capacity(n * dim);
    let mut truth = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % k;
        truth.push(c);
        for d in 0..dim {
            x.push(dirs[c * dim + d] + sigma * g.normal());
        }
    }
    (x, truth)
}

fn unit_rows(x: &[f64], dim: usize) -> Vec<f64> {
    let mut y = x.to_vec();
    for r in y.chunks_mut(dim) {
        let n = r.iter().map(|v| v * v).sum::<f64>().sqrt();
        r.iter_mut().for_each(|v| *v /= n);
    }
    y
}

/// Plain spherical k-means (random distinct rows as init, 100 iterations) returning the
/// objective Σ max_j cos(x_i, c_j).
fn reference_objective(x: &[f64], n: usize, dim: usize, k: usize, g: &mut Gen) -> f64 {
    let y = unit_rows(x, dim);
    let mut idx: Vec<usize> = Vec::new();
    while idx.len() < k {
        let i = g.below(n);
        if !idx.contains(&i) {
            idx.push(i);
        }
    }
    let mut c: Vec<f64> = idx
        .iter()
        .flat_map(|&i| y[i * dim..(i + 1) * dim].to_vec())
        .collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
    let mut obj = 0.0;
    for _ in 0..100 {
        let mut sums = vec![0.0; k * dim];
        obj = 0.0;
        for r in y.chunks(dim) {
            let (mut bj, mut bs) = (0, f64::NEG_INFINITY);
            for j in 0..k {
                let s = dot(r, &c[j * dim..(j + 1) * dim]);
                if s > bs {
                    bs = s;
                    bj = j;
                }
            }
            obj += bs;
            for d in 0..dim {
                sums[bj * dim + d] += r[d];
            }
        }
        for j in 0..k {
            let s = &sums[j * dim..(j + 1) * dim];
            let nrm = s.iter().map(|v| v * v).sum::<f64>().sqrt();
            if nrm > 0.0 {
                for d in 0..dim {
                    c[j * dim + d] = s[d] / nrm;
                }
            }
        }
    }
    // objective of the final centres
    y.chunks(dim)
        .map(|r| {
            (0..k)
                .map(|j| dot(r, &c[j * dim..(j + 1) * dim]))
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .sum::<f64>()
        .max(obj)
}

#[test]
fn planted_clusters_are_recovered_exactly() {
    for (seed, k) in [(1u64, 2usize), (2, 3), (3, 4), (4, 6)] {
        let (n, dim) = (120, 16);
        let (x, truth) = planted(seed, n, dim, k, 0.05);
        for init in [
            InitMethod::KMeansPlusPlus,
            InitMethod::Random,
            InitMethod::NumpyLegacy,
        ] {
            let cfg = KMeansConfig {
                k,
                init,
                n_init: 10,
                seed,
                ..KMeansConfig::default()
            };
            let r = fit(&x, n, dim, &cfg).unwrap();
            // same partition up to a permutation of labels
            let mut map = vec![usize::MAX; k];
            for (&t, &a) in truth.iter().zip(&r.assignment) {
                if map[t] == usize::MAX {
                    map[t] = a;
                }
                assert_eq!(
                    map[t], a,
                    "seed {seed} k {k} {init:?}: planted cluster {t} split"
                );
            }
            let mut used = map.clone();
            used.sort_unstable();
            used.dedup();
            assert_eq!(used.len(), k, "seed {seed} k {k} {init:?}: clusters merged");
            assert!(r.converged);
            assert_eq!(r.cluster_sizes.iter().sum::<usize>(), n);
            assert!(r.mean_cosine.iter().all(|m| m.is_some_and(|m| m > 0.95)));
        }
    }
}

#[test]
fn objective_not_below_best_reference_run() {
    for seed in 10u64..16 {
        let (n, dim, k) = (90, 8, 4);
        let (x, _) = planted(seed, n, dim, k, 0.6);
        let mut g = Gen(seed ^ 0xdead_beef);
        let best_ref = (0..10)
            .map(|_| reference_objective(&x, n, dim, k, &mut g))
            .fold(f64::NEG_INFINITY, f64::max);
        let cfg = KMeansConfig {
            k,
            init: InitMethod::KMeansPlusPlus,
            n_init: 10,
            seed,
            empty_cluster: EmptyClusterPolicy::ReseedFarthest,
            ..KMeansConfig::default()
        };
        let r = fit(&x, n, dim, &cfg).unwrap();
        assert!(
            r.objective >= best_ref - 1e-9,
            "seed {seed}: objective {} < reference {best_ref}",
            r.objective
        );
        // the reported objective is what it claims to be
        let y = unit_rows(&x, dim);
        let recomputed: f64 = y
            .chunks(dim)
            .zip(&r.assignment)
            .map(|(row, &a)| row.iter().zip(r.centre(a)).map(|(p, q)| p * q).sum::<f64>())
            .sum();
        assert!((recomputed - r.objective).abs() < 1e-9);
    }
}

#[test]
fn f32_entry_point_and_restarts_are_deterministic() {
    let (x, _) = planted(99, 50, 6, 3, 0.3);
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let cfg = KMeansConfig {
        k: 3,
        init: InitMethod::Random,
        n_init: 4,
        seed: 5,
        ..KMeansConfig::default()
    };
    let a = fit_f32(&x32, 50, 6, &cfg).unwrap();
    let b = fit_f32(&x32, 50, 6, &cfg).unwrap();
    assert_eq!(a, b);
    let one = fit_f32(
        &x32,
        50,
        6,
        &KMeansConfig {
            n_init: 1,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert!(a.objective >= one.objective);
    assert!(fit_f32(&x32[..10], 5, 2, &cfg).is_ok());
}
