//! Output-level image planes that live in memory or in a scratch file on disk.
//!
//! Whole-slide outputs are large: a 16k x 16k output grid with two classes is 2 GiB of f32
//! confidence. [`Planes`] stores `planes` row-major `width x height` arrays of a plain numeric type
//! either in memory (small grids, tests) or in a scratch file (whole slides), and gives access to
//! rectangles only, so every pass over the data (stitching, CRF, morphology, components, exports)
//! keeps a tile or a band of rows in memory, never the whole grid.
//!
//! The scratch file is created sparse (zero-filled by `set_len`) and deleted when the [`Planes`] is
//! dropped. Reads and writes are positional (`pread`/`pwrite`), so rectangles may be read from
//! several threads at once; writes to disjoint rectangles from several threads are also safe. File
//! pages live in the OS page cache, not in the process's resident set.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use bytemuck::Pod;

use crate::error::{PostError, Result, invalid};

/// A rectangle of a plane, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rect {
    /// Left column.
    pub x0: usize,
    /// Top row.
    pub y0: usize,
    /// Width.
    pub w: usize,
    /// Height.
    pub h: usize,
}

impl Rect {
    /// A rectangle.
    pub fn new(x0: usize, y0: usize, w: usize, h: usize) -> Self {
        Self { x0, y0, w, h }
    }

    /// Number of pixels.
    pub fn area(&self) -> usize {
        self.w * self.h
    }

    /// One past the right column.
    pub fn x1(&self) -> usize {
        self.x0 + self.w
    }

    /// One past the bottom row.
    pub fn y1(&self) -> usize {
        self.y0 + self.h
    }
}

enum Store<T> {
    Memory(RwLock<Vec<T>>),
    File { file: std::fs::File, path: PathBuf },
}

/// `planes` row-major `width x height` arrays of `T`, in memory or in a scratch file (see the
/// module docs).
pub struct Planes<T: Pod> {
    width: usize,
    height: usize,
    planes: usize,
    store: Store<T>,
}

impl<T: Pod> std::fmt::Debug for Planes<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planes")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("planes", &self.planes)
            .field("path", &self.path())
            .finish()
    }
}

fn checked_len(width: usize, height: usize, planes: usize) -> Result<usize> {
    width
        .checked_mul(height)
        .and_then(|n| n.checked_mul(planes))
        .ok_or_else(|| {
            PostError::InvalidArgument(format!("{planes} planes of {width}x{height} overflow"))
        })
}

impl<T: Pod> Planes<T> {
    /// Zero-filled planes in memory.
    pub fn memory(width: usize, height: usize, planes: usize) -> Result<Self> {
        let n = checked_len(width, height, planes)?;
        Ok(Self {
            width,
            height,
            planes,
            store: Store::Memory(RwLock::new(vec![T::zeroed(); n])),
        })
    }

    /// Planes in memory holding `data` (`planes * height * width` values, plane-major).
    pub fn from_vec(width: usize, height: usize, planes: usize, data: Vec<T>) -> Result<Self> {
        let n = checked_len(width, height, planes)?;
        if data.len() != n {
            return invalid(format!(
                "planes: {} values for {planes} planes of {width}x{height}",
                data.len()
            ));
        }
        Ok(Self {
            width,
            height,
            planes,
            store: Store::Memory(RwLock::new(data)),
        })
    }

