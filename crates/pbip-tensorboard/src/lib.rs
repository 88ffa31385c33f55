//! TensorBoard event files without a protobuf dependency.
//!
//! * [`EventWriter`] writes `events.out.tfevents.<unix secs>.<hostname>.<pid>.<n>` files in a log
//!   directory: the first event is `file_version: "brain.Event:2"`, then scalar
//!   ([`EventWriter::add_scalar`]) and text ([`EventWriter::add_text`]) summaries. Every `add_*`
//!   call writes complete records and flushes them to the OS, so a killed run loses nothing it
//!   already logged. The wall clock is injectable ([`EventWriter::create_with_clock`]), which
//!   makes output byte-identical to the Python `tensorboardX` writer for the same wall times.
//! * [`read_events`] parses event files written by this crate and by real TensorFlow /
//!   PyTorch / tensorboardX writers: `simple_value` scalars, TF2 scalar tensors, text tensors.
//!   Every CRC is verified; truncation or corruption is an error naming the file and the byte
//!   offset, never a panic.
//!
//! # Record framing (TFRecord)
//! `u64 length (LE) | u32 masked_crc32c(length bytes) | data | u32 masked_crc32c(data)` with
//! `masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8`, CRC32C = Castagnoli.

mod crc;
mod event;
mod proto;

pub use crc::{crc32c, masked_crc32c};
pub use event::{Event, EventWhat, SummaryValue, Value};

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The `file_version` written as the first event of every file.
pub const FILE_VERSION: &str = "brain.Event:2";

/// Errors of this crate; each names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum TbError {
    /// An I/O operation failed.
    #[error("{path}: {what}: {source}")]
    Io {
        /// File or directory concerned.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file ends in the middle of a record.
    #[error("{path}: truncated record at byte {offset}: {what}")]
    Truncated {
        /// Event file.
        path: PathBuf,
        /// Offset of the record start.
        offset: u64,
        /// Which part is missing.
        what: String,
    },
    /// A CRC does not match.
    #[error(
        "{path}: CRC mismatch in the {part} of the record at byte {offset} (stored {stored:#010x}, computed {computed:#010x})"
    )]
    BadCrc {
        /// Event file.
        path: PathBuf,
        /// Offset of the record start.
        offset: u64,
        /// `"length"` or `"data"`.
        part: &'static str,
        /// CRC stored in the file.
        stored: u32,
        /// CRC computed from the bytes.
        computed: u32,
    },
    /// A record's payload is not a valid `Event` message.
    #[error("{path}: malformed event in the record at byte {offset}: {msg}")]
    Malformed {
        /// Event file.
        path: PathBuf,
        /// Offset of the record start.
        offset: u64,
        /// Description.
        msg: String,
    },
}

/// Frames `data` as one TFRecord.
pub fn frame_record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// Source of wall-clock time in seconds since the Unix epoch.
pub type Clock = Box<dyn FnMut() -> f64 + Send>;

/// The system clock as a [`Clock`].
pub fn system_clock() -> Clock {
    Box::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    })
}

static FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "localhost".to_string()
    } else {
        clean
    }
}

/// Writes one TensorBoard event file.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
    clock: Clock,
}

