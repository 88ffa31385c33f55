//! A small fake Hugging Face Hub on 127.0.0.1 (ephemeral port) for the tests: the repository info
//! API, `resolve` URLs that redirect LFS files to a `/cdn/` URL (as the hub does), byte ranges,
//! gated repositories, and injected faults (a connection cut halfway through a file, wrong advertised
//! hashes). Every request is logged so tests can count downloads.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sha1::Digest as _;

/// A file in a fake repository.
#[derive(Clone)]
pub struct FakeFile {
    pub name: String,
    pub content: Vec<u8>,
    /// Stored with LFS (advertised by SHA-256, served through a redirect).
    pub lfs: bool,
    /// Advertise this hash (API `lfs.sha256` / `blobId`, `ETag` / `X-Linked-Etag`) instead of the
    /// real one.
    pub advertised: Option<String>,
}

impl FakeFile {
    pub fn small(name: &str, content: &[u8]) -> Self {
        Self {
            name: name.into(),
            content: content.to_vec(),
            lfs: false,
            advertised: None,
        }
    }
    pub fn lfs(name: &str, content: Vec<u8>) -> Self {
        Self {
            name: name.into(),
            content,
            lfs: true,
            advertised: None,
        }
    }
    pub fn sha256(&self) -> String {
        format!("{:x}", sha2::Sha256::digest(&self.content))
    }
    pub fn git_blob_id(&self) -> String {
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {}\0", self.content.len()).as_bytes());
        h.update(&self.content);
        format!("{:x}", h.finalize())
    }
    /// What the hub says the file is (its blob name in the cache when honest).
    pub fn advertised_hash(&self) -> String {
        self.advertised.clone().unwrap_or_else(|| {
            if self.lfs {
                self.sha256()
            } else {
                self.git_blob_id()
            }
        })
    }
}

/// A fake model repository.
#[derive(Clone)]
pub struct FakeRepo {
    pub id: String,
    pub commit: String,
    pub files: Vec<FakeFile>,
    /// Gated: downloads need `Authorization: Bearer <this>`.
    pub gated_token: Option<String>,
}

