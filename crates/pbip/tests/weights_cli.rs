//! `pbip weights list` and `pbip weights fetch` end to end: the real binary against the fake
//! Hugging Face Hub of pbip-hub's tests (127.0.0.1, ephemeral port), through `HF_ENDPOINT`,
//! `HF_HOME`, `HF_TOKEN` and `HF_HUB_OFFLINE`.

#[path = "../../pbip-hub/tests/common/mod.rs"]
mod fake_hub;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fake_hub::{FakeHub, model_repo};
use pbip_testdata::text;

/// Runs `pbip` with a clean hub environment plus `env`.
fn pbip(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pbip"));
    c.args(args);
    for k in [
        "HF_ENDPOINT",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_OFFLINE",
    ] {
        c.env_remove(k);
    }
    c.envs(env.iter().copied());
    c.output().expect("run pbip")
}

fn ok(args: &[&str], env: &[(&str, &str)]) -> String {
    pbip_testdata::expect_ok(&pbip(args, env), args)
}

fn fails(args: &[&str], env: &[(&str, &str)]) -> String {
    let o = pbip(args, env);
    let (out, err) = text(&o);
    assert!(
        !o.status.success(),
        "pbip {args:?} succeeded\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn paths(stdout: &str) -> Vec<PathBuf> {
    stdout.lines().map(PathBuf::from).collect()
}

#[test]
fn weights_list_names_every_preset_with_its_hub_id_and_access() {
    let out = ok(&["weights", "list"], &[]);
    for (name, id, access) in [
        ("mit-b0", "nvidia/mit-b0", "open"),
        ("mit-b5", "nvidia/mit-b5", "open"),
        (
            "swin-tiny",
            "microsoft/swin-tiny-patch4-window7-224",
            "open",
        ),
        ("uni", "MahmoodLab/UNI", "gated"),
        ("phikon", "owkin/phikon", "open"),
        ("h-optimus-0", "bioptimus/H-optimus-0", "gated"),
        ("conch", "MahmoodLab/CONCH", "gated"),
        ("virchow", "paige-ai/Virchow", "gated"),
    ] {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in:\n{out}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&cols[1..3], [id, access], "{line}");
    }
    assert!(out.contains("HF_TOKEN") && out.contains("hf:"), "{out}");

    let json: serde_json::Value =
        serde_json::from_str(&ok(&["weights", "list", "--json"], &[])).unwrap();
    let presets = json.as_array().unwrap();
    assert_eq!(presets.len(), 12);
    let uni = presets.iter().find(|p| p["name"] == "uni").unwrap();
    assert_eq!(uni["repo_id"], "MahmoodLab/UNI");
    assert_eq!(uni["access"], "gated");
    assert!(uni["licence"].as_str().unwrap().contains("CC-BY-NC-ND"));
}

#[test]
fn weights_fetch_downloads_hits_the_cache_and_works_offline() {
    let repo = model_repo("org/model", 20);
    let server = FakeHub::start(vec![repo.clone()]);
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().to_str().unwrap();
    let env = [
        ("HF_ENDPOINT", server.endpoint.as_str()),
        ("HF_HOME", home_s),
    ];

    let out = ok(&["weights", "fetch", "org/model"], &env);
    let snapshot = home
        .path()
        .join("hub/models--org--model/snapshots")
        .join(&repo.commit);
    let names = [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ];
    assert_eq!(
        paths(&out),
        names.iter().map(|n| snapshot.join(n)).collect::<Vec<_>>()
    );
    for n in names {
        let f = repo.files.iter().find(|f| f.name == n).unwrap();
        assert_eq!(std::fs::read(snapshot.join(n)).unwrap(), f.content, "{n}");
    }
    let downloads = server.downloads();

    // Second fetch: the same paths, no file downloaded again.
    assert_eq!(ok(&["weights", "fetch", "org/model"], &env), out);
    assert_eq!(server.downloads(), downloads, "{:?}", server.log());

    // Offline: from the cache, without a single request; a miss says what to do.
    let requests = server.log().len();
    let offline = [env[0], env[1], ("HF_HUB_OFFLINE", "1")];
    let out = ok(&["weights", "fetch", "hf:org/model/config.json"], &offline);
    assert_eq!(paths(&out), [snapshot.join("config.json")]);
    let err = fails(
        &["weights", "fetch", "org/model", "--file", "README.md"],
        &offline,
    );
    assert!(
        err.contains("HF_HUB_OFFLINE") && err.contains("README.md"),
        "{err}"
    );
    assert_eq!(server.log().len(), requests);

    // A named file and a revision, by commit.
    let out = ok(
        &[
            "weights",
            "fetch",
            "org/model",
            "--revision",
            &repo.commit,
            "--file",
            "pytorch_model.bin",
        ],
        &env,
    );
    assert_eq!(paths(&out), [snapshot.join("pytorch_model.bin")]);
    let err = fails(
        &["weights", "fetch", "org/model@v1", "--revision", "v2"],
        &env,
    );
    assert!(err.contains("v1") && err.contains("v2"), "{err}");
}

#[test]
fn weights_fetch_of_a_gated_model_needs_a_token() {
    let mut repo = model_repo("lab/gated", 21);
    repo.gated_token = Some("hf_secret".into());
    let server = FakeHub::start(vec![repo]);
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().to_str().unwrap();
    let env = [
        ("HF_ENDPOINT", server.endpoint.as_str()),
        ("HF_HOME", home_s),
    ];

    let err = fails(&["weights", "fetch", "lab/gated"], &env);
    for want in ["gated model", "accept its licence", "HF_TOKEN", "lab/gated"] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    let with_token = [env[0], env[1], ("HF_TOKEN", "hf_secret")];
    let out = ok(&["weights", "fetch", "lab/gated"], &with_token);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(paths(&out).iter().all(|p| Path::new(p).is_file()), "{out}");
    // The token never appears in the output.
    let o = pbip(&["-v", "weights", "fetch", "lab/gated"], &with_token);
    let (out, err) = text(&o);
    assert!(
        !out.contains("hf_secret") && !err.contains("hf_secret"),
        "{err}"
    );
}
