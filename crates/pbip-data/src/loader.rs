//! Prefetching loader: worker threads build batches ahead of the consumer, in order.
//!
//! Batch `k` of a [`BatchSource`] is built by whichever worker claims it; finished batches wait
//! in a reorder buffer and are handed out strictly in order `0, 1, 2, …`, so the sequence is
//! identical to building them one by one on the consumer thread. At most `capacity` batches are
//! claimed and not yet consumed (the bounded prefetch queue). The consumer's blocking time is
//! recorded ([`LoaderStats`]) for the data-wait fraction. A failing batch is delivered as `Err`
//! at its turn; a worker panic is caught and delivered as [`DataError::WorkerPanicked`].
//!
//! With `num_workers = 0` batches are built on the consumer thread (the wait is then the whole
//! build time).

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::batch::{EvalPlan, PatchBatch, TrainPlan};
use crate::error::{DataError, Result};
use crate::sampler::SamplerState;

/// Something that can build batch `k` from any thread.
pub trait BatchSource: Send + Sync + 'static {
    /// Batch `k`, or `None` when `k` is past the end.
    fn batch(&self, k: u64) -> Option<Result<PatchBatch>>;
}

/// Loader options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderOptions {
    /// Worker threads (0 = build on the consumer thread).
    pub num_workers: usize,
    /// Batches prepared ahead of the consumer (raised to `num_workers` so no worker idles).
    pub prefetch: usize,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        LoaderOptions {
            num_workers: 2,
            prefetch: 2,
        }
    }
}

/// Time the consumer spent waiting for data.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LoaderStats {
    /// Batches handed out.
    pub batches: u64,
    /// Total seconds blocked in `next` (or building, without workers).
    pub wait_secs: f64,
    /// Seconds blocked for the last batch.
    pub last_wait_secs: f64,
}