/// Deterministic pseudo-random bytes.
pub fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The usual test repository: LFS weights, a git-stored config, files `fetch` must skip.
pub fn model_repo(id: &str, commit_seed: u64) -> FakeRepo {
    FakeRepo {
        id: id.into(),
        commit: format!("{:040x}", 0xc0ffee_u64 + commit_seed),
        files: vec![
            FakeFile::lfs("model.safetensors", bytes(300_000, commit_seed + 1)),
            FakeFile::lfs("pytorch_model.bin", bytes(1000, commit_seed + 2)),
            FakeFile::small(
                "config.json",
                br#"{"model_type": "segformer", "depths": [2, 2, 2, 2]}"#,
            ),
            FakeFile::small("preprocessor_config.json", br#"{"size": 224}"#),
            FakeFile::small("README.md", b"# a model\n"),
        ],
        gated_token: None,
    }
}

/// One logged request.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

impl Logged {
    /// A request for file contents (not the info API).
    pub fn is_download(&self) -> bool {
        self.method == "GET" && (self.path.contains("/resolve/") || self.path.starts_with("/cdn/"))
    }
}

struct State {
    repos: Vec<FakeRepo>,
    log: Mutex<Vec<Logged>>,
    /// (repo id, file name) → connections still to cut halfway.
    cuts: Mutex<HashMap<(String, String), u32>>,
}

/// The running fake hub (stopped on drop).
pub struct FakeHub {
    pub endpoint: String,
    addr: SocketAddr,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeHub {
    pub fn start(repos: Vec<FakeRepo>) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            repos,
            log: Mutex::new(Vec::new()),
            cuts: Mutex::new(HashMap::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || handle(conn, &st));
            }
        });
        FakeHub {
            endpoint: format!("http://{addr}"),
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Cut the next `times` connections serving `file` of `repo` halfway through the body.
    pub fn cut(&self, repo: &str, file: &str, times: u32) {
        self.state
            .cuts
            .lock()
            .unwrap()
            .insert((repo.into(), file.into()), times);
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn downloads(&self) -> usize {
        self.log().iter().filter(|l| l.is_download()).count()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many body bytes, then close.
    cut_at: Option<usize>,
    head: bool,
}

impl Reply {
    fn new(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            cut_at: None,
            head: false,
        }
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    fn json(mut self, v: &serde_json::Value) -> Self {
        self.body = v.to_string().into_bytes();
        self.header("Content-Type", "application/json")
    }
    fn error(status: u16, code: &str, message: &str) -> Self {
        Reply::new(status)
            .header("X-Error-Code", code)
            .header("X-Error-Message", message)
            .json(&serde_json::json!({ "error": message }))
    }
}

fn handle(mut conn: TcpStream, st: &State) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_len = loop {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => break n,
            Ok(httparse::Status::Partial) if buf.len() < 65536 => continue,
            _ => return,
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if req.parse(&buf[..head_len]).is_err() {
        return;
    }
    let get = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let logged = Logged {
        method: req.method.unwrap_or("").to_string(),
        path: req.path.unwrap_or("").to_string(),
        range: get("range"),
        authorization: get("authorization"),
    };
    st.log.lock().unwrap().push(logged.clone());
    let mut reply = route(st, &logged);
    reply.head = logged.method == "HEAD";
    send(&mut conn, reply);
}

fn send(conn: &mut TcpStream, r: Reply) {
    let reason = match r.status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Status",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", r.status);
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        r.body.len()
    ));
    if conn.write_all(head.as_bytes()).is_err() || r.head {
        return;
    }
    let n = r.cut_at.unwrap_or(r.body.len()).min(r.body.len());
    let _ = conn.write_all(&r.body[..n]);
    let _ = conn.flush();
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

fn split_query(path: &str) -> (&str, &str) {
    path.split_once('?').unwrap_or((path, ""))
}

fn route(st: &State, req: &Logged) -> Reply {
    let (path, _query) = split_query(&req.path);
    if let Some(rest) = path.strip_prefix("/api/models/") {
        return api(st, rest, req);
    }
    if let Some(key) = path.strip_prefix("/cdn/") {
        return cdn(st, key, req);
    }
    resolve(st, path, req)
}

fn find_repo<'a>(st: &'a State, id: &str) -> Option<&'a FakeRepo> {
    st.repos.iter().find(|r| r.id == id)
}

fn revision_ok(repo: &FakeRepo, rev: &str) -> bool {
    rev == "main" || rev == repo.commit
}

fn api(st: &State, rest: &str, _req: &Logged) -> Reply {
    // {org}/{name}/revision/{rev}
    let parts: Vec<&str> = rest.splitn(4, '/').collect();
    let [org, name, "revision", rev] = parts.as_slice() else {
        return Reply::error(404, "EntryNotFound", "no such API route");
    };
    let id = format!("{org}/{name}");
    let Some(repo) = find_repo(st, &id) else {
        return Reply::error(
            401,
            "RepoNotFound",
            "Repository Not Found for url. Please make sure you specified the correct repo_id.",
        );
    };
    if !revision_ok(repo, rev) {
        return Reply::error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
    }
    let siblings: Vec<serde_json::Value> = repo
        .files
        .iter()
        .map(|f| {
            if f.lfs {
                serde_json::json!({
                    "rfilename": f.name,
                    "size": f.content.len(),
                    "blobId": format!("{:040x}", f.content.len()),
                    "lfs": { "sha256": f.advertised_hash(), "size": f.content.len(), "pointerSize": 134 },
                })
            } else {
                serde_json::json!({
                    "rfilename": f.name,
                    "size": f.content.len(),
                    "blobId": f.advertised_hash(),
                })
            }
        })
        .collect();
    let gated = if repo.gated_token.is_some() {
        serde_json::json!("manual")
    } else {
        serde_json::json!(false)
    };
    Reply::new(200).json(&serde_json::json!({
        "id": repo.id,
        "sha": repo.commit,
        "gated": gated,
        "siblings": siblings,
    }))
}

