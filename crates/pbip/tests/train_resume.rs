//! `pbip train` killed with SIGKILL mid-run and continued with `pbip train --resume` ends with
//! the same weights, bit for bit, as an uninterrupted run of the same config (CPU backend).
//!
//! Everything goes through the real binary: `pbip synth`, stages 0-2 for the prototype bank,
//! then three `pbip train` processes (reference, killed, resumed). Checkpoints are compared by
//! their raw safetensors bytes, parsed here independently of pbip's own readers.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const PBIP: &str = env!("CARGO_BIN_EXE_pbip");

/// Total steps of the training run below (3 epochs x 4 iterations).
const TOTAL_STEPS: u64 = 12;

/// Stages 0-2: a tiny random Swin for the prototype features.
const PROTOTYPE_SETTINGS: &[&str] = &[
    "device=cpu",
    "prototypes.encoder.embed_dim=24",
    "prototypes.encoder.depths=[1,1,2,1]",
    "prototypes.encoder.heads=[1,2,4,8]",
    "prototypes.batch_size=8",
    "prototypes.samples_per_wsi=6",
];

/// Stage 3: a tiny MiT-b0 training on 64 px patches. The state is saved after every step
/// (checkpoint_interval 1); two loader threads, colour jitter and gradient clipping exercise
/// every part of the state a resume has to restore.
const TRAIN_SETTINGS: &[&str] = &[
    "device=cpu",
    "model.backbone=mit_b0",
    "patch_size=64",
    "training.batch_size=2",
    "training.epochs=3",
    "training.iterations_per_epoch=4",
    "training.optimizer.lr=0.001",
    "training.scheduler.warmup_epochs=0.5",
    "training.loss_weights.contrastive=0",
    "training.validation_interval=5",
    "training.checkpoint_interval=1",
    "training.log_interval=1",
    "training.num_workers=2",
    "training.grad_clip=1.0",
    "training.augment.color_jitter=0.1",
];

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// `pbip <args> --config CFG --set ... --set paths.work_dir=WORK`.
fn command(args: &[&str], settings: &[&str], cfg: &Path, work: &Path) -> Command {
    let mut c = Command::new(PBIP);
    c.args(args).args(["--config", s(cfg)]);
    for kv in settings {
        c.args(["--set", kv]);
    }
    c.arg("--set").arg(format!("paths.work_dir={}", s(work)));
    c
}

fn check(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({})\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The JSON header of a safetensors file (tensor entries and `__metadata__`), without reading
/// the tensor data. None while the file does not exist or is not complete.
fn header(path: &Path) -> Option<(serde_json::Value, u64)> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n).ok()?;
    let n = u64::from_le_bytes(n);
    let mut h = vec![0u8; usize::try_from(n).ok()?];
    f.read_exact(&mut h).ok()?;
    Some((serde_json::from_slice(&h).ok()?, 8 + n))
}

/// `next_step` of a `latest.state.safetensors` (the steps it holds), from its header only.
fn state_step(path: &Path) -> Option<u64> {
    let (h, _) = header(path)?;
    let state = h["__metadata__"]["pbip_train_state"].as_str()?;
    let state: serde_json::Value = serde_json::from_str(state).ok()?;
    state["next_step"].as_u64()
}

/// Tensors of a safetensors file: name → (dtype, shape, raw little-endian bytes).
fn tensors(path: &Path) -> BTreeMap<String, (String, Vec<u64>, Vec<u8>)> {
    let (h, start) = header(path).unwrap_or_else(|| panic!("{} unreadable", path.display()));
    let bytes = std::fs::read(path).unwrap();
    let data = &bytes[usize::try_from(start).unwrap()..];
    let mut out = BTreeMap::new();
    for (name, e) in h.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let off: Vec<usize> = e["data_offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| usize::try_from(v.as_u64().unwrap()).unwrap())
            .collect();
        let shape = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let dtype = e["dtype"].as_str().unwrap().to_string();
        out.insert(name.clone(), (dtype, shape, data[off[0]..off[1]].to_vec()));
    }
    out
}

