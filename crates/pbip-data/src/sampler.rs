//! Training sampler: which (slide, coordinate) each item of each step uses.
//!
//! The sampler is a pure function of (seed, epoch, step, item), so its whole state is the
//! cursor [`SamplerState`] (epoch, step within the epoch), serialisable with serde: a resumed
//! run draws exactly the sequence an uninterrupted one would, and loader workers can build any
//! batch independently.
//!
//! * **Balance over slides** ([`Balance::Slides`], default): the items of an epoch, in order,
//!   walk through a fresh random permutation of the slides, then another, and so on (the
//!   permutation restarts at each epoch). Every window of `S` consecutive items from the start
//!   of an epoch holds every slide exactly once, so an epoch of at least `S` items shows every
//!   slide.
//! * **Balance over classes** ([`Balance::Classes`]): items cycle through permutations of the
//!   classes present (slides without any positive label form one more group); the `k`-th item
//!   given to a class takes the next slide of that class's own slide permutations. Multi-label
//!   slides belong to every class they have.
//! * The coordinate of an item is uniform over the slide's usable rows (with replacement),
//!   like upstream's random coordinate per `__getitem__`.
//! * **Bags** (`bag_size` > 1, multiple-instance learning): the slide choice above is made per
//!   bag instead of per item (bag `j` of the run is what item `j` would be without bags), and the
//!   `bag_size` items of a bag each draw their own coordinate from that slide. `bag_size` 1 draws
//!   exactly what the sampler drew before bags existed.
//!
//! Default `iterations_per_epoch`: `ceil(S / batch_size)` (every slide once, the upstream
//! epoch), or with class balance `ceil(G · max_g S_g / batch_size)` (`G` groups, `S_g` slides
//! in group `g`) so the largest class also shows each of its slides; with bags, `batch_size` is
//! replaced by the bags per batch.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::rng::{below, permutation, rng_for, tag};

/// What is balanced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Every slide equally often.
    #[default]
    Slides,
    /// Every class equally often (then every slide within its class).
    Classes,
}

/// Sampler options.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplerOptions {
    /// Seed of all draws.
    pub seed: u64,
    /// Patches per batch (> 0).
    pub batch_size: usize,
    /// What to balance.
    pub balance: Balance,
    /// Batches per epoch (`None` = the default described in the module docs).
    pub iterations_per_epoch: Option<u64>,
    /// Patches per bag: each batch is `batch_size / bag_size` bags of `bag_size` consecutive
    /// items drawn from one slide (multiple-instance learning); 1 = every item chooses its own
    /// slide. `batch_size` must be a multiple of it.
    #[serde(default = "one")]
    pub bag_size: usize,
    /// A class present on every slide (`background_class`): class balance ignores it, so the
    /// groups are the slides of each other class plus the slides with none of them.
    #[serde(default)]
    pub background_class: Option<usize>,
}

fn one() -> usize {
    1
}

/// What the sampler needs to know about one slide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlideKey {
    /// Slide name (only used in the fingerprint).
    pub name: String,
    /// Number of usable coordinates (> 0).
    pub num_coords: usize,
    /// Positive class indices.
    pub classes: Vec<usize>,
}

/// Resumable cursor: the next batch to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    /// Epoch (0-based).
    pub epoch: u64,
    /// Batch within the epoch (0-based).
    pub step: u64,
    /// Fingerprint of the sampler (slides, options) that produced this state.
    pub fingerprint: u64,
}

/// One draw: slide index and index into that slide's usable rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draw {
    /// Slide index (order of the keys given to [`TrainSampler::new`]).
    pub slide: usize,
    /// Index into the slide's usable coordinate rows (`0..num_coords`).
    pub coord: usize,
}

/// The training sampler.
#[derive(Debug, Clone)]
pub struct TrainSampler {
    opts: SamplerOptions,
    slides: Vec<SlideKey>,
    /// Balance::Classes: slide indices of each non-empty group.
    groups: Vec<Vec<usize>>,
    iterations_per_epoch: u64,
    fingerprint: u64,
}

fn fnv1a(h: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *h ^= u64::from(b);
        *h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
}

