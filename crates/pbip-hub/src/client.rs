//! The hub client: repository info, resumable and verified downloads into the cache.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use sha2::Digest as _;

use crate::HubError;
use crate::cache::RepoCache;
use crate::config::HubConfig;
use crate::select::{default_files, primary_weight_file, weight_files};
use crate::spec::{is_commit_hash, validate_filename, validate_repo_id, validate_revision};

/// Characters left as they are in a path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Longest JSON answer read from the hub (a large repository's file list).
const MAX_JSON_BYTES: u64 = 64 << 20;

/// Which files of a repository to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// The weight files ([`crate::weight_files`]) plus `config.json` and the other small top-level
    /// JSON files.
    Default,
    /// The one main weight file ([`crate::primary_weight_file`]).
    PrimaryWeights,
    /// These files (`/`-separated paths in the repository).
    Files(Vec<String>),
}

/// The result of a fetch: local paths in the cache's snapshot folder.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Repository id.
    pub repo_id: String,
    /// The revision asked for.
    pub revision: String,
    /// The commit it resolved to.
    pub commit: String,
    /// `…/snapshots/{commit}`.
    pub dir: PathBuf,
    /// The selected files (in the snapshot folder; symlinks to blobs on Unix), sorted by name
    /// except for [`Selection::Files`], which keeps the given order.
    pub files: Vec<PathBuf>,
    /// The names of the files this call downloaded (the others were in the cache already).
    pub downloaded: Vec<String>,
    /// True when the hub was not asked at all (offline mode, or the hub was unreachable and the
    /// cache had everything).
    pub cache_only: bool,
}

/// What the hub says a file is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Check {
    /// LFS files: SHA-256 of the contents.
    Sha256(String),
    /// Small files: git blob id, SHA-1 of `blob {len}\0{contents}`.
    GitSha1(String),
}

#[derive(Debug, Clone)]
struct Expect {
    /// Blob name in the cache.
    etag: String,
    check: Option<Check>,
    size: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct RepoInfo {
    sha: Option<String>,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Debug, Clone, Deserialize)]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<Lfs>,
}

#[derive(Debug, Clone, Deserialize)]
struct Lfs {
    sha256: String,
    size: u64,
}

impl Sibling {
    fn size(&self) -> Option<u64> {
        self.lfs.as_ref().map(|l| l.size).or(self.size)
    }

    fn expect(&self) -> Option<Expect> {
        if let Some(lfs) = &self.lfs {
            let h = lfs.sha256.to_ascii_lowercase();
            return Some(Expect {
                etag: h.clone(),
                check: Some(Check::Sha256(h)),
                size: Some(lfs.size),
            });
        }
        self.blob_id.as_ref().map(|b| {
            let b = b.to_ascii_lowercase();
            Expect {
                etag: b.clone(),
                check: Some(Check::GitSha1(b)),
                size: self.size,
            }
        })
    }
}

/// `W/"abc"` → `abc`.
fn normalize_etag(v: &str) -> String {
    v.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_ascii_lowercase()
}

/// Blob names and commits become file names: letters and digits only.
fn check_name(kind: &str, v: &str, url: &str) -> Result<(), HubError> {
    if !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(HubError::Protocol {
            url: url.to_string(),
            message: format!("{kind} `{v}` is not a hash"),
        })
    }
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Failures worth another attempt (resuming where the file stops).
fn retryable(e: &HubError) -> bool {
    match e {
        HubError::Interrupted { .. } | HubError::Transport { .. } => true,
        HubError::Http { status, .. } => *status >= 500 || *status == 429,
        _ => false,
    }
}

/// A client of one hub with one cache.
pub struct Hub {
    cfg: HubConfig,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("cfg", &self.cfg).finish()
    }
}