impl std::fmt::Debug for EventWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventWriter")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl EventWriter {
    /// Creates the log directory if needed and a new event file in it, using the system clock.
    pub fn create(log_dir: impl AsRef<Path>) -> Result<Self, TbError> {
        Self::create_with_clock(log_dir, system_clock())
    }

    /// Like [`EventWriter::create`] with an injected clock; the clock is called once for the
    /// file name and `file_version` event, then once per event written without explicit time.
    pub fn create_with_clock(log_dir: impl AsRef<Path>, mut clock: Clock) -> Result<Self, TbError> {
        let dir = log_dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| TbError::Io {
            path: dir.to_path_buf(),
            what: "creating the log directory",
            source,
        })?;
        let t0 = clock();
        let secs = if t0.is_finite() && t0 > 0.0 {
            t0 as u64
        } else {
            0
        };
        let host = hostname();
        let pid = std::process::id();
        let (path, file) = loop {
            let n = FILE_COUNTER.fetch_add(1, Ordering::Relaxed);
            let p = dir.join(format!("events.out.tfevents.{secs}.{host}.{pid}.{n}"));
            match OpenOptions::new().write(true).create_new(true).open(&p) {
                Ok(f) => break (p, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(TbError::Io {
                        path: p,
                        what: "creating the event file",
                        source,
                    });
                }
            }
        };
        tracing::debug!(path = %path.display(), "created TensorBoard event file");
        let mut w = EventWriter {
            path,
            out: BufWriter::new(file),
            clock,
        };
        w.write_event(&Event {
            wall_time_secs: t0,
            step: 0,
            what: EventWhat::FileVersion(FILE_VERSION.to_string()),
        })?;
        w.flush()?;
        Ok(w)
    }

    /// Path of the event file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event (not flushed; call [`EventWriter::flush`]).
    pub fn write_event(&mut self, event: &Event) -> Result<(), TbError> {
        let rec = frame_record(&event.encode());
        self.out.write_all(&rec).map_err(|source| TbError::Io {
            path: self.path.clone(),
            what: "writing an event",
            source,
        })
    }

    /// Logs scalar `value` under `tag` at `step` (wall time from the clock) and flushes.
    pub fn add_scalar(&mut self, tag: &str, value: f32, step: i64) -> Result<(), TbError> {
        let t = (self.clock)();
        self.add_scalar_at(tag, value, step, t)
    }

    /// Logs a scalar with an explicit wall time and flushes.
    pub fn add_scalar_at(
        &mut self,
        tag: &str,
        value: f32,
        step: i64,
        wall_time_secs: f64,
    ) -> Result<(), TbError> {
        self.write_event(&scalar_event(tag, value, step, wall_time_secs))?;
        self.flush()
    }

    /// Logs several scalars at one step (one event each, all with the same wall time), then
    /// flushes once.
    pub fn add_scalars(&mut self, values: &[(&str, f32)], step: i64) -> Result<(), TbError> {
        let t = (self.clock)();
        for (tag, v) in values {
            self.write_event(&scalar_event(tag, *v, step, t))?;
        }
        self.flush()
    }

    /// Logs a text summary (text plugin, a 1-element string tensor, shown in TensorBoard's Text
    /// tab; markdown is rendered there) and flushes. The tag is written as given.
    pub fn add_text(&mut self, tag: &str, text: &str, step: i64) -> Result<(), TbError> {
        let t = (self.clock)();
        self.add_text_at(tag, text, step, t)
    }

    /// Logs a text summary with an explicit wall time and flushes.
    pub fn add_text_at(
        &mut self,
        tag: &str,
        text: &str,
        step: i64,
        wall_time_secs: f64,
    ) -> Result<(), TbError> {
        self.write_event(&Event {
            wall_time_secs,
            step,
            what: EventWhat::Summary(vec![SummaryValue {
                tag: tag.to_string(),
                value: Value::Text(text.to_string()),
                plugin_name: Some("text".to_string()),
            }]),
        })?;
        self.flush()
    }

    /// Flushes buffered records to the OS.
    pub fn flush(&mut self) -> Result<(), TbError> {
        self.out.flush().map_err(|source| TbError::Io {
            path: self.path.clone(),
            what: "flushing",
            source,
        })
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if let Err(e) = self.out.flush() {
            tracing::warn!(path = %self.path.display(), error = %e, "flushing event file on drop failed");
        }
    }
}

fn scalar_event(tag: &str, value: f32, step: i64, wall_time_secs: f64) -> Event {
    Event {
        wall_time_secs,
        step,
        what: EventWhat::Summary(vec![SummaryValue {
            tag: tag.to_string(),
            value: Value::Simple(value),
            plugin_name: None,
        }]),
    }
}