impl TrainSampler {
    /// A sampler over `slides`.
    pub fn new(slides: Vec<SlideKey>, opts: SamplerOptions) -> Result<Self> {
        if slides.is_empty() {
            return Err(DataError::InvalidOption(
                "training sampler needs at least one slide".into(),
            ));
        }
        if opts.batch_size == 0 {
            return Err(DataError::InvalidOption("batch_size must be > 0".into()));
        }
        if let Some(s) = slides.iter().find(|s| s.num_coords == 0) {
            return Err(DataError::InvalidOption(format!(
                "slide {:?} has no coordinates",
                s.name
            )));
        }
        if opts.bag_size == 0 || !opts.batch_size.is_multiple_of(opts.bag_size) {
            return Err(DataError::InvalidOption(format!(
                "batch_size {} must be a multiple of bag_size {} (> 0)",
                opts.batch_size, opts.bag_size
            )));
        }
        if opts.iterations_per_epoch == Some(0) {
            return Err(DataError::InvalidOption(
                "iterations_per_epoch must be > 0".into(),
            ));
        }
        let mut groups = Vec::new();
        if opts.balance == Balance::Classes {
            let slides: Vec<SlideKey> = slides
                .iter()
                .map(|s| SlideKey {
                    classes: s
                        .classes
                        .iter()
                        .copied()
                        .filter(|&c| Some(c) != opts.background_class)
                        .collect(),
                    ..s.clone()
                })
                .collect();
            let nc = slides
                .iter()
                .flat_map(|s| s.classes.iter().copied())
                .max()
                .map_or(0, |m| m + 1);
            for c in 0..nc {
                let g: Vec<usize> = (0..slides.len())
                    .filter(|&i| slides[i].classes.contains(&c))
                    .collect();
                if !g.is_empty() {
                    groups.push(g);
                }
            }
            let unlabelled: Vec<usize> = (0..slides.len())
                .filter(|&i| slides[i].classes.is_empty())
                .collect();
            if !unlabelled.is_empty() {
                groups.push(unlabelled);
            }
        }
        let b = (opts.batch_size / opts.bag_size) as u64;
        let default_ipe = match opts.balance {
            Balance::Slides => (slides.len() as u64).div_ceil(b),
            Balance::Classes => {
                let max_g = groups.iter().map(Vec::len).max().unwrap_or(1) as u64;
                (groups.len() as u64 * max_g).div_ceil(b)
            }
        };
        let iterations_per_epoch = opts.iterations_per_epoch.unwrap_or(default_ipe).max(1);
        let mut h = 0xCBF2_9CE4_8422_2325u64;
        fnv1a(&mut h, &opts.seed.to_le_bytes());
        fnv1a(&mut h, &(opts.batch_size as u64).to_le_bytes());
        fnv1a(&mut h, &[opts.balance as u8]);
        fnv1a(&mut h, &iterations_per_epoch.to_le_bytes());
        if opts.bag_size > 1 {
            fnv1a(&mut h, b"bags");
            fnv1a(&mut h, &(opts.bag_size as u64).to_le_bytes());
        }
        if let Some(b) = opts.background_class {
            fnv1a(&mut h, b"background");
            fnv1a(&mut h, &(b as u64).to_le_bytes());
        }
        for s in &slides {
            fnv1a(&mut h, s.name.as_bytes());
            fnv1a(&mut h, &[0xFF]);
            fnv1a(&mut h, &(s.num_coords as u64).to_le_bytes());
            for &c in &s.classes {
                fnv1a(&mut h, &(c as u64).to_le_bytes());
            }
            fnv1a(&mut h, &[0xFE]);
        }
        tracing::debug!(slides = slides.len(), iterations_per_epoch, ?opts.balance, "training sampler");
        Ok(TrainSampler {
            opts,
            slides,
            groups,
            iterations_per_epoch,
            fingerprint: h,
        })
    }

    /// Batches per epoch.
    pub fn iterations_per_epoch(&self) -> u64 {
        self.iterations_per_epoch
    }

    /// Options.
    pub fn options(&self) -> &SamplerOptions {
        &self.opts
    }

    /// The slides sampled.
    pub fn slides(&self) -> &[SlideKey] {
        &self.slides
    }

    /// Fingerprint of slides and options (stored in every state).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The state at the start of training.
    pub fn initial_state(&self) -> SamplerState {
        SamplerState {
            epoch: 0,
            step: 0,
            fingerprint: self.fingerprint,
        }
    }

    /// The state `n` batches after `s`.
    pub fn advance(&self, s: &SamplerState, n: u64) -> SamplerState {
        let g = self.global_step(s) + n;
        SamplerState {
            epoch: g / self.iterations_per_epoch,
            step: g % self.iterations_per_epoch,
            fingerprint: s.fingerprint,
        }
    }

    /// The state of global step `g` (0-based batch count since the start of training).
    pub fn state_at(&self, g: u64) -> SamplerState {
        self.advance(&self.initial_state(), g)
    }

