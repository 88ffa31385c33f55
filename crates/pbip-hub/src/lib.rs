//! Pretrained weights from the Hugging Face Hub, in the Hub's standard cache.
//!
//! * [`PRESETS`]: the named models pbip uses (ImageNet MiT-B0…B5 for `model.pretrained`, Swin-T for
//!   `prototypes.encoder.weights`, pathology foundation models), with their hub ids and licence /
//!   gating notes.
//! * [`Hub::fetch`]: downloads a repository's weight files (or named files) into the cache and
//!   returns their local paths; [`resolve_weights_path`] turns a config value (`hf:org/name`,
//!   `hf:org/name@revision`, `hf:org/name/file.safetensors`, `hf:PRESET`, or a plain file path) into
//!   a local file.
//!
//! # Environment (the variables `huggingface_hub` reads)
//!
//! * `HF_ENDPOINT`: the hub (default `https://huggingface.co`).
//! * `HF_HOME` (default `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`); the cache is
//!   `HF_HUB_CACHE` (or the older `HUGGINGFACE_HUB_CACHE`), default `$HF_HOME/hub`.
//! * `HF_TOKEN`, else the file `HF_TOKEN_PATH`, else `$HF_HOME/token` (what `huggingface-cli login`
//!   writes): sent as `Authorization: Bearer` to the hub (gated and private models).
//! * `HF_HUB_OFFLINE=1` (also `true`/`yes`/`on`): no network at all; only cached files are returned,
//!   and a file that is not cached is an error saying so.
//!
//! # Cache layout (shared with Python's `huggingface_hub`)
//!
//! ```text
//! $HF_HUB_CACHE/models--{org}--{name}/blobs/{etag}                 file contents (etag = sha256 for
//!                                                                 LFS files, git blob id otherwise)
//! $HF_HUB_CACHE/models--{org}--{name}/blobs/{etag}.incomplete      a download in progress (resumed)
//! $HF_HUB_CACHE/models--{org}--{name}/snapshots/{commit}/{file}    relative symlink to the blob
//! $HF_HUB_CACHE/models--{org}--{name}/refs/{revision}              the commit a branch / tag named
//! $HF_HUB_CACHE/.locks/models--{org}--{name}/{etag}.lock           per-blob lock between processes
//! ```
//!
//! Files are written to `blobs/{etag}.incomplete`, checked (size, then SHA-256 for LFS files or the
//! git blob SHA-1 for small files, against what the hub advertised) and only then renamed to
//! `blobs/{etag}` and linked from the snapshot; a file that fails the check is deleted. An
//! interrupted download is resumed with an HTTP `Range` request, within the same call (`retries`)
//! or by the next one. Two processes fetching the same file serialise on the blob's lock file, and
//! the second one finds the finished blob.
//!
//! # Hub protocol subset
//!
//! * `GET {endpoint}/api/models/{repo_id}/revision/{revision}?blobs=true` → JSON `sha` (the commit)
//!   and `siblings: [{rfilename, size, blobId, lfs: {sha256, size}}]`.
//! * `GET {endpoint}/{repo_id}/resolve/{commit}/{filename}` (redirects followed; `Authorization`
//!   kept only on same-host redirects), with `Range: bytes=N-` to resume (`206` appends, `200`
//!   restarts).
//! * Errors: `401`/`403` with `X-Error-Code: GatedRepo` (or a repository whose info says `gated`) →
//!   [`HubError::Gated`]; `X-Error-Code: RepoNotFound` / `RevisionNotFound` / `EntryNotFound` or `404`
//!   → [`HubError::NotFound`]; the hub's `X-Error-Message` is quoted.
//!
//! # Why not the `hf-hub` crate
//!
//! `hf-hub` 1.0 is async (tokio + reqwest + the Xet client, a large build for a CLI that is
//! otherwise synchronous), restarts an interrupted download from zero, and does not check the
//! downloaded bytes against the advertised SHA-256. This crate implements the small protocol subset
//! above on `ureq` (already in the tree) and writes the same cache layout, so files fetched here are
//! cache hits for Python's `huggingface_hub` / `transformers` / `timm` and vice versa.

mod cache;
mod client;
mod config;
mod presets;
mod select;
mod spec;

use std::path::{Path, PathBuf};

pub use cache::repo_folder_name;
pub use client::{Hub, Selection, Snapshot};
pub use config::HubConfig;
pub use presets::{Access, PRESETS, Preset, preset};
pub use select::{primary_weight_file, weight_files};
pub use spec::{DEFAULT_REVISION, HUB_PREFIX, HubRef, parse_target, validate_repo_id};