impl LoaderStats {
    /// Fraction of `elapsed_secs` (e.g. the wall time of the steps since the stats were
    /// reset) spent waiting for data, in [0, 1].
    pub fn wait_fraction(&self, elapsed_secs: f64) -> f64 {
        if elapsed_secs > 0.0 {
            (self.wait_secs / elapsed_secs).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

struct Inner {
    next_claim: u64,
    consumer: u64,
    ready: BTreeMap<u64, Result<PatchBatch>>,
    end: Option<u64>,
    shutdown: bool,
}

struct Shared {
    inner: Mutex<Inner>,
    to_workers: Condvar,
    to_consumer: Condvar,
    capacity: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock can only come from a panic while holding it, which no code path
        // here does; recover the data rather than propagate the panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

fn build(source: &dyn BatchSource, k: u64) -> Option<Result<PatchBatch>> {
    match catch_unwind(AssertUnwindSafe(|| source.batch(k))) {
        Ok(r) => r,
        Err(p) => Some(Err(DataError::WorkerPanicked(panic_message(p)))),
    }
}

fn worker(shared: Arc<Shared>, source: Arc<dyn BatchSource>) {
    loop {
        let k = {
            let mut g = shared.lock();
            loop {
                if g.shutdown || g.end.is_some_and(|e| g.next_claim >= e) {
                    return;
                }
                if g.next_claim < g.consumer + shared.capacity {
                    let k = g.next_claim;
                    g.next_claim += 1;
                    break k;
                }
                g = shared.to_workers.wait(g).unwrap_or_else(|p| p.into_inner());
            }
        };
        let r = build(source.as_ref(), k);
        let mut g = shared.lock();
        match r {
            Some(b) => {
                g.ready.insert(k, b);
            }
            None => {
                g.end = Some(g.end.map_or(k, |e| e.min(k)));
                shared.to_workers.notify_all();
            }
        }
        shared.to_consumer.notify_all();
    }
}

/// In-order, prefetching batch loader over a [`BatchSource`].
pub struct Loader {
    source: Arc<dyn BatchSource>,
    shared: Option<Arc<Shared>>,
    workers: Vec<JoinHandle<()>>,
    consumed: u64,
    done: bool,
    stats: LoaderStats,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("workers", &self.workers.len())
            .field("consumed", &self.consumed)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Loader {
    /// Starts the workers (none with `num_workers = 0`).
    pub fn new(source: Arc<dyn BatchSource>, opts: LoaderOptions) -> Result<Loader> {
        let mut loader = Loader {
            source: Arc::clone(&source),
            shared: None,
            workers: Vec::new(),
            consumed: 0,
            done: false,
            stats: LoaderStats::default(),
        };
        if opts.num_workers == 0 {
            return Ok(loader);
        }
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                next_claim: 0,
                consumer: 0,
                ready: BTreeMap::new(),
                end: None,
                shutdown: false,
            }),
            to_workers: Condvar::new(),
            to_consumer: Condvar::new(),
            capacity: opts.prefetch.max(opts.num_workers).max(1) as u64,
        });
        for i in 0..opts.num_workers {
            let (sh, src) = (Arc::clone(&shared), Arc::clone(&source));
            let h = std::thread::Builder::new()
                .name(format!("pbip-data-{i}"))
                .spawn(move || worker(sh, src))
                .map_err(|e| {
                    DataError::InvalidOption(format!("cannot start loader thread: {e}"))
                })?;
            loader.workers.push(h);
        }
        loader.shared = Some(shared);
        Ok(loader)
    }

    /// Number of batches handed out so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Wait statistics since creation or the last [`Loader::reset_stats`].
    pub fn stats(&self) -> LoaderStats {
        self.stats
    }

    /// Returns the statistics and starts counting afresh (e.g. per logging interval).
    pub fn reset_stats(&mut self) -> LoaderStats {
        std::mem::take(&mut self.stats)
    }

    /// The next batch in order, `None` at the end. Blocks while it is being built.
    pub fn next_batch(&mut self) -> Option<Result<PatchBatch>> {
        if self.done {
            return None;
        }
        let t0 = Instant::now();
        let k = self.consumed;
        let r = match &self.shared {
            None => build(self.source.as_ref(), k),
            Some(sh) => {
                let mut g = sh.lock();
                loop {
                    if let Some(b) = g.ready.remove(&k) {
                        g.consumer = k + 1;
                        sh.to_workers.notify_all();
                        break Some(b);
                    }
                    if g.end.is_some_and(|e| k >= e) {
                        break None;
                    }
                    g = sh.to_consumer.wait(g).unwrap_or_else(|p| p.into_inner());
                }
            }
        };
        let waited = t0.elapsed().as_secs_f64();
        match r {
            Some(b) => {
                self.consumed += 1;
                self.stats.batches += 1;
                self.stats.wait_secs += waited;
                self.stats.last_wait_secs = waited;
                Some(b)
            }
            None => {
                self.done = true;
                None
            }
        }
    }
}

impl Iterator for Loader {
    type Item = Result<PatchBatch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        if let Some(sh) = &self.shared {
            sh.lock().shutdown = true;
            sh.to_workers.notify_all();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// Training batches from a start state, optionally stopping after a total number of steps.
#[derive(Debug)]
pub struct TrainSource {
    plan: TrainPlan,
    start: SamplerState,
    /// Global step at which to stop (exclusive), e.g. `epochs · iterations_per_epoch`.
    end_global_step: Option<u64>,
}

impl TrainSource {
    /// Batches from `start` (checked against the plan's sampler) up to `end_global_step`.
    pub fn new(plan: TrainPlan, start: SamplerState, end_global_step: Option<u64>) -> Result<Self> {
        plan.sampler.check_state(&start)?;
        Ok(TrainSource {
            plan,
            start,
            end_global_step,
        })
    }
}

impl BatchSource for TrainSource {
    fn batch(&self, k: u64) -> Option<Result<PatchBatch>> {
        let st = self.plan.sampler.advance(&self.start, k);
        if let Some(end) = self.end_global_step
            && self.plan.sampler.global_step(&st) >= end
        {
            return None;
        }
        Some(self.plan.batch(&st))
    }
}

impl BatchSource for EvalPlan {
    fn batch(&self, k: u64) -> Option<Result<PatchBatch>> {
        EvalPlan::batch(self, usize::try_from(k).ok()?)
    }
}

/// A training loader that knows its resumable state.
#[derive(Debug)]
pub struct TrainLoader {
    loader: Loader,
    sampler: crate::sampler::TrainSampler,
    start: SamplerState,
}

impl TrainLoader {
    /// Starts loading training batches at `start` (use `plan.sampler.initial_state()` for a
    /// fresh run, the saved [`TrainLoader::state`] to resume).
    pub fn new(
        plan: TrainPlan,
        start: SamplerState,
        end_global_step: Option<u64>,
        opts: LoaderOptions,
    ) -> Result<Self> {
        let sampler = plan.sampler.clone();
        let source = TrainSource::new(plan, start, end_global_step)?;
        Ok(TrainLoader {
            loader: Loader::new(Arc::new(source), opts)?,
            sampler,
            start,
        })
    }

    /// The state of the next batch to be consumed: save it with a checkpoint taken after the
    /// consumed batches' steps; prefetched batches are rebuilt identically on resume.
    pub fn state(&self) -> SamplerState {
        self.sampler.advance(&self.start, self.loader.consumed())
    }

    /// The sampler.
    pub fn sampler(&self) -> &crate::sampler::TrainSampler {
        &self.sampler
    }

    /// Next batch (see [`Loader::next_batch`]).
    pub fn next_batch(&mut self) -> Option<Result<PatchBatch>> {
        self.loader.next_batch()
    }

    /// Wait statistics.
    pub fn stats(&self) -> LoaderStats {
        self.loader.stats()
    }

    /// Returns the statistics and starts counting afresh.
    pub fn reset_stats(&mut self) -> LoaderStats {
        self.loader.reset_stats()
    }
}

impl Iterator for TrainLoader {
    type Item = Result<PatchBatch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Batch k = one float k; k = 5 fails; k = 7 panics; ends at 10.
    struct Fake {
        calls: AtomicU64,
    }

    impl BatchSource for Fake {
        fn batch(&self, k: u64) -> Option<Result<PatchBatch>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if k >= 10 {
                return None;
            }
            if k == 5 {
                return Some(Err(DataError::InvalidOption("five".into())));
            }
            if k == 7 {
                panic!("seven");
            }
            // Make later batches faster so they finish out of order.
            std::thread::sleep(std::time::Duration::from_millis(10 - k));
            Some(Ok(PatchBatch {
                data: vec![k as f32],
                n: 0,
                height_px: 0,
                width_px: 0,
                num_classes: 0,
                labels: vec![],
                masks: None,
                info: vec![],
                cursor: None,
            }))
        }
    }

    fn run(workers: usize) -> Vec<std::result::Result<f32, String>> {
        let src = Arc::new(Fake {
            calls: AtomicU64::new(0),
        });
        let loader = Loader::new(
            src,
            LoaderOptions {
                num_workers: workers,
                prefetch: 3,
            },
        )
        .unwrap();
        loader
            .map(|r| r.map(|b| b.data[0]).map_err(|e| e.to_string()))
            .collect()
    }

    #[test]
    fn in_order_errors_and_panics_delivered() {
        for w in [0, 1, 3] {
            let got = run(w);
            assert_eq!(got.len(), 10, "workers {w}");
            for (k, r) in got.iter().enumerate() {
                match k {
                    5 => assert!(r.as_ref().unwrap_err().contains("five")),
                    7 => assert!(r.as_ref().unwrap_err().contains("seven")),
                    _ => assert_eq!(*r.as_ref().unwrap(), k as f32),
                }
            }
        }
    }

    #[test]
    fn prefetch_is_bounded() {
        let src = Arc::new(Fake {
            calls: AtomicU64::new(0),
        });
        let mut loader = Loader::new(
            Arc::clone(&src) as Arc<dyn BatchSource>,
            LoaderOptions {
                num_workers: 2,
                prefetch: 3,
            },
        )
        .unwrap();
        let _ = loader.next_batch();
        std::thread::sleep(std::time::Duration::from_millis(100));
        // consumed 1, capacity 3 -> at most batches 0..4 claimed.
        assert!(
            src.calls.load(Ordering::SeqCst) <= 4,
            "{}",
            src.calls.load(Ordering::SeqCst)
        );
        assert!(loader.stats().batches == 1);
    }
}
