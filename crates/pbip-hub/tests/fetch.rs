//! `Hub::fetch` and `resolve_weights_path_with` against a fake hub on 127.0.0.1: the settings come
//! from `HF_ENDPOINT` (the fake hub) and `HF_HOME` (a temp dir) through `HubConfig::from_vars`.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::{FakeFile, FakeHub, FakeRepo, model_repo, tree};
use pbip_hub::{Hub, HubConfig, HubError, Selection, resolve_weights_path_with};

const REPO: &str = "org/model";

/// A client configured the way the environment would: `HF_ENDPOINT`, `HF_HOME` and `extra`.
fn hub(server: &FakeHub, home: &Path, extra: &[(&str, &str)]) -> Hub {
    let mut vars: HashMap<String, String> = HashMap::new();
    vars.insert("HF_ENDPOINT".into(), server.endpoint.clone());
    vars.insert("HF_HOME".into(), home.to_string_lossy().into_owned());
    for (k, v) in extra {
        vars.insert(k.to_string(), v.to_string());
    }
    let mut cfg = HubConfig::from_vars(|k| vars.get(k).cloned());
    cfg.progress = false;
    cfg.retries = 0;
    cfg.retry_pause = Duration::ZERO;
    Hub::new(cfg)
}

fn hub_with_retries(server: &FakeHub, home: &Path, retries: u32) -> Hub {
    let mut cfg = hub(server, home, &[]).config().clone();
    cfg.retries = retries;
    Hub::new(cfg)
}

fn repo_dir(home: &Path, repo: &str) -> std::path::PathBuf {
    home.join("hub").join(pbip_hub::repo_folder_name(repo))
}

fn file<'a>(repo: &'a FakeRepo, name: &str) -> &'a FakeFile {
    repo.files.iter().find(|f| f.name == name).unwrap()
}