    /// Zero-filled planes in a new scratch file `path` (sparse; deleted on drop). An existing file
    /// is replaced.
    pub fn scratch_file(path: &Path, width: usize, height: usize, planes: usize) -> Result<Self> {
        let n = checked_len(width, height, planes)?;
        let bytes = (n as u64)
            .checked_mul(std::mem::size_of::<T>() as u64)
            .ok_or_else(|| PostError::InvalidArgument("scratch file size overflows".into()))?;
        let io = |source| PostError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io)?;
        file.set_len(bytes).map_err(io)?;
        Ok(Self {
            width,
            height,
            planes,
            store: Store::File {
                file,
                path: path.to_path_buf(),
            },
        })
    }

    /// In memory when `dir` is `None`, else in a new scratch file `dir/<n>-name` (`n` unique in
    /// this process, so planes of the same name never share a file).
    pub fn new_in(
        dir: Option<&Path>,
        name: &str,
        width: usize,
        height: usize,
        planes: usize,
    ) -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        match dir {
            None => Self::memory(width, height, planes),
            Some(d) => {
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Self::scratch_file(&d.join(format!("{n}-{name}")), width, height, planes)
            }
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Number of planes.
    pub fn planes(&self) -> usize {
        self.planes
    }

    /// The scratch file, if on disk.
    pub fn path(&self) -> Option<&Path> {
        match &self.store {
            Store::Memory(_) => None,
            Store::File { path, .. } => Some(path),
        }
    }

    fn check(&self, plane: usize, r: Rect, len: usize, what: &str) -> Result<()> {
        if plane >= self.planes || r.x1() > self.width || r.y1() > self.height {
            return invalid(format!(
                "planes {what}: plane {plane} rect {r:?} outside {} planes of {}x{}",
                self.planes, self.width, self.height
            ));
        }
        if len != r.area() {
            return invalid(format!(
                "planes {what}: buffer of {len} values for a {}x{} rect",
                r.w, r.h
            ));
        }
        Ok(())
    }

    fn offset(&self, plane: usize, x: usize, y: usize) -> usize {
        (plane * self.height + y) * self.width + x
    }

    fn io_err(&self, source: std::io::Error) -> PostError {
        PostError::Io {
            path: self.path().map(Path::to_path_buf).unwrap_or_default(),
            source,
        }
    }

    fn lock_err(&self) -> PostError {
        PostError::InvalidArgument("planes: a thread panicked while holding the lock".into())
    }

    /// Reads rectangle `r` of `plane` into `out` (row-major, `r.w * r.h` values).
    pub fn read_rect(&self, plane: usize, r: Rect, out: &mut [T]) -> Result<()> {
        self.check(plane, r, out.len(), "read")?;
        if r.area() == 0 {
            return Ok(());
        }
        match &self.store {
            Store::Memory(m) => {
                let data = m.read().map_err(|_| self.lock_err())?;
                for row in 0..r.h {
                    let o = self.offset(plane, r.x0, r.y0 + row);
                    out[row * r.w..(row + 1) * r.w].copy_from_slice(&data[o..o + r.w]);
                }
            }
            Store::File { file, .. } => {
                let sz = std::mem::size_of::<T>();
                if r.w == self.width {
                    // Whole rows are contiguous: one read.
                    let o = self.offset(plane, 0, r.y0);
                    read_at(file, bytemuck::cast_slice_mut(out), (o * sz) as u64)
                        .map_err(|e| self.io_err(e))?;
                } else {
                    for row in 0..r.h {
                        let o = self.offset(plane, r.x0, r.y0 + row);
                        let dst = bytemuck::cast_slice_mut(&mut out[row * r.w..(row + 1) * r.w]);
                        read_at(file, dst, (o * sz) as u64).map_err(|e| self.io_err(e))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Rectangle `r` of `plane` as a new vector.
    pub fn read_rect_vec(&self, plane: usize, r: Rect) -> Result<Vec<T>> {
        let mut v = vec![T::zeroed(); r.area()];
        self.read_rect(plane, r, &mut v)?;
        Ok(v)
    }

    /// Rows `[y0, y0 + rows)` of `plane` (full width).
    pub fn read_rows(&self, plane: usize, y0: usize, rows: usize) -> Result<Vec<T>> {
        self.read_rect_vec(plane, Rect::new(0, y0, self.width, rows))
    }

    /// Rectangle `r` of every plane, plane-major (`planes * r.h * r.w` values).
    pub fn read_rect_all(&self, r: Rect) -> Result<Vec<T>> {
        let mut v = vec![T::zeroed(); self.planes * r.area()];
        for (p, chunk) in v.chunks_mut(r.area().max(1)).enumerate().take(self.planes) {
            self.read_rect(p, r, chunk)?;
        }
        Ok(v)
    }

    /// Writes `data` (row-major, `r.w * r.h` values) into rectangle `r` of `plane`.
    pub fn write_rect(&self, plane: usize, r: Rect, data: &[T]) -> Result<()> {
        self.check(plane, r, data.len(), "write")?;
        if r.area() == 0 {
            return Ok(());
        }
        match &self.store {
            Store::Memory(m) => {
                let mut d = m.write().map_err(|_| self.lock_err())?;
                for row in 0..r.h {
                    let o = self.offset(plane, r.x0, r.y0 + row);
                    d[o..o + r.w].copy_from_slice(&data[row * r.w..(row + 1) * r.w]);
                }
            }
            Store::File { file, .. } => {
                let sz = std::mem::size_of::<T>();
                if r.w == self.width {
                    let o = self.offset(plane, 0, r.y0);
                    write_at(file, bytemuck::cast_slice(data), (o * sz) as u64)
                        .map_err(|e| self.io_err(e))?;
                } else {
                    for row in 0..r.h {
                        let o = self.offset(plane, r.x0, r.y0 + row);
                        let src = bytemuck::cast_slice(&data[row * r.w..(row + 1) * r.w]);
                        write_at(file, src, (o * sz) as u64).map_err(|e| self.io_err(e))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes rectangle `r` of every plane from plane-major `data` (`planes * r.h * r.w`).
    pub fn write_rect_all(&self, r: Rect, data: &[T]) -> Result<()> {
        if data.len() != self.planes * r.area() {
            return invalid(format!(
                "planes write: {} values for {} planes of a {}x{} rect",
                data.len(),
                self.planes,
                r.w,
                r.h
            ));
        }
        for p in 0..self.planes {
            self.write_rect(p, r, &data[p * r.area()..(p + 1) * r.area()])?;
        }
        Ok(())
    }

    /// All values (plane-major). Reads a file-backed store whole: for small grids and tests.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        let full = Rect::new(0, 0, self.width, self.height);
        self.read_rect_all(full)
    }
}

impl<T: Pod> Drop for Planes<T> {
    fn drop(&mut self) {
        if let Store::File { path, .. } = &self.store
            && let Err(e) = std::fs::remove_file(path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), "could not remove scratch file: {e}");
        }
    }
}

#[cfg(unix)]
fn read_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(unix)]
fn write_at(file: &std::fs::File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &std::fs::File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_read(buf, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
        offset += n as u64;
    }
    Ok(())
}

#[cfg(windows)]
fn write_at(file: &std::fs::File, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_write(buf, offset)?;
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// A grid of tiles with halos: tile cores of `tile_px` (the last ones smaller) cover the image
/// exactly once; each tile's context is its core grown by `halo_px` on every side, clipped to the
/// image.
pub fn tile_grid(width: usize, height: usize, tile_px: usize, halo_px: usize) -> Vec<(Rect, Rect)> {
    let t = tile_px.max(1);
    let mut v = Vec::new();
    for y0 in (0..height).step_by(t) {
        for x0 in (0..width).step_by(t) {
            let core = Rect::new(x0, y0, t.min(width - x0), t.min(height - y0));
            let (cx0, cy0) = (x0.saturating_sub(halo_px), y0.saturating_sub(halo_px));
            let (cx1, cy1) = (
                (core.x1() + halo_px).min(width),
                (core.y1() + halo_px).min(height),
            );
            v.push((core, Rect::new(cx0, cy0, cx1 - cx0, cy1 - cy0)));
        }
    }
    v
}

/// Copies the `core` part out of a `ctx`-sized row-major buffer.
pub fn crop<T: Copy>(buf: &[T], ctx: Rect, core: Rect) -> Vec<T> {
    let mut out = Vec::with_capacity(core.area());
    for y in core.y0..core.y1() {
        let o = (y - ctx.y0) * ctx.w + (core.x0 - ctx.x0);
        out.extend_from_slice(&buf[o..o + core.w]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(p: &Planes<f32>) {
        let r = Rect::new(3, 2, 5, 4);
        let data: Vec<f32> = (0..20).map(|i| i as f32 + 0.5).collect();
        p.write_rect(1, r, &data).unwrap();
        assert_eq!(p.read_rect_vec(1, r).unwrap(), data);
        // Neighbouring pixels and the other plane are untouched (zero).
        assert!(p.read_rows(0, 0, 10).unwrap().iter().all(|&v| v == 0.0));
        let rows = p.read_rows(1, 2, 1).unwrap();
        assert_eq!(&rows[..3], &[0.0, 0.0, 0.0]);
        assert_eq!(&rows[3..8], &data[..5]);
        assert_eq!(rows[8], 0.0);
        // Full-width writes and reads.
        let full: Vec<f32> = (0..24).map(|i| -(i as f32)).collect();
        p.write_rect(0, Rect::new(0, 7, 12, 2), &full).unwrap();
        assert_eq!(p.read_rows(0, 7, 2).unwrap(), full);
        assert!(p.read_rect_vec(0, Rect::new(11, 9, 2, 1)).is_err());
        assert!(p.write_rect(2, r, &data).is_err());
        assert!(p.write_rect(0, r, &data[..3]).is_err());
    }

    #[test]
    fn memory_and_file_planes_agree() {
        roundtrip(&Planes::memory(12, 10, 2).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scratch.f32");
        {
            let p = Planes::<f32>::scratch_file(&path, 12, 10, 2).unwrap();
            assert_eq!(p.path(), Some(path.as_path()));
            roundtrip(&p);
            assert!(path.exists());
        }
        assert!(!path.exists(), "scratch file removed on drop");
    }

    #[test]
    fn tile_grid_covers_once() {
        let (w, h) = (37, 23);
        let mut count = vec![0u8; w * h];
        for (core, ctx) in tile_grid(w, h, 8, 3) {
            assert!(ctx.x0 <= core.x0 && ctx.y0 <= core.y0);
            assert!(ctx.x1() >= core.x1() && ctx.y1() >= core.y1());
            assert!(ctx.x1() <= w && ctx.y1() <= h);
            assert!(core.x0 - ctx.x0 == 3.min(core.x0));
            for y in core.y0..core.y1() {
                for x in core.x0..core.x1() {
                    count[y * w + x] += 1;
                }
            }
        }
        assert!(count.iter().all(|&c| c == 1));
        let buf: Vec<usize> = (0..20).collect();
        assert_eq!(
            crop(&buf, Rect::new(0, 0, 5, 4), Rect::new(1, 1, 2, 2)),
            vec![6, 7, 11, 12]
        );
    }
}