/// Errors of hub look-ups, downloads and the cache.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A malformed `hf:` reference, repository id, revision or file name.
    #[error("{0}")]
    Spec(String),
    /// `HF_HUB_OFFLINE` is set and the cache does not hold what was asked for.
    #[error(
        "HF_HUB_OFFLINE is set and {what} of {repo_id} (revision {revision}) is not in the cache \
         {cache}; fetch it while online (`pbip weights fetch {repo_id}`) or unset HF_HUB_OFFLINE"
    )]
    Offline {
        /// Repository id.
        repo_id: String,
        /// Requested revision.
        revision: String,
        /// What is missing (`the revision`, `file config.json`, ...).
        what: String,
        /// The hub cache folder that was searched.
        cache: PathBuf,
    },
    /// The model is gated: a licence must be accepted on the hub and a token sent.
    #[error(
        "{repo_id} is a gated model: {}open {page} while logged in, read and accept its licence / \
         access conditions (some models are approved by hand), create a read token at \
         {endpoint}/settings/tokens and set HF_TOKEN=<token> (or run `huggingface-cli login`, which \
         writes $HF_HOME/token){}",
        gated_prefix(*.token_sent),
        hub_says(.server_message)
    )]
    Gated {
        /// Repository id.
        repo_id: String,
        /// The model page, where the licence is accepted.
        page: String,
        /// The hub, for the token page.
        endpoint: String,
        /// Whether a token was sent with the request.
        token_sent: bool,
        /// The hub's own message (`X-Error-Message` or the JSON `error`).
        server_message: Option<String>,
    },
    /// Repository, revision or file not found (or private without a valid token).
    #[error("{what} not found at {url}{}{}", private_hint(*.token_sent), hub_says(.server_message))]
    NotFound {
        /// What was looked for.
        what: String,
        /// The request.
        url: String,
        /// Whether a token was sent with the request.
        token_sent: bool,
        /// The hub's own message.
        server_message: Option<String>,
    },
    /// Any other HTTP error status.
    #[error("{url}: HTTP {status}{}", hub_says(.message))]
    Http {
        /// The request.
        url: String,
        /// Status code.
        status: u16,
        /// The hub's message, if any.
        message: Option<String>,
    },
    /// Connection, TLS or protocol failure.
    #[error("{url}: {source}")]
    Transport {
        /// The request.
        url: String,
        /// The client error.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The connection ended before the whole file arrived; the partial file is kept and the next
    /// fetch resumes it.
    #[error(
        "download of {file} interrupted after {got} of {} bytes ({reason}); the partial file \
         {partial} is kept and the next fetch resumes it",
        size_or_unknown(*.expected)
    )]
    Interrupted {
        /// File name in the repository.
        file: String,
        /// Bytes on disk.
        got: u64,
        /// Expected size (0 when the hub did not say).
        expected: u64,
        /// The partial file.
        partial: PathBuf,
        /// What happened.
        reason: String,
    },
    /// The downloaded bytes do not match the size or hash the hub advertised; nothing was cached.
    #[error(
        "{file} from {repo_id}: downloaded {what} {actual} does not match the advertised {expected}; \
         the download was deleted and nothing was cached"
    )]
    Checksum {
        /// Repository id.
        repo_id: String,
        /// File name in the repository.
        file: String,
        /// `sha256`, `git blob sha1` or `size`.
        what: &'static str,
        /// Advertised value.
        expected: String,
        /// Value of the downloaded bytes.
        actual: String,
    },
    /// The hub's answer could not be understood.
    #[error("{url}: unexpected response: {message}")]
    Protocol {
        /// The request.
        url: String,
        /// What was wrong.
        message: String,
    },
    /// No weight file to choose, or several.
    #[error("{repo_id} (revision {revision}): {message}")]
    Weights {
        /// Repository id.
        repo_id: String,
        /// Revision.
        revision: String,
        /// What is wrong, with the candidates.
        message: String,
    },
    /// A cache file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

fn size_or_unknown(size: u64) -> String {
    if size == 0 {
        "an unknown number of".into()
    } else {
        size.to_string()
    }
}

fn gated_prefix(token_sent: bool) -> &'static str {
    if token_sent {
        "your token has no access to it yet: "
    } else {
        "no token was sent; "
    }
}

fn private_hint(token_sent: bool) -> &'static str {
    if token_sent {
        ""
    } else {
        " (a private repository needs HF_TOKEN)"
    }
}

fn hub_says(message: &Option<String>) -> String {
    message
        .as_deref()
        .map(|m| format!(" [hub: {m}]"))
        .unwrap_or_default()
}

impl HubError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HubError + '_ {
        move |source| HubError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A config value naming weights: a local file (returned as is, not checked) or a hub reference
/// `hf:org/name[@revision][/path/in/repo]` / `hf:PRESET`, which is fetched into the hub cache
/// (configured from the environment, see the crate docs) and returned as the cached file's path.
/// Without a file name the repository's main weight file is chosen ([`primary_weight_file`]).
/// With `HF_HUB_OFFLINE=1` only the cache is consulted.
pub fn resolve_weights_path(value: impl AsRef<Path>) -> Result<PathBuf, HubError> {
    let value = value.as_ref();
    match value.to_str().and_then(|s| s.strip_prefix(HUB_PREFIX)) {
        Some(_) => resolve_weights_path_with(&Hub::new(HubConfig::from_env()), value),
        None => Ok(value.to_path_buf()),
    }
}

/// [`resolve_weights_path`] with an explicit hub client (endpoint, cache, token, offline mode).
pub fn resolve_weights_path_with(hub: &Hub, value: impl AsRef<Path>) -> Result<PathBuf, HubError> {
    let value = value.as_ref();
    let Some(spec) = value.to_str().and_then(|s| s.strip_prefix(HUB_PREFIX)) else {
        return Ok(value.to_path_buf());
    };
    let r = HubRef::parse(spec)?;
    let selection = match &r.file {
        Some(f) => Selection::Files(vec![f.clone()]),
        None => Selection::PrimaryWeights,
    };
    let snap = hub.fetch(&r.repo_id, &r.revision, &selection)?;
    snap.files
        .into_iter()
        .next()
        .ok_or_else(|| HubError::Weights {
            repo_id: r.repo_id.clone(),
            revision: r.revision.clone(),
            message: "no file was returned".into(),
        })
}

/// Whether a config value is a hub reference (`hf:...`) rather than a file path.
pub fn is_hub_ref(value: impl AsRef<Path>) -> bool {
    value
        .as_ref()
        .to_str()
        .is_some_and(|s| s.starts_with(HUB_PREFIX))
}