fn resolve(st: &State, path: &str, req: &Logged) -> Reply {
    // /{org}/{name}/resolve/{rev}/{file...}
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    let [org, name, "resolve", rev, file] = parts.as_slice() else {
        return Reply::error(404, "EntryNotFound", "no such route");
    };
    let id = format!("{org}/{name}");
    let Some(repo) = find_repo(st, &id) else {
        return Reply::error(401, "RepoNotFound", "Repository Not Found");
    };
    if let Some(token) = &repo.gated_token {
        match req.authorization.as_deref() {
            Some(a) if a == format!("Bearer {token}") => {}
            None => {
                return Reply::error(
                    401,
                    "GatedRepo",
                    &format!(
                        "Access to model {id} is restricted. You must have access to it and be \
                         authenticated to access it. Please log in."
                    ),
                );
            }
            Some(_) => {
                return Reply::error(
                    403,
                    "GatedRepo",
                    &format!(
                        "Access to model {id} is restricted and you are not in the authorized list."
                    ),
                );
            }
        }
    }
    if !revision_ok(repo, rev) {
        return Reply::error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
    }
    let file = percent_encoding::percent_decode_str(file)
        .decode_utf8_lossy()
        .into_owned();
    let Some(f) = repo.files.iter().find(|f| f.name == file) else {
        return Reply::error(404, "EntryNotFound", &format!("{file} does not exist"));
    };
    let etag = format!("\"{}\"", f.advertised_hash());
    if f.lfs {
        return Reply::new(302)
            .header(
                "Location",
                format!("/cdn/{}/{}", repo.id.replace('/', "--"), f.name),
            )
            .header("X-Repo-Commit", repo.commit.clone())
            .header("X-Linked-Etag", etag.clone())
            .header("X-Linked-Size", f.content.len().to_string())
            .header("ETag", format!("\"{}\"", f.git_blob_id()));
    }
    serve(st, repo, f, req)
        .header("X-Repo-Commit", repo.commit.clone())
        .header("ETag", etag)
}

fn cdn(st: &State, key: &str, req: &Logged) -> Reply {
    let Some((folder, name)) = key.split_once('/') else {
        return Reply::new(404);
    };
    let id = folder.replacen("--", "/", 1);
    let Some(repo) = find_repo(st, &id) else {
        return Reply::new(404);
    };
    let Some(f) = repo.files.iter().find(|f| f.name == name) else {
        return Reply::new(404);
    };
    serve(st, repo, f, req).header("ETag", "\"cdn-etag\"")
}

/// The file's bytes, honouring `Range: bytes=N-` and the cut faults.
fn serve(st: &State, repo: &FakeRepo, f: &FakeFile, req: &Logged) -> Reply {
    let len = f.content.len();
    let start = req
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok());
    let mut reply = match start {
        Some(s) if s >= len => {
            return Reply::new(416).header("Content-Range", format!("bytes */{len}"));
        }
        Some(s) => {
            let mut r =
                Reply::new(206).header("Content-Range", format!("bytes {s}-{}/{len}", len - 1));
            r.body = f.content[s..].to_vec();
            r
        }
        None => {
            let mut r = Reply::new(200);
            r.body = f.content.clone();
            r
        }
    };
    let mut cuts = st.cuts.lock().unwrap();
    if let Some(n) = cuts.get_mut(&(repo.id.clone(), f.name.clone()))
        && *n > 0
    {
        *n -= 1;
        reply.cut_at = Some(reply.body.len() / 2);
    }
    reply.header("Accept-Ranges", "bytes")
}

/// Every file under `dir` (relative paths), for "nothing was cached" checks.
pub fn tree(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.insert(rel.to_path_buf(), m.len());
            }
        }
    }
    out
}
