//! Decoded-tile cache: a sharded LRU with a byte budget, shared by all threads of one slide.
//!
//! Entries are `Arc<Vec<u8>>` so readers copy pixels out without holding a lock. An entry may hold
//! only part of its tile (a partial JPEG decode): it records which pixels are valid and answers
//! only reads that need no others. Evicted buffers that nobody else holds are kept in a
//! small per-shard free list and reused by the next decode.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::decode::Window;

/// Cache key: (level index, chunk index within the level).
pub(crate) type TileKey = (u32, u64);

const SHARDS: usize = 16;
const MAX_FREE_PER_SHARD: usize = 4;

struct Entry {
    data: Arc<Vec<u8>>,
    /// The pixels of the tile that are valid.
    valid: Window,
    stamp: u64,
}

#[derive(Default)]
struct Shard {
    map: HashMap<TileKey, Entry>,
    order: BTreeMap<u64, TileKey>,
    bytes: usize,
    clock: u64,
    free: Vec<Vec<u8>>,
}

/// What the cache holds for a tile.
pub(crate) enum Lookup {
    /// The tile, with the pixels asked for.
    Hit(Arc<Vec<u8>>),
    /// Part of the tile, without all the pixels asked for.
    Partial,
    /// Nothing.
    Miss,
}

impl Lookup {
    /// The tile, on a hit.
    #[cfg(test)]
    fn hit(self) -> Option<Arc<Vec<u8>>> {
        match self {
            Lookup::Hit(t) => Some(t),
            _ => None,
        }
    }
}

/// Sharded LRU cache of decoded tiles (RGB8 buffers).
pub(crate) struct TileCache {
    shards: Vec<Mutex<Shard>>,
    budget_per_shard: usize,
}

impl TileCache {
    /// A cache holding at most about `budget_bytes` of decoded pixels (0 disables caching).
    pub(crate) fn new(budget_bytes: usize) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect();
        Self {
            shards,
            budget_per_shard: budget_bytes / SHARDS,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.budget_per_shard > 0
    }

    fn shard(&self, key: &TileKey) -> &Mutex<Shard> {
        // Neighbouring tiles land in different shards.
        let h = (key.1 ^ (u64::from(key.0) << 56)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.shards[(h >> 59) as usize % SHARDS]
    }

    fn lock<'a>(m: &'a Mutex<Shard>) -> std::sync::MutexGuard<'a, Shard> {
        // A panic while holding the lock cannot leave the shard inconsistent in a way that
        // matters for correctness (worst case: a stale byte count), so recover from poisoning.
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Look a tile up whose pixels `need` are valid, marking it most recently used.
    pub(crate) fn get(&self, key: &TileKey, need: &Window) -> Lookup {
        if !self.enabled() {
            return Lookup::Miss;
        }
        let mut s = Self::lock(self.shard(key));
        s.clock += 1;
        let now = s.clock;
        let old = match s.map.get_mut(key) {
            None => return Lookup::Miss,
            Some(e) if !e.valid.contains(need) => return Lookup::Partial,
            Some(e) => {
                let old = e.stamp;
                e.stamp = now;
                (old, Arc::clone(&e.data))
            }
        };
        s.order.remove(&old.0);
        s.order.insert(now, *key);
        Lookup::Hit(old.1)
    }

    /// A buffer of `len` bytes to decode into, reused from evicted entries when possible (its
    /// contents are then those of an old tile: the decoder overwrites what it produces).
    pub(crate) fn take_buffer(&self, key: &TileKey, len: usize) -> Vec<u8> {
        if self.enabled() {
            let mut s = Self::lock(self.shard(key));
            if let Some(pos) = s.free.iter().position(|b| b.capacity() >= len) {
                let mut b = s.free.swap_remove(pos);
                b.resize(len, 0);
                return b;
            }
        }
        vec![0u8; len]
    }