fn summary(work: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(work.join("checkpoints/train_summary.json")).ok()?;
    serde_json::from_str(&text).ok()
}

#[test]
fn sigkilled_train_resumes_to_the_uninterrupted_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    check(
        &Command::new(PBIP)
            .args([
                "synth",
                "--out",
                s(&data),
                "--slides",
                "6",
                "--size",
                "1024",
            ])
            .args(["--seed", "5"])
            .output()
            .unwrap(),
        "pbip synth",
    );
    let cfg = data.join("config.yaml");

    // Stages 0-2 once; every training work dir gets a copy of the prototype bank and encoder.
    let protos = tmp.path().join("prototypes");
    for stage in [
        "sample-prototypes",
        "embed-prototypes",
        "cluster-prototypes",
    ] {
        check(
            &command(&[stage], PROTOTYPE_SETTINGS, &cfg, &protos)
                .output()
                .unwrap(),
            &format!("pbip {stage}"),
        );
    }
    let work_dir = |name: &str| -> PathBuf {
        let w = tmp.path().join(name);
        let feats = w.join("image_features");
        std::fs::create_dir_all(&feats).unwrap();
        for e in std::fs::read_dir(protos.join("image_features")).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), feats.join(e.file_name())).unwrap();
            }
        }
        w
    };

    // Uninterrupted reference run.
    let reference = work_dir("reference");
    check(
        &command(&["train"], TRAIN_SETTINGS, &cfg, &reference)
            .output()
            .unwrap(),
        "pbip train (reference)",
    );
    let ref_summary = summary(&reference).expect("reference summary");
    assert_eq!(ref_summary["completed"], true);
    assert_eq!(ref_summary["steps"], TOTAL_STEPS);

    // The same run, SIGKILLed as soon as it has saved a training state of step >= 3.
    let killed = work_dir("killed");
    let state = killed.join("checkpoints/latest.state.safetensors");
    let mut child = command(&["train"], TRAIN_SETTINGS, &cfg, &killed)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    loop {
        if state_step(&state).is_some_and(|s| s >= 3) {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("pbip train ended ({status}) before a mid-run state appeared");
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "pbip train must die of the SIGKILL, not finish first: {status}"
    );
    let saved = state_step(&state).expect("state readable after the kill");
    assert!(
        (3..TOTAL_STEPS).contains(&saved),
        "the state after the kill is at step {saved}"
    );
    assert_ne!(
        summary(&killed).map(|s| s["completed"].clone()),
        Some(serde_json::Value::Bool(true)),
        "the killed run must not have finished"
    );

    // `pbip train --resume` continues from the saved state.
    let out = command(&["train", "--resume"], TRAIN_SETTINGS, &cfg, &killed)
        .output()
        .unwrap();
    check(&out, "pbip train --resume");
    let resumed = summary(&killed).expect("resumed summary");
    assert_eq!(resumed["completed"], true);
    assert_eq!(resumed["steps"], TOTAL_STEPS);
    assert_eq!(
        resumed["throughput"]["steps"],
        TOTAL_STEPS - saved,
        "the resumed process must run only the steps after the saved state (step {saved})"
    );

    // Final weights: every tensor bit for bit.
    let a = tensors(&reference.join("checkpoints/latest.safetensors"));
    let b = tensors(&killed.join("checkpoints/latest.safetensors"));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "tensor names differ"
    );
    let mut bytes = 0;
    for (name, (dtype, shape, raw)) in &a {
        let (dtype_b, shape_b, raw_b) = &b[name];
        assert_eq!((dtype, shape), (dtype_b, shape_b), "{name}");
        assert!(raw == raw_b, "{name} differs after SIGKILL + --resume");
        bytes += raw.len();
    }
    assert!(bytes > 1 << 20, "only {bytes} bytes of weights compared");
    // The comparison is not trivially true: the weights after one step differ from the final ones.
    let first = tensors(&reference.join("checkpoints/epoch_1_step_1.safetensors"));
    assert!(
        a.iter()
            .any(|(k, (_, _, raw))| k != "prototypes" && first[k].2 != *raw),
        "training did not change the weights"
    );
}