#[test]
fn download_writes_the_standard_cache_layout() {
    let repo = model_repo(REPO, 0);
    let server = FakeHub::start(vec![repo.clone()]);
    let home = tempfile::tempdir().unwrap();
    let snap = hub(&server, home.path(), &[])
        .fetch(REPO, "main", &Selection::Default)
        .unwrap();

    // Weights (safetensors preferred over pytorch_model.bin) + small JSON files; not README.md.
    let names: Vec<String> = snap
        .files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "config.json",
            "model.safetensors",
            "preprocessor_config.json"
        ]
    );
    assert_eq!(snap.downloaded, names);
    assert!(!snap.cache_only);
    assert_eq!(snap.commit, repo.commit);

    let dir = repo_dir(home.path(), REPO);
    assert_eq!(snap.dir, dir.join("snapshots").join(&repo.commit));
    assert_eq!(
        std::fs::read_to_string(dir.join("refs/main")).unwrap(),
        repo.commit
    );
    for (p, name) in snap.files.iter().zip(&names) {
        let f = file(&repo, name);
        assert_eq!(std::fs::read(p).unwrap(), f.content, "{name}");
        assert_eq!(*p, snap.dir.join(name));
        let blob = dir.join("blobs").join(f.advertised_hash());
        assert_eq!(std::fs::read(&blob).unwrap(), f.content, "{name}");
        #[cfg(unix)]
        assert_eq!(
            std::fs::read_link(p).unwrap(),
            Path::new("../../blobs").join(f.advertised_hash())
        );
    }
    // LFS blobs are named by SHA-256, git files by their blob id, as huggingface_hub names them.
    assert!(
        dir.join("blobs")
            .join(file(&repo, "model.safetensors").sha256())
            .is_file()
    );
    assert!(
        dir.join("blobs")
            .join(file(&repo, "config.json").git_blob_id())
            .is_file()
    );
    let leftovers: Vec<_> = tree(&dir)
        .into_keys()
        .filter(|p| p.to_string_lossy().ends_with(".incomplete"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn second_fetch_is_a_cache_hit_without_download_requests() {
    let server = FakeHub::start(vec![model_repo(REPO, 1)]);
    let home = tempfile::tempdir().unwrap();
    let h = hub(&server, home.path(), &[]);
    let first = h.fetch(REPO, "main", &Selection::Default).unwrap();
    let downloads = server.downloads();
    // Three files; the LFS one through the resolve redirect and the CDN.
    assert_eq!(downloads, 4, "{:?}", server.log());
    let requests = server.log().len();

    let second = h.fetch(REPO, "main", &Selection::Default).unwrap();
    assert_eq!(second.files, first.files);
    assert!(second.downloaded.is_empty(), "{:?}", second.downloaded);
    assert_eq!(server.downloads(), downloads, "{:?}", server.log());
    // Only the repository info was asked again.
    let log = server.log();
    assert_eq!(log.len(), requests + 1);
    assert!(
        log[requests]
            .path
            .starts_with("/api/models/org/model/revision/main")
    );
}

#[test]
fn a_cut_download_is_resumed_by_the_next_fetch_with_a_range_request() {
    let repo = model_repo(REPO, 2);
    let server = FakeHub::start(vec![repo.clone()]);
    server.cut(REPO, "model.safetensors", 1);
    let home = tempfile::tempdir().unwrap();
    let h = hub(&server, home.path(), &[]); // no retries within a call
    let weights = Selection::Files(vec!["model.safetensors".into()]);

    let err = h.fetch(REPO, "main", &weights).unwrap_err();
    let HubError::Interrupted {
        got,
        expected,
        partial,
        ..
    } = &err
    else {
        panic!("expected an interrupted download, got {err}");
    };
    let content = &file(&repo, "model.safetensors").content;
    assert_eq!(*expected, content.len() as u64);
    assert!(*got > 0 && *got < *expected, "{err}");
    assert_eq!(std::fs::metadata(partial).unwrap().len(), *got);
    assert!(err.to_string().contains("resumes"), "{err}");
    let blob = repo_dir(home.path(), REPO)
        .join("blobs")
        .join(file(&repo, "model.safetensors").sha256());
    assert!(!blob.exists());

    let snap = h.fetch(REPO, "main", &weights).unwrap();
    assert_eq!(std::fs::read(&snap.files[0]).unwrap(), *content);
    assert!(blob.is_file());
    assert!(!partial.exists());
    let ranges: Vec<String> = server
        .log()
        .iter()
        .filter_map(|l| l.range.clone())
        .collect();
    let want = format!("bytes={got}-");
    // Sent to the hub's resolve URL and kept on the redirect to the CDN.
    assert_eq!(ranges, [want.clone(), want], "{:?}", server.log());
}

#[test]
fn a_cut_download_is_resumed_within_one_fetch_when_retries_are_allowed() {
    let repo = model_repo(REPO, 3);
    let server = FakeHub::start(vec![repo.clone()]);
    server.cut(REPO, "model.safetensors", 2);
    let home = tempfile::tempdir().unwrap();
    let snap = hub_with_retries(&server, home.path(), 3)
        .fetch(REPO, "main", &Selection::PrimaryWeights)
        .unwrap();
    assert_eq!(
        std::fs::read(&snap.files[0]).unwrap(),
        file(&repo, "model.safetensors").content
    );
    let ranged = server.log().iter().filter(|l| l.range.is_some()).count();
    assert_eq!(
        ranged,
        4,
        "two resumed attempts, each resolve + CDN: {:?}",
        server.log()
    );
}

#[test]
fn a_checksum_mismatch_is_an_error_and_caches_nothing() {
    for (name, what) in [
        ("model.safetensors", "sha256"),
        ("config.json", "git blob sha1"),
    ] {
        let mut repo = model_repo(REPO, 4);
        let wrong = if name == "config.json" {
            "1".repeat(40)
        } else {
            "0".repeat(64)
        };
        for f in &mut repo.files {
            if f.name == name {
                f.advertised = Some(wrong.clone());
            }
        }
        let server = FakeHub::start(vec![repo.clone()]);
        let home = tempfile::tempdir().unwrap();
        let err = hub(&server, home.path(), &[])
            .fetch(REPO, "main", &Selection::Files(vec![name.into()]))
            .unwrap_err();
        let HubError::Checksum {
            what: w,
            expected,
            actual,
            ..
        } = &err
        else {
            panic!("{name}: expected a checksum error, got {err}");
        };
        assert_eq!(*w, what);
        assert_eq!(*expected, wrong);
        let f = file(&repo, name);
        let real = if f.lfs { f.sha256() } else { f.git_blob_id() };
        assert_eq!(*actual, real);
        assert!(err.to_string().contains("nothing was cached"), "{err}");
        assert_eq!(server.downloads(), if f.lfs { 2 } else { 1 });
        // Neither blob (complete or partial) nor snapshot entry.
        let dir = repo_dir(home.path(), REPO);
        let files: Vec<_> = tree(&dir)
            .into_keys()
            .filter(|p| p.starts_with("blobs") || p.starts_with("snapshots"))
            .collect();
        assert!(files.is_empty(), "{name}: {files:?}");
    }
}

fn gated_repo() -> FakeRepo {
    let mut r = model_repo("lab/gated", 5);
    r.gated_token = Some("hf_good".into());
    r
}

#[test]
fn a_gated_repo_without_a_token_explains_how_to_get_access() {
    let server = FakeHub::start(vec![gated_repo()]);
    let home = tempfile::tempdir().unwrap();
    let err = hub(&server, home.path(), &[])
        .fetch("lab/gated", "main", &Selection::Default)
        .unwrap_err();
    assert!(
        matches!(
            err,
            HubError::Gated {
                token_sent: false,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    for want in [
        "lab/gated is a gated model",
        "accept its licence",
        &format!("{}/lab/gated", server.endpoint),
        "HF_TOKEN",
        &format!("{}/settings/tokens", server.endpoint),
        "restricted",
    ] {
        assert!(msg.contains(want), "missing {want:?} in: {msg}");
    }
    assert!(
        !repo_dir(home.path(), "lab/gated")
            .join("snapshots")
            .exists()
    );

    // A token without access: the same advice, saying the token was sent.
    let err = hub(&server, home.path(), &[("HF_TOKEN", "hf_other")])
        .fetch("lab/gated", "main", &Selection::Default)
        .unwrap_err();
    assert!(
        matches!(
            err,
            HubError::Gated {
                token_sent: true,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("no access to it yet"), "{err}");
}

#[test]
fn a_gated_repo_with_a_token_succeeds_and_sends_it_as_bearer() {
    let repo = gated_repo();
    let server = FakeHub::start(vec![repo.clone()]);
    let home = tempfile::tempdir().unwrap();
    let snap = hub(&server, home.path(), &[("HF_TOKEN", "hf_good")])
        .fetch("lab/gated", "main", &Selection::PrimaryWeights)
        .unwrap();
    assert_eq!(
        std::fs::read(&snap.files[0]).unwrap(),
        file(&repo, "model.safetensors").content
    );
    for l in server.log() {
        assert_eq!(l.authorization.as_deref(), Some("Bearer hf_good"), "{l:?}");
    }
}

#[test]
fn the_token_file_of_hf_home_is_used() {
    let server = FakeHub::start(vec![gated_repo()]);
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("token"), "hf_good\n").unwrap();
    hub(&server, home.path(), &[])
        .fetch("lab/gated", "main", &Selection::PrimaryWeights)
        .unwrap();
}

#[test]
fn offline_mode_reads_the_cache_and_explains_a_miss() {
    let repo = model_repo(REPO, 6);
    let server = FakeHub::start(vec![repo.clone(), model_repo("org/other", 7)]);
    let home = tempfile::tempdir().unwrap();
    let online = hub(&server, home.path(), &[])
        .fetch(REPO, "main", &Selection::Default)
        .unwrap();
    let requests = server.log().len();

    let offline = hub(&server, home.path(), &[("HF_HUB_OFFLINE", "1")]);
    let snap = offline.fetch(REPO, "main", &Selection::Default).unwrap();
    assert_eq!(snap.files, online.files);
    assert!(snap.cache_only);
    assert_eq!(snap.commit, repo.commit);
    let by_commit = offline
        .fetch(REPO, &repo.commit, &Selection::PrimaryWeights)
        .unwrap();
    assert_eq!(by_commit.files, vec![online.dir.join("model.safetensors")]);

    for (repo_id, sel, missing) in [
        ("org/other", Selection::Default, "the revision"),
        (
            REPO,
            Selection::Files(vec!["README.md".into()]),
            "file README.md",
        ),
    ] {
        let err = offline.fetch(repo_id, "main", &sel).unwrap_err();
        assert!(matches!(err, HubError::Offline { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("HF_HUB_OFFLINE"), "{msg}");
        assert!(msg.contains(missing), "{msg}");
        assert!(msg.contains(repo_id), "{msg}");
    }
    assert_eq!(server.log().len(), requests, "offline mode made requests");
}

#[test]
fn an_unreachable_hub_falls_back_to_the_cache() {
    let home = tempfile::tempdir().unwrap();
    let online = {
        let server = FakeHub::start(vec![model_repo(REPO, 8)]);
        hub(&server, home.path(), &[])
            .fetch(REPO, "main", &Selection::Default)
            .unwrap()
    };
    // Nothing listens on port 1: connections are refused.
    let mut cfg = HubConfig::new("http://127.0.0.1:1", &home.path().join("hub"));
    cfg.retries = 0;
    let snap = Hub::new(cfg.clone())
        .fetch(REPO, "main", &Selection::Default)
        .unwrap();
    assert_eq!(snap.files, online.files);
    assert!(snap.cache_only);
    let err = Hub::new(cfg)
        .fetch("org/uncached", "main", &Selection::Default)
        .unwrap_err();
    assert!(matches!(err, HubError::Transport { .. }), "{err}");
}

#[test]
fn concurrent_fetches_of_one_file_download_it_once() {
    let repo = model_repo(REPO, 9);
    let server = FakeHub::start(vec![repo.clone()]);
    let home = tempfile::tempdir().unwrap();
    let weights = Selection::Files(vec!["model.safetensors".into()]);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| hub(&server, home.path(), &[]).fetch(REPO, "main", &weights)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let content = &file(&repo, "model.safetensors").content;
    let mut fresh = 0;
    for r in results {
        let snap = r.unwrap();
        assert_eq!(std::fs::read(&snap.files[0]).unwrap(), *content);
        fresh += snap.downloaded.len();
    }
    assert_eq!(fresh, 1);
    let cdn = server
        .log()
        .iter()
        .filter(|l| l.path.starts_with("/cdn/"))
        .count();
    assert_eq!(cdn, 1, "{:?}", server.log());
}

#[test]
fn missing_repositories_revisions_and_files_are_not_found() {
    let server = FakeHub::start(vec![model_repo(REPO, 10)]);
    let home = tempfile::tempdir().unwrap();
    let h = hub(&server, home.path(), &[]);
    let err = h
        .fetch("org/nope", "main", &Selection::Default)
        .unwrap_err();
    assert!(matches!(err, HubError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("repository org/nope"), "{err}");
    let err = h.fetch(REPO, "v9", &Selection::Default).unwrap_err();
    assert!(
        err.to_string().contains("revision v9 of org/model"),
        "{err}"
    );
    let err = h
        .fetch(REPO, "main", &Selection::Files(vec!["nope.bin".into()]))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("nope.bin") && msg.contains("model.safetensors"),
        "{msg}"
    );
    let err = h
        .fetch(REPO, "main", &Selection::Files(vec!["../x".into()]))
        .unwrap_err();
    assert!(matches!(err, HubError::Spec(_)), "{err}");
}

#[test]
fn resolve_weights_path_turns_hub_references_into_cached_files() {
    let repo = model_repo(REPO, 11);
    let server = FakeHub::start(vec![repo.clone()]);
    let home = tempfile::tempdir().unwrap();
    let h = hub(&server, home.path(), &[]);
    let snap_dir = repo_dir(home.path(), REPO)
        .join("snapshots")
        .join(&repo.commit);

    let p = resolve_weights_path_with(&h, "hf:org/model").unwrap();
    assert_eq!(p, snap_dir.join("model.safetensors"));
    assert_eq!(
        std::fs::read(&p).unwrap(),
        file(&repo, "model.safetensors").content
    );
    // Only the weight file was fetched.
    assert_eq!(server.downloads(), 2);
    let p = resolve_weights_path_with(&h, "hf:org/model/pytorch_model.bin").unwrap();
    assert_eq!(p, snap_dir.join("pytorch_model.bin"));
    let p = resolve_weights_path_with(&h, format!("hf:org/model@{}", repo.commit)).unwrap();
    assert_eq!(p, snap_dir.join("model.safetensors"));
    // Plain paths are returned as they are.
    assert_eq!(
        resolve_weights_path_with(&h, "weights/b0.pth").unwrap(),
        Path::new("weights/b0.pth")
    );
    // Offline, from the cache.
    let offline = hub(&server, home.path(), &[("HF_HUB_OFFLINE", "1")]);
    assert_eq!(
        resolve_weights_path_with(&offline, "hf:org/model").unwrap(),
        snap_dir.join("model.safetensors")
    );
    let err = resolve_weights_path_with(&offline, "hf:org/model/config.json").unwrap_err();
    assert!(matches!(err, HubError::Offline { .. }), "{err}");
    let err = resolve_weights_path_with(&h, "hf:org/").unwrap_err();
    assert!(matches!(err, HubError::Spec(_)), "{err}");
}