impl Hub {
    /// A client with these settings.
    pub fn new(cfg: HubConfig) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // The token goes to the hub and its same-host redirects, never to the CDN.
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_per_read(Some(cfg.read_timeout))
            .user_agent(format!("pbip-hub/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self { cfg, agent }
    }

    /// A client configured from the environment ([`HubConfig::from_env`]).
    pub fn from_env() -> Self {
        Self::new(HubConfig::from_env())
    }

    /// The settings.
    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    fn with_token<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.cfg.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    fn info_url(&self, repo_id: &str, revision: &str) -> String {
        format!(
            "{}/api/models/{repo_id}/revision/{}?blobs=true",
            self.cfg.endpoint,
            utf8_percent_encode(revision, SEGMENT)
        )
    }

    fn resolve_url(&self, repo_id: &str, commit: &str, filename: &str) -> String {
        let path: Vec<String> = filename
            .split('/')
            .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
            .collect();
        format!(
            "{}/{repo_id}/resolve/{commit}/{}",
            self.cfg.endpoint,
            path.join("/")
        )
    }

    /// Downloads (or finds in the cache) the selected files of `repo_id` at `revision` and
    /// returns their local paths. Offline (`HF_HUB_OFFLINE`) only the cache is read; when the hub
    /// cannot be reached the cache is used if it has everything (with a warning).
    pub fn fetch(
        &self,
        repo_id: &str,
        revision: &str,
        selection: &Selection,
    ) -> Result<Snapshot, HubError> {
        validate_repo_id(repo_id)?;
        validate_revision(revision)?;
        if let Selection::Files(files) = selection {
            if files.is_empty() {
                return Err(HubError::Spec("no file names given".into()));
            }
            for f in files {
                validate_filename(f)?;
            }
        }
        let cache = RepoCache::new(&self.cfg.cache_dir, repo_id);
        if self.cfg.offline {
            return self.cached(&cache, repo_id, revision, selection);
        }
        let info = match self.repo_info(repo_id, revision) {
            Ok(info) => info,
            Err(e @ HubError::Transport { .. }) => {
                return match self.cached(&cache, repo_id, revision, selection) {
                    Ok(snap) => {
                        tracing::warn!("{e}; using the cached files of {repo_id}@{revision}");
                        Ok(snap)
                    }
                    Err(_) => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let url = self.info_url(repo_id, revision);
        let commit = info.sha.clone().ok_or_else(|| HubError::Protocol {
            url: url.clone(),
            message: "no `sha` (commit) in the repository info".into(),
        })?;
        check_name("commit", &commit, &url)?;
        let names = self.select(repo_id, revision, &info.siblings, selection)?;
        let mut files = Vec::with_capacity(names.len());
        let mut downloaded = Vec::new();
        for name in &names {
            validate_filename(name).map_err(|e| HubError::Protocol {
                url: url.clone(),
                message: e.to_string(),
            })?;
            let sib = info
                .siblings
                .iter()
                .find(|s| &s.rfilename == name)
                .cloned()
                .ok_or_else(|| HubError::NotFound {
                    what: format!("file {name} of {repo_id}"),
                    url: url.clone(),
                    token_sent: self.cfg.token.is_some(),
                    server_message: None,
                })?;
            let (path, fresh) = self.ensure(&cache, repo_id, &commit, &sib)?;
            cache.write_ref(revision, &commit)?;
            if fresh {
                downloaded.push(name.clone());
            }
            files.push(path);
        }
        Ok(Snapshot {
            repo_id: repo_id.to_string(),
            revision: revision.to_string(),
            dir: cache.snapshot_dir(&commit),
            commit,
            files,
            downloaded,
            cache_only: false,
        })
    }

    fn select(
        &self,
        repo_id: &str,
        revision: &str,
        listing: &[Sibling],
        selection: &Selection,
    ) -> Result<Vec<String>, HubError> {
        let weights_err = |message: String| HubError::Weights {
            repo_id: repo_id.to_string(),
            revision: revision.to_string(),
            message,
        };
        let names: Vec<&str> = listing.iter().map(|s| s.rfilename.as_str()).collect();
        match selection {
            Selection::Default => {
                if weight_files(names.iter().copied()).is_empty() {
                    return Err(weights_err(format!(
                        "no weight file (*.safetensors, pytorch_model.bin, *.pth, *.bin) at the top \
                         level; files: {}; name the ones to fetch",
                        short_list(&names)
                    )));
                }
                let sized: Vec<(&str, Option<u64>)> = listing
                    .iter()
                    .map(|s| (s.rfilename.as_str(), s.size()))
                    .collect();
                Ok(default_files(&sized))
            }
            Selection::PrimaryWeights => primary_weight_file(names.iter().copied())
                .map(|f| vec![f])
                .map_err(weights_err),
            Selection::Files(files) => {
                for f in files {
                    if !names.contains(&f.as_str()) {
                        return Err(HubError::NotFound {
                            what: format!(
                                "file {f} in {repo_id}@{revision} (it has: {})",
                                short_list(&names)
                            ),
                            url: self.info_url(repo_id, revision),
                            token_sent: self.cfg.token.is_some(),
                            server_message: None,
                        });
                    }
                }
                Ok(files.clone())
            }
        }
    }

    /// The selected files from the cache alone.
    fn cached(
        &self,
        cache: &RepoCache,
        repo_id: &str,
        revision: &str,
        selection: &Selection,
    ) -> Result<Snapshot, HubError> {
        let miss = |what: String| HubError::Offline {
            repo_id: repo_id.to_string(),
            revision: revision.to_string(),
            what,
            cache: cache.cache_dir().to_path_buf(),
        };
        let commit = if is_commit_hash(revision) {
            revision.to_ascii_lowercase()
        } else {
            cache
                .read_ref(revision)?
                .ok_or_else(|| miss("the revision".into()))?
        };
        let listing = cache
            .list_snapshot(&commit)?
            .ok_or_else(|| miss(format!("the snapshot {commit}")))?;
        let names: Vec<&str> = listing.iter().map(|(n, _)| n.as_str()).collect();
        let selected = match selection {
            Selection::Default => {
                if weight_files(names.iter().copied()).is_empty() {
                    return Err(miss("any weight file".into()));
                }
                default_files(
                    &listing
                        .iter()
                        .map(|(n, s)| (n.as_str(), *s))
                        .collect::<Vec<_>>(),
                )
            }
            Selection::PrimaryWeights => vec![
                primary_weight_file(names.iter().copied())
                    .map_err(|m| miss(format!("a weight file ({m})")))?,
            ],
            Selection::Files(files) => files.clone(),
        };
        let mut files = Vec::with_capacity(selected.len());
        for name in &selected {
            let p = cache.snapshot_file(&commit, name);
            if !p.is_file() {
                return Err(miss(format!("file {name}")));
            }
            files.push(p);
        }
        tracing::debug!(repo_id, revision, commit, "from the cache only");
        Ok(Snapshot {
            repo_id: repo_id.to_string(),
            revision: revision.to_string(),
            dir: cache.snapshot_dir(&commit),
            commit,
            files,
            downloaded: Vec::new(),
            cache_only: true,
        })
    }

    fn repo_info(&self, repo_id: &str, revision: &str) -> Result<RepoInfo, HubError> {
        let url = self.info_url(repo_id, revision);
        tracing::debug!(url, "repository info");
        let mut resp = self
            .with_token(self.agent.get(&url))
            .call()
            .map_err(|e| transport(&url, e))?;
        if !resp.status().is_success() {
            return Err(self.status_error(
                resp,
                &url,
                repo_id,
                &format!("revision {revision} of {repo_id}"),
            ));
        }
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_JSON_BYTES)
            .read_to_string()
            .map_err(|e| transport(&url, e))?;
        serde_json::from_str(&text).map_err(|e| HubError::Protocol {
            url,
            message: format!("repository info is not the expected JSON: {e}"),
        })
    }

    /// The error of a non-success answer (gated, not found, other).
    fn status_error(
        &self,
        mut resp: ureq::http::Response<ureq::Body>,
        url: &str,
        repo_id: &str,
        what: &str,
    ) -> HubError {
        let status = resp.status().as_u16();
        let code = header(&resp, "x-error-code").unwrap_or_default();
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 10)
            .read_to_string()
            .unwrap_or_default();
        let message = header(&resp, "x-error-message")
            .or_else(|| {
                serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            })
            .or_else(|| {
                let t = body.trim();
                (!t.is_empty() && t.len() < 500).then(|| t.to_string())
            });
        let token_sent = self.cfg.token.is_some();
        let gated_words = message
            .as_deref()
            .is_some_and(|m| m.to_ascii_lowercase().contains("gated"));
        if code == "GatedRepo" || (matches!(status, 401 | 403) && gated_words) {
            return HubError::Gated {
                repo_id: repo_id.to_string(),
                page: format!("{}/{repo_id}", self.cfg.endpoint),
                endpoint: self.cfg.endpoint.clone(),
                token_sent,
                server_message: message,
            };
        }
        let what = match code.as_str() {
            "RepoNotFound" => format!("repository {repo_id}"),
            "RevisionNotFound" | "EntryNotFound" => what.to_string(),
            _ if status == 404 => what.to_string(),
            _ => {
                return HubError::Http {
                    url: url.to_string(),
                    status,
                    message,
                };
            }
        };
        HubError::NotFound {
            what,
            url: url.to_string(),
            token_sent,
            server_message: message,
        }
    }

    /// What a file is when the repository info did not say: `HEAD` without following redirects
    /// (`X-Linked-Etag` / `X-Linked-Size` of a redirect, else `ETag` / `Content-Length`).
    fn head_expect(&self, url: &str, repo_id: &str, name: &str) -> Result<Expect, HubError> {
        let resp = self
            .with_token(self.agent.head(url))
            .config()
            .max_redirects(0)
            .build()
            .call()
            .map_err(|e| transport(url, e))?;
        let status = resp.status();
        if !(status.is_success() || status.is_redirection()) {
            return Err(self.status_error(
                resp,
                url,
                repo_id,
                &format!("file {name} of {repo_id}"),
            ));
        }
        let etag = header(&resp, "x-linked-etag")
            .or_else(|| header(&resp, "etag"))
            .map(|e| normalize_etag(&e))
            .ok_or_else(|| HubError::Protocol {
                url: url.to_string(),
                message: "no ETag".into(),
            })?;
        let size = header(&resp, "x-linked-size")
            .or_else(|| header(&resp, "content-length"))
            .and_then(|s| s.trim().parse().ok());
        let hex = etag.bytes().all(|b| b.is_ascii_hexdigit());
        let check = match etag.len() {
            64 if hex => Some(Check::Sha256(etag.clone())),
            40 if hex => Some(Check::GitSha1(etag.clone())),
            _ => None,
        };
        Ok(Expect { etag, check, size })
    }

    /// The cached file, downloading it first if needed. `true` when it was downloaded.
    fn ensure(
        &self,
        cache: &RepoCache,
        repo_id: &str,
        commit: &str,
        sib: &Sibling,
    ) -> Result<(PathBuf, bool), HubError> {
        let name = &sib.rfilename;
        let url = self.resolve_url(repo_id, commit, name);
        let expect = match sib.expect() {
            Some(e) => e,
            None => self.head_expect(&url, repo_id, name)?,
        };
        check_name("ETag", &expect.etag, &url)?;
        let blob = cache.blob(&expect.etag);
        if blob.is_file() {
            tracing::debug!(repo_id, file = %name, "cache hit");
            return Ok((cache.link(commit, name, &expect.etag)?, false));
        }
        let blobs = cache.dir().join("blobs");
        std::fs::create_dir_all(&blobs).map_err(HubError::io(&blobs))?;
        let _lock = cache.lock(&expect.etag)?;
        if blob.is_file() {
            // Another process finished it while this one waited for the lock.
            return Ok((cache.link(commit, name, &expect.etag)?, false));
        }
        let part = cache.incomplete(&expect.etag);
        self.download(repo_id, name, &url, &part, &expect)?;
        std::fs::rename(&part, &blob).map_err(HubError::io(&blob))?;
        tracing::info!(repo_id, file = %name, "downloaded");
        Ok((cache.link(commit, name, &expect.etag)?, true))
    }

    fn progress_bar(&self, name: &str, size: Option<u64>) -> ProgressBar {
        if !self.cfg.progress {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::with_draw_target(size, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        ) {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_message(name.to_string());
        pb
    }

    /// Downloads into `part` (resuming what is there), with retries, then checks it; a file that
    /// fails the check is deleted.
    fn download(
        &self,
        repo_id: &str,
        name: &str,
        url: &str,
        part: &Path,
        expect: &Expect,
    ) -> Result<(), HubError> {
        let pb = self.progress_bar(name, expect.size);
        let mut attempt = 0;
        loop {
            match self.download_attempt(repo_id, name, url, part, expect, &pb) {
                Ok(()) => break,
                Err(e) if retryable(&e) && attempt < self.cfg.retries => {
                    attempt += 1;
                    tracing::warn!("{e}; retrying ({attempt} of {})", self.cfg.retries);
                    std::thread::sleep(self.cfg.retry_pause * attempt);
                }
                Err(e) => {
                    pb.abandon();
                    return Err(e);
                }
            }
        }
        pb.set_message(format!("{name} (verifying)"));
        let r = self.verify(repo_id, name, part, expect);
        pb.finish_and_clear();
        r
    }

    fn download_attempt(
        &self,
        repo_id: &str,
        name: &str,
        url: &str,
        part: &Path,
        expect: &Expect,
        pb: &ProgressBar,
    ) -> Result<(), HubError> {
        let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        if let Some(size) = expect.size {
            if have == size {
                return Ok(());
            }
            if have > size {
                std::fs::remove_file(part).map_err(HubError::io(part))?;
                have = 0;
            }
        }
        let mut req = self.with_token(self.agent.get(url));
        if have > 0 {
            tracing::info!(repo_id, file = name, bytes = have, "resuming");
            req = req.header("Range", format!("bytes={have}-"));
        }
        let resp = req.call().map_err(|e| transport(url, e))?;
        let status = resp.status().as_u16();
        let start = match status {
            206 => {
                let from = header(&resp, "content-range").and_then(|cr| {
                    cr.trim()
                        .strip_prefix("bytes ")
                        .and_then(|r| r.split('-').next())
                        .and_then(|s| s.trim().parse::<u64>().ok())
                });
                if from != Some(have) {
                    return Err(HubError::Protocol {
                        url: url.to_string(),
                        message: format!(
                            "asked for bytes {have}- and got Content-Range {:?}",
                            header(&resp, "content-range")
                        ),
                    });
                }
                have
            }
            200 => 0,
            // The partial file already holds everything (size unknown): the check decides.
            416 if have > 0 => return Ok(()),
            _ => {
                return Err(self.status_error(
                    resp,
                    url,
                    repo_id,
                    &format!("file {name} of {repo_id}"),
                ));
            }
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(start > 0)
            .truncate(start == 0)
            .open(part)
            .map_err(HubError::io(part))?;
        if pb.length().is_none()
            && let Some(len) =
                header(&resp, "content-length").and_then(|s| s.trim().parse::<u64>().ok())
        {
            pb.set_length(start + len);
        }
        pb.set_position(start);
        let mut got = start;
        let mut reader = resp.into_body().into_reader();
        let mut buf = vec![0u8; 256 << 10];
        let interrupted = |got: u64, reason: String| HubError::Interrupted {
            file: name.to_string(),
            got,
            expected: expect.size.unwrap_or(0),
            partial: part.to_path_buf(),
            reason,
        };
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(interrupted(got, e.to_string())),
            };
            file.write_all(&buf[..n]).map_err(HubError::io(part))?;
            got += n as u64;
            pb.set_position(got);
        }
        file.flush().map_err(HubError::io(part))?;
        match expect.size {
            Some(size) if got < size => Err(interrupted(got, "the connection closed early".into())),
            _ => Ok(()),
        }
    }

    /// Size and hash of the finished `part` against what the hub advertised.
    fn verify(
        &self,
        repo_id: &str,
        name: &str,
        part: &Path,
        expect: &Expect,
    ) -> Result<(), HubError> {
        let len = std::fs::metadata(part).map_err(HubError::io(part))?.len();
        let mismatch = |what: &'static str, expected: String, actual: String| {
            let _ = std::fs::remove_file(part);
            HubError::Checksum {
                repo_id: repo_id.to_string(),
                file: name.to_string(),
                what,
                expected,
                actual,
            }
        };
        if let Some(size) = expect.size
            && len != size
        {
            if len < size {
                return Err(HubError::Interrupted {
                    file: name.to_string(),
                    got: len,
                    expected: size,
                    partial: part.to_path_buf(),
                    reason: "the server had no more bytes".into(),
                });
            }
            return Err(mismatch("size", size.to_string(), len.to_string()));
        }
        let mut f = std::fs::File::open(part).map_err(HubError::io(part))?;
        match &expect.check {
            Some(Check::Sha256(want)) => {
                let mut h = sha2::Sha256::new();
                std::io::copy(&mut f, &mut h).map_err(HubError::io(part))?;
                let got = format!("{:x}", h.finalize());
                if &got != want {
                    return Err(mismatch("sha256", want.clone(), got));
                }
            }
            Some(Check::GitSha1(want)) => {
                let mut h = sha1::Sha1::new();
                h.update(format!("blob {len}\0").as_bytes());
                std::io::copy(&mut f, &mut h).map_err(HubError::io(part))?;
                let got = format!("{:x}", h.finalize());
                if &got != want {
                    return Err(mismatch("git blob sha1", want.clone(), got));
                }
            }
            None => tracing::warn!(
                repo_id,
                file = name,
                "the hub advertised no hash for this file; only its size was checked"
            ),
        }
        Ok(())
    }
}

fn transport(url: &str, e: ureq::Error) -> HubError {
    HubError::Transport {
        url: url.to_string(),
        source: Box::new(e),
    }
}

fn short_list(names: &[&str]) -> String {
    const MAX: usize = 12;
    let mut s = names
        .iter()
        .take(MAX)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > MAX {
        s.push_str(&format!(", … ({} files)", names.len()));
    }
    if s.is_empty() {
        s.push_str("none");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_and_urls() {
        assert_eq!(normalize_etag("W/\"ABC\""), "abc");
        assert_eq!(normalize_etag("\"abc\""), "abc");
        let hub = Hub::new(HubConfig::new("http://h/", Path::new("/c")));
        assert_eq!(
            hub.info_url("o/n", "refs/pr/1"),
            "http://h/api/models/o/n/revision/refs%2Fpr%2F1?blobs=true"
        );
        assert_eq!(
            hub.resolve_url("o/n", "abc", "sub dir/a+b.json"),
            "http://h/o/n/resolve/abc/sub%20dir/a%2Bb.json"
        );
        assert!(check_name("ETag", "deadBEEF09", "u").is_ok());
        assert!(check_name("ETag", "../x", "u").is_err());
        assert!(check_name("ETag", "", "u").is_err());
    }

    #[test]
    fn sibling_expectations() {
        let s: Sibling = serde_json::from_str(
            r#"{"rfilename":"m.safetensors","size":5,"blobId":"b","lfs":{"sha256":"AB","size":9}}"#,
        )
        .unwrap();
        let e = s.expect().unwrap();
        assert_eq!(e.etag, "ab");
        assert_eq!(e.check, Some(Check::Sha256("ab".into())));
        assert_eq!(e.size, Some(9));
        let s: Sibling =
            serde_json::from_str(r#"{"rfilename":"c.json","size":5,"blobId":"CD"}"#).unwrap();
        let e = s.expect().unwrap();
        assert_eq!((e.etag.as_str(), e.size), ("cd", Some(5)));
        assert_eq!(e.check, Some(Check::GitSha1("cd".into())));
        let s: Sibling = serde_json::from_str(r#"{"rfilename":"c.json"}"#).unwrap();
        assert!(s.expect().is_none());
    }

    #[test]
    fn retry_policy() {
        let http = |status| HubError::Http {
            url: String::new(),
            status,
            message: None,
        };
        assert!(retryable(&http(503)));
        assert!(retryable(&http(429)));
        assert!(!retryable(&http(400)));
        assert!(!retryable(&HubError::Spec(String::new())));
    }
}