/// Reads every event of an event file, verifying both CRCs of each record.
pub fn read_events(path: impl AsRef<Path>) -> Result<Vec<Event>, TbError> {
    let path = path.as_ref();
    let data = std::fs::read(path).map_err(|source| TbError::Io {
        path: path.to_path_buf(),
        what: "reading the event file",
        source,
    })?;
    parse_events(&data, path)
}

/// Parses event-file bytes; `path` is only used in error messages.
pub fn parse_events(data: &[u8], path: &Path) -> Result<Vec<Event>, TbError> {
    let mut events = Vec::new();
    let mut pos = 0usize;
    let trunc = |offset: usize, what: String| TbError::Truncated {
        path: path.to_path_buf(),
        offset: offset as u64,
        what,
    };
    while pos < data.len() {
        let start = pos;
        let rest = &data[pos..];
        if rest.len() < 12 {
            return Err(trunc(
                start,
                format!("{} bytes left, the 12-byte header needs 12", rest.len()),
            ));
        }
        let len_bytes = &rest[..8];
        let stored = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]);
        let computed = masked_crc32c(len_bytes);
        if stored != computed {
            return Err(TbError::BadCrc {
                path: path.to_path_buf(),
                offset: start as u64,
                part: "length",
                stored,
                computed,
            });
        }
        let len = u64::from_le_bytes([
            len_bytes[0],
            len_bytes[1],
            len_bytes[2],
            len_bytes[3],
            len_bytes[4],
            len_bytes[5],
            len_bytes[6],
            len_bytes[7],
        ]);
        let avail = (rest.len() - 12) as u64;
        if avail < len.saturating_add(4) {
            return Err(trunc(
                start,
                format!(
                    "record declares {len} data bytes + 4 CRC bytes, only {avail} bytes follow"
                ),
            ));
        }
        let len = len as usize; // fits: len + 4 <= avail <= usize::MAX
        let payload = &rest[12..12 + len];
        let c = &rest[12 + len..16 + len];
        let stored = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let computed = masked_crc32c(payload);
        if stored != computed {
            return Err(TbError::BadCrc {
                path: path.to_path_buf(),
                offset: start as u64,
                part: "data",
                stored,
                computed,
            });
        }
        let ev = Event::decode(payload).map_err(|msg| TbError::Malformed {
            path: path.to_path_buf(),
            offset: start as u64,
            msg,
        })?;
        events.push(ev);
        pos = start + 16 + len;
    }
    Ok(events)
}

/// Scalars of `events` as `(tag, step, value)` in file order (both `simple_value` and
/// scalar-tensor entries).
pub fn scalars(events: &[Event]) -> Vec<(String, i64, f64)> {
    let mut out = Vec::new();
    for e in events {
        if let EventWhat::Summary(vals) = &e.what {
            for v in vals {
                match v.value {
                    Value::Simple(x) => out.push((v.tag.clone(), e.step, x as f64)),
                    Value::TensorScalar(x) => out.push((v.tag.clone(), e.step, x)),
                    _ => {}
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout() {
        let r = frame_record(b"abc");
        assert_eq!(r.len(), 3 + 16);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(
            parse_events(&frame_record(&[]), Path::new("x"))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn file_name_pattern() {
        let dir = tempfile::tempdir().unwrap();
        let w =
            EventWriter::create_with_clock(dir.path().join("a/b"), Box::new(|| 1234.9)).unwrap();
        let name = w.path().file_name().unwrap().to_str().unwrap().to_string();
        let parts: Vec<&str> = name.split('.').collect();
        assert_eq!(&parts[..4], &["events", "out", "tfevents", "1234"]);
        assert_eq!(parts.len(), 7, "{name}");
        assert_eq!(parts[5], std::process::id().to_string());
        assert!(parts[6].parse::<u64>().is_ok());
        let w2 =
            EventWriter::create_with_clock(dir.path().join("a/b"), Box::new(|| 1234.9)).unwrap();
        assert_ne!(w.path(), w2.path());
    }
}