    /// Global step (batches since the start of training) of a state.
    pub fn global_step(&self, s: &SamplerState) -> u64 {
        s.epoch * self.iterations_per_epoch + s.step
    }

    /// Checks that a (resumed) state belongs to this sampler.
    pub fn check_state(&self, s: &SamplerState) -> Result<()> {
        if s.fingerprint != self.fingerprint {
            return Err(DataError::StateMismatch(format!(
                "saved fingerprint {:016x} != {:016x}: the training slides, their coordinates or \
                 labels, the seed, batch size, balance or iterations per epoch changed",
                s.fingerprint, self.fingerprint
            )));
        }
        if s.step >= self.iterations_per_epoch {
            return Err(DataError::StateMismatch(format!(
                "step {} is not below iterations_per_epoch {}",
                s.step, self.iterations_per_epoch
            )));
        }
        Ok(())
    }

    /// The draws of the batch at state `s` (`batch_size` of them).
    pub fn draws(&self, s: &SamplerState) -> Vec<Draw> {
        let bag = self.opts.bag_size.max(1) as u64;
        let b = self.opts.batch_size as u64;
        let bags = b / bag;
        let seed = self.opts.seed;
        let mut perms: HashMap<(u64, u64, u64), Vec<usize>> = HashMap::new();
        let mut perm = |t: u64, a: u64, c: u64, n: usize| -> Vec<usize> {
            perms
                .entry((t, a, c))
                .or_insert_with(|| permutation(&mut rng_for(seed, t, &[s.epoch, a, c]), n))
                .clone()
        };
        (0..b)
            .map(|item| {
                // Slide choice per bag (per item without bags): position of this bag in the epoch.
                let p = s.step * bags + item / bag;
                let slide = match self.opts.balance {
                    Balance::Slides => {
                        let n = self.slides.len() as u64;
                        perm(tag::SLIDE_CYCLE, 0, p / n, n as usize)[(p % n) as usize]
                    }
                    Balance::Classes => {
                        let ng = self.groups.len() as u64;
                        let g = perm(tag::CLASS_CYCLE, 0, p / ng, ng as usize)[(p % ng) as usize];
                        let k = p / ng;
                        let members = &self.groups[g];
                        let m = members.len() as u64;
                        members[perm(tag::CLASS_SLIDE_CYCLE, g as u64, k / m, m as usize)
                            [(k % m) as usize]]
                    }
                };
                let mut r = rng_for(seed, tag::COORD, &[s.epoch, s.step, item]);
                let coord = below(&mut r, self.slides[slide].num_coords as u64) as usize;
                Draw { slide, coord }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(classes: &[&[usize]]) -> Vec<SlideKey> {
        classes
            .iter()
            .enumerate()
            .map(|(i, c)| SlideKey {
                name: format!("s{i}"),
                num_coords: 5 + i,
                classes: c.to_vec(),
            })
            .collect()
    }

    fn opts(b: usize, balance: Balance) -> SamplerOptions {
        SamplerOptions {
            seed: 7,
            batch_size: b,
            balance,
            iterations_per_epoch: None,
            bag_size: 1,
            background_class: None,
        }
    }

    #[test]
    fn default_epoch_shows_every_slide() {
        let s = TrainSampler::new(
            keys(&[&[0], &[0], &[1], &[1], &[0], &[1], &[0]]),
            opts(3, Balance::Slides),
        )
        .unwrap();
        assert_eq!(s.iterations_per_epoch(), 3); // ceil(7/3)
        for epoch in 0..4 {
            let mut seen = vec![0; 7];
            for step in 0..3 {
                let st = SamplerState {
                    epoch,
                    step,
                    fingerprint: s.fingerprint(),
                };
                for d in s.draws(&st) {
                    seen[d.slide] += 1;
                    assert!(d.coord < 5 + d.slide);
                }
            }
            // 9 draws: each slide once from the first permutation, 2 from the next.
            assert!(seen.iter().all(|&c| (1..=2).contains(&c)), "{seen:?}");
            assert_eq!(seen.iter().sum::<usize>(), 9);
        }
    }

    #[test]
    fn class_balance() {
        // 1 tumour slide, 5 benign slides.
        let s = TrainSampler::new(
            keys(&[&[0], &[0], &[0], &[0], &[0], &[1]]),
            opts(4, Balance::Classes),
        )
        .unwrap();
        // 2 groups * 5 / 4 -> 3
        assert_eq!(s.iterations_per_epoch(), 3);
        let mut st = s.initial_state();
        for _epoch in 0..10 {
            let mut per_class = [0usize; 2];
            let mut seen = [0usize; 6];
            for _ in 0..s.iterations_per_epoch() {
                for d in s.draws(&st) {
                    per_class[usize::from(d.slide == 5)] += 1;
                    seen[d.slide] += 1;
                }
                st = s.advance(&st, 1);
            }
            // 12 draws per epoch: 6 per class; each benign slide at least once, one twice.
            assert_eq!(per_class, [6, 6]);
            assert_eq!(seen[5], 6);
            assert!(seen[..5].iter().all(|&c| (1..=2).contains(&c)), "{seen:?}");
        }
    }

    #[test]
    fn states_and_fingerprint() {
        let s = TrainSampler::new(keys(&[&[0], &[1], &[1]]), opts(2, Balance::Slides)).unwrap();
        let st = s.advance(&s.initial_state(), 5);
        assert_eq!((st.epoch, st.step), (2, 1));
        assert_eq!(s.global_step(&st), 5);
        assert_eq!(s.state_at(5), st);
        s.check_state(&st).unwrap();
        let other = TrainSampler::new(keys(&[&[0], &[1], &[0]]), opts(2, Balance::Slides)).unwrap();
        assert!(other.check_state(&st).is_err());
        let other_seed = TrainSampler::new(
            keys(&[&[0], &[1], &[1]]),
            SamplerOptions {
                seed: 8,
                ..opts(2, Balance::Slides)
            },
        )
        .unwrap();
        assert!(other_seed.check_state(&st).is_err());
        let json = serde_json::to_string(&st).unwrap();
        assert_eq!(serde_json::from_str::<SamplerState>(&json).unwrap(), st);
    }

    #[test]
    fn bags_share_a_slide_and_follow_the_unbagged_slide_sequence() {
        let k = keys(&[&[0], &[1], &[0], &[1], &[0], &[1], &[1]]);
        for balance in [Balance::Slides, Balance::Classes] {
            let bagged = TrainSampler::new(
                k.clone(),
                SamplerOptions {
                    bag_size: 4,
                    ..opts(8, balance)
                },
            )
            .unwrap();
            // The slide of bag j is what item j of a sampler with one item per bag draws.
            let plain = TrainSampler::new(k.clone(), opts(2, balance)).unwrap();
            assert_eq!(bagged.iterations_per_epoch(), plain.iterations_per_epoch());
            let (mut sb, mut sp) = (bagged.initial_state(), plain.initial_state());
            for _ in 0..12 {
                let d = bagged.draws(&sb);
                let p = plain.draws(&sp);
                assert_eq!(d.len(), 8);
                for (j, bag) in d.chunks(4).enumerate() {
                    assert!(bag.iter().all(|x| x.slide == bag[0].slide), "{d:?}");
                    assert_eq!(bag[0].slide, p[j].slide);
                    assert!(bag.iter().all(|x| x.coord < k[x.slide].num_coords));
                }
                sb = bagged.advance(&sb, 1);
                sp = plain.advance(&sp, 1);
            }
            // bags and the background class change the fingerprint (resume must not mix them)
            assert_ne!(
                bagged.fingerprint(),
                TrainSampler::new(k.clone(), opts(8, balance))
                    .unwrap()
                    .fingerprint()
            );
        }
        assert!(
            TrainSampler::new(
                k.clone(),
                SamplerOptions {
                    bag_size: 3,
                    ..opts(8, Balance::Slides)
                }
            )
            .is_err(),
            "batch not a multiple of the bag"
        );
        // A background class is ignored by the class balance: slides of class 1 and slides without
        // it alternate even though every slide carries class 0.
        let bg = keys(&[&[0, 1], &[0], &[0], &[0], &[0, 1], &[0]]);
        let s = TrainSampler::new(
            bg,
            SamplerOptions {
                background_class: Some(0),
                ..opts(2, Balance::Classes)
            },
        )
        .unwrap();
        let mut st = s.initial_state();
        let (mut with1, mut total) = (0, 0);
        for _ in 0..20 {
            for d in s.draws(&st) {
                total += 1;
                with1 += usize::from(d.slide == 0 || d.slide == 4);
            }
            st = s.advance(&st, 1);
        }
        assert_eq!(2 * with1, total, "half the draws from the tumour group");
    }

    #[test]
    fn invalid() {
        assert!(TrainSampler::new(vec![], opts(2, Balance::Slides)).is_err());
        assert!(TrainSampler::new(keys(&[&[0]]), opts(0, Balance::Slides)).is_err());
        let mut k = keys(&[&[0]]);
        k[0].num_coords = 0;
        assert!(TrainSampler::new(k, opts(1, Balance::Slides)).is_err());
    }
}
