//! Decoded-tile cache: a sharded LRU with a byte budget, shared by all threads of one slide.
//!
//! Entries are `Arc<Vec<u8>>` so readers copy pixels out without holding a lock. An entry may hold
//! only the top rows of its tile (a partial JPEG decode): it records how many rows are valid and
//! answers only reads that need no more. Evicted buffers that nobody else holds are kept in a
//! small per-shard free list and reused by the next decode.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Cache key: (level index, chunk index within the level).
pub(crate) type TileKey = (u32, u64);

const SHARDS: usize = 16;
const MAX_FREE_PER_SHARD: usize = 4;

struct Entry {
    data: Arc<Vec<u8>>,
    /// Rows valid from the top of the tile.
    rows: u64,
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
    /// The tile, with the rows asked for.
    Hit(Arc<Vec<u8>>),
    /// The top rows of the tile, fewer than asked for.
    TooFewRows,
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

    /// Look a tile up whose top `need_rows` rows are valid, marking it most recently used.
    pub(crate) fn get(&self, key: &TileKey, need_rows: u64) -> Lookup {
        if !self.enabled() {
            return Lookup::Miss;
        }
        let mut s = Self::lock(self.shard(key));
        s.clock += 1;
        let now = s.clock;
        let old = match s.map.get_mut(key) {
            None => return Lookup::Miss,
            Some(e) if e.rows < need_rows => return Lookup::TooFewRows,
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

    /// Insert a decoded tile whose top `rows` rows are valid; returns the shared handle.
    pub(crate) fn insert(&self, key: TileKey, data: Vec<u8>, rows: u64) -> Arc<Vec<u8>> {
        let data = Arc::new(data);
        let len = data.len();
        if !self.enabled() || len > self.budget_per_shard {
            return data;
        }
        let mut s = Self::lock(self.shard(&key));
        s.clock += 1;
        let now = s.clock;
        if let Some(old) = s.map.insert(
            key,
            Entry {
                data: Arc::clone(&data),
                rows,
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

    #[test]
    fn lru_evicts_oldest_and_respects_budget() {
        let c = TileCache::new(SHARDS * 100);
        for i in 0..1000u64 {
            c.insert((0, i), vec![1u8; 40], 4);
        }
        // each shard holds at most 2 entries of 40 bytes (budget 100)
        assert!(c.len() <= SHARDS * 2, "{}", c.len());
        assert!(c.get(&(0, 999), 4).hit().is_some());
        assert!(matches!(c.get(&(0, 0), 1), Lookup::Miss));
    }

    #[test]
    fn partial_tiles_answer_only_reads_of_their_valid_rows() {
        let c = TileCache::new(SHARDS * 1000);
        c.insert((1, 7), vec![1u8; 40], 2);
        assert!(c.get(&(1, 7), 1).hit().is_some());
        assert!(c.get(&(1, 7), 2).hit().is_some());
        assert!(matches!(c.get(&(1, 7), 3), Lookup::TooFewRows));
        // The whole tile replaces the partial one.
        c.insert((1, 7), vec![2u8; 40], 4);
        assert_eq!(c.get(&(1, 7), 4).hit().map(|t| t[0]), Some(2));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn disabled_cache_stores_nothing() {
        let c = TileCache::new(0);
        c.insert((0, 1), vec![0u8; 10], 1);
        assert!(matches!(c.get(&(0, 1), 0), Lookup::Miss));
        assert_eq!(c.len(), 0);
    }
}
