//! Byte-budgeted LRU of encoded tiles.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use axum::body::Bytes;
use lru::LruCache;

/// Which picture a tile is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// Slide pixels (JPEG).
    Slide,
    /// Class mask; bit `k` of the set = class `k` hidden.
    Mask {
        /// Hidden classes, a 256-bit set.
        hidden: [u64; 4],
    },
    /// Confidence of one class.
    Confidence(u8),
    /// `1 - (p1 - p2)`.
    Uncertainty,
}

/// A cached tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TileKey {
    /// Catalog index of the slide.
    pub entry: usize,
    /// Picture.
    pub layer: Layer,
    /// DeepZoom level.
    pub level: usize,
    /// Column.
    pub col: u64,
    /// Row.
    pub row: u64,
}

struct Inner {
    lru: LruCache<TileKey, Bytes>,
    bytes: usize,
    hits: u64,
    misses: u64,
}

/// Encoded tiles, at most `budget_bytes` of them (least recently used dropped first).
pub struct TileCache {
    budget_bytes: usize,
    inner: Mutex<Inner>,
}

/// Counters of a [`TileCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Tiles held.
    pub tiles: usize,
    /// Bytes held.
    pub bytes: usize,
    /// Budget, bytes.
    pub budget_bytes: usize,
    /// Lookups answered.
    pub hits: u64,
    /// Lookups not answered.
    pub misses: u64,
}

impl TileCache {
    /// An empty cache of `budget_bytes` (0 = no caching).
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            budget_bytes,
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
                hits: 0,
                misses: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every update is one step).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tile, marked as recently used.
    pub fn get(&self, key: &TileKey) -> Option<Bytes> {
        let mut g = self.lock();
        let hit = g.lru.get(key).cloned();
        if hit.is_some() {
            g.hits += 1;
        } else {
            g.misses += 1;
        }
        hit
    }

    /// Stores a tile, dropping the least recently used ones beyond the budget. A tile larger than
    /// an eighth of the budget is not stored.
    pub fn insert(&self, key: TileKey, tile: Bytes) {
        if tile.len() > self.budget_bytes / 8 {
            return;
        }
        let mut g = self.lock();
        g.bytes += tile.len();
        if let Some(old) = g.lru.put(key, tile) {
            g.bytes -= old.len();
        }
        while g.bytes > self.budget_bytes {
            match g.lru.pop_lru() {
                Some((_, v)) => g.bytes -= v.len(),
                None => break,
            }
        }
    }

    /// Counters.
    pub fn stats(&self) -> CacheStats {
        let g = self.lock();
        CacheStats {
            tiles: g.lru.len(),
            bytes: g.bytes,
            budget_bytes: self.budget_bytes,
            hits: g.hits,
            misses: g.misses,
        }
    }
}

/// A small LRU of open things (slides, masks) keyed by catalog index.
pub struct OpenSet<T> {
    inner: Mutex<LruCache<usize, std::sync::Arc<T>>>,
}

impl<T> OpenSet<T> {
    /// At most `capacity` (≥ 1) open at once.
    pub fn new(capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner: Mutex::new(LruCache::new(cap)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<usize, std::sync::Arc<T>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open value of `i`, opening it with `open` (outside the lock) when not held. The least
    /// recently used value is closed when the set is full (once its last user drops it).
    pub fn get_or_open<E>(
        &self,
        i: usize,
        open: impl FnOnce() -> Result<T, E>,
    ) -> Result<std::sync::Arc<T>, E> {
        if let Some(v) = self.lock().get(&i) {
            return Ok(v.clone());
        }
        let v = std::sync::Arc::new(open()?);
        let mut g = self.lock();
        if let Some(existing) = g.get(&i) {
            return Ok(existing.clone());
        }
        g.put(i, v.clone());
        Ok(v)
    }

    /// Number held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(col: u64) -> TileKey {
        TileKey {
            entry: 0,
            layer: Layer::Slide,
            level: 3,
            col,
            row: 0,
        }
    }

    #[test]
    fn budget_evicts_least_recently_used() {
        let c = TileCache::new(800);
        for i in 0..4 {
            c.insert(key(i), Bytes::from(vec![0u8; 100]));
        }
        assert!(c.get(&key(0)).is_some(), "touch 0");
        for i in 4..9 {
            c.insert(key(i), Bytes::from(vec![0u8; 100]));
        }
        let s = c.stats();
        assert!(s.bytes <= 800, "{s:?}");
        assert_eq!(s.tiles, 8);
        assert!(c.get(&key(0)).is_some(), "recently used kept");
        assert!(c.get(&key(1)).is_none(), "least recently used dropped");
        // Replacing a key does not double count.
        c.insert(key(8), Bytes::from(vec![0u8; 50]));
        assert_eq!(c.stats().bytes, 750);
        // Oversized tiles are not kept.
        c.insert(key(99), Bytes::from(vec![0u8; 101]));
        assert!(c.get(&key(99)).is_none());
        let mask = TileKey {
            layer: Layer::Mask {
                hidden: [1, 0, 0, 0],
            },
            ..key(2)
        };
        assert!(c.get(&mask).is_none(), "layers are distinct keys");
    }

    #[test]
    fn open_set_reuses_and_bounds() {
        let s: OpenSet<String> = OpenSet::new(2);
        let mut opened = 0;
        for i in [0usize, 1, 0, 2, 0, 1] {
            s.get_or_open::<()>(i, || {
                opened += 1;
                Ok(format!("v{i}"))
            })
            .unwrap();
        }
        // 0, 1 opened; 0 reused; 2 evicts 1; 0 reused; 1 reopened.
        assert_eq!(opened, 4);
        assert_eq!(s.len(), 2);
        let e = s.get_or_open(7, || Err::<String, _>("bad")).unwrap_err();
        assert_eq!(e, "bad");
        assert_eq!(s.len(), 2, "failures are not stored");
    }
}