    /// Insert a decoded tile whose pixels `valid` are valid; returns the shared handle.
    pub(crate) fn insert(&self, key: TileKey, data: Vec<u8>, valid: Window) -> Arc<Vec<u8>> {
        let data = Arc::new(data);
        let len = data.len();
        if !self.enabled() || len > self.budget_per_shard {
            return data;
        }
        let mut s = Self::lock(self.shard(&key));
        // Another thread may have cached more of the tile meanwhile: keep that.
        if s.map.get(&key).is_some_and(|e| e.valid.contains(&valid)) {
            return data;
        }
        s.clock += 1;
        let now = s.clock;
        if let Some(old) = s.map.insert(
            key,
            Entry {
                data: Arc::clone(&data),
                valid,
                stamp: now,
            },
        ) {
            s.order.remove(&old.stamp);
            s.bytes = s.bytes.saturating_sub(old.data.len());
        }
        s.order.insert(now, key);
        s.bytes += len;
        while s.bytes > self.budget_per_shard {
            let Some((&stamp, &victim)) = s.order.iter().next() else {
                break;
            };
            s.order.remove(&stamp);
            if let Some(e) = s.map.remove(&victim) {
                s.bytes = s.bytes.saturating_sub(e.data.len());
                if let Ok(buf) = Arc::try_unwrap(e.data)
                    && s.free.len() < MAX_FREE_PER_SHARD
                {
                    s.free.push(buf);
                }
            }
        }
        data
    }

    /// Number of cached tiles (for tests/diagnostics).
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|m| Self::lock(m).map.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Columns 0..4, rows 0..`rows`.
    fn top(rows: usize) -> Window {
        Window::full(4, rows)
    }

    #[test]
    fn lru_evicts_oldest_and_respects_budget() {
        let c = TileCache::new(SHARDS * 100);
        for i in 0..1000u64 {
            c.insert((0, i), vec![1u8; 40], top(4));
        }
        // each shard holds at most 2 entries of 40 bytes (budget 100)
        assert!(c.len() <= SHARDS * 2, "{}", c.len());
        assert!(c.get(&(0, 999), &top(4)).hit().is_some());
        assert!(matches!(c.get(&(0, 0), &top(1)), Lookup::Miss));
    }

    #[test]
    fn partial_tiles_answer_only_reads_of_their_valid_rows() {
        let c = TileCache::new(SHARDS * 1000);
        c.insert((1, 7), vec![1u8; 40], top(2));
        assert!(c.get(&(1, 7), &top(1)).hit().is_some());
        assert!(c.get(&(1, 7), &top(2)).hit().is_some());
        assert!(matches!(c.get(&(1, 7), &top(3)), Lookup::Partial));
        // The whole tile replaces the partial one.
        c.insert((1, 7), vec![2u8; 40], top(4));
        assert_eq!(c.get(&(1, 7), &top(4)).hit().map(|t| t[0]), Some(2));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn partial_tiles_answer_only_reads_inside_their_window() {
        let c = TileCache::new(SHARDS * 1000);
        let w = |x0, y0, x1, y1| Window { x0, y0, x1, y1 };
        c.insert((2, 3), vec![1u8; 48], w(1, 2, 3, 4));
        assert!(c.get(&(2, 3), &w(1, 2, 3, 4)).hit().is_some());
        assert!(c.get(&(2, 3), &w(2, 3, 3, 4)).hit().is_some());
        for outside in [w(0, 2, 3, 4), w(1, 1, 3, 4), w(1, 2, 4, 4), w(1, 2, 3, 5)] {
            assert!(
                matches!(c.get(&(2, 3), &outside), Lookup::Partial),
                "{outside:?}"
            );
        }
    }

    #[test]
    fn part_of_a_tile_does_not_replace_more_of_it() {
        let c = TileCache::new(SHARDS * 1000);
        c.insert((0, 5), vec![1u8; 40], top(4));
        c.insert((0, 5), vec![2u8; 40], top(2));
        assert_eq!(c.get(&(0, 5), &top(4)).hit().map(|t| t[0]), Some(1));
    }

    #[test]
    fn disabled_cache_stores_nothing() {
        let c = TileCache::new(0);
        c.insert((0, 1), vec![0u8; 10], top(1));
        assert!(matches!(c.get(&(0, 1), &top(0)), Lookup::Miss));
        assert_eq!(c.len(), 0);
    }
}
