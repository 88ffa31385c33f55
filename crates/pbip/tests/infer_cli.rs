//! `pbip infer` through the real binary: a multi-slide run killed with SIGKILL and rerun gives the
//! same outputs as an uninterrupted run; outputs and batch results; bad input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use pbip_testdata::path_str as s;

const PBIP: &str = env!("CARGO_BIN_EXE_pbip");

fn pbip(args: &[&str]) -> Output {
    pbip_testdata::run(PBIP, args)
}

fn ok(args: &[&str]) -> String {
    pbip_testdata::run_ok(PBIP, args)
}

/// A randomly initialised MiT-b0 checkpoint with two classes (one prototype each).
fn checkpoint(path: &Path) {
    use burn::tensor::Device;
    use pbip_model::{ClassNet, ClassNetConfig, HostTensor};
    let device = Device::flex();
    let ncfg = ClassNetConfig::new("mit_b0", [4, 2, 2, 1], vec![1, 1]).expect("cfg");
    let protos = HostTensor {
        shape: vec![2, 512],
        data: (0..1024)
            .map(|i| {
                if (i % 512) % 2 == i / 512 {
                    0.0625
                } else {
                    -0.0625
                }
            })
            .collect(),
    };
    let model = ClassNet::init(&ncfg, &protos, 0, &device).expect("init");
    let mut meta = BTreeMap::new();
    meta.insert("gate_threshold".to_string(), "0.5".to_string());
    model.save_safetensors(path, &ncfg, &meta).expect("save");
}

/// Every file under `dir` (relative path -> bytes); run-dependent fields of metadata.json
/// (timestamp, processing time) and batch results are left out.
fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    pbip_testdata::output_files(dir, &["batch_results"])
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    ckpt: PathBuf,
    slides: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().to_path_buf();
    let data = root.join("data");
    ok(&[
        "synth",
        "--out",
        s(&data),
        "--slides",
        "4",
        "--size",
        "1024",
        "--seed",
        "5",
    ]);
    let ckpt = root.join("best.safetensors");
    checkpoint(&ckpt);
    Setup {
        config: data.join("config.yaml"),
        slides: data.join("slides"),
        ckpt,
        root,
        _tmp: tmp,
    }
}

/// `pbip infer` arguments writing into `out`.
fn infer_args<'a>(st: &'a Setup, out: &'a Path) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "infer".into(),
        "--config".into(),
        s(&st.config).into(),
        "--weights".into(),
        s(&st.ckpt).into(),
        "--input-dir".into(),
        s(&st.slides).into(),
        "--output-dir".into(),
        s(out).into(),
    ];
    for kv in [
        "model.backbone=mit_b0",
        "inference.patch_size=64",
        "inference.spacing_um=2.0",
        "inference.batch_size=16",
        "inference.output_downsample=8",
        "inference.use_crf=true",
        "inference.crf.sxy_bilateral=10",
    ] {
        v.push("--set".into());
        v.push(kv.into());
    }
    v
}

#[test]
fn killed_multi_slide_run_resumes_to_identical_outputs() {
    let st = setup();
    let full = st.root.join("full");
    let args = infer_args(&st, &full);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(&argv);
    assert!(out.contains("4 processed"), "{out}");
    let pred = full.join("predictions");
    let names: Vec<String> = (0..4).map(|i| format!("slide_{i:03}")).collect();
    for n in &names {
        for f in [
            "segmentation_mask.png",
            "confidence_maps.npz",
            "visualization.png",
            "mask.tiff",
            "metadata.json",
        ] {
            assert!(pred.join(n).join(f).is_file(), "{n}/{f} missing");
        }
        assert!(pred.join(n).join(format!("{n}.geojson")).is_file());
        assert!(pred.join(n).join(format!("{n}.coordinates.npz")).is_file());
    }
    let csv = std::fs::read_to_string(pred.join("batch_results.csv")).expect("csv");
    assert!(csv.starts_with("wsi_name,num_patches,processing_time,model_version,status,error"));
    assert_eq!(
        csv.lines().filter(|l| l.contains(",ok,")).count(),
        4,
        "{csv}"
    );

    // The same run, killed (SIGKILL) as soon as its first slide is complete.
    let killed = st.root.join("killed");
    let args = infer_args(&st, &killed);
    let mut child = Command::new(PBIP)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let first_done = killed
        .join("predictions")
        .join(&names[0])
        .join("metadata.json");
    let mut exited_early = false;
    while !first_done.is_file() {
        if child.try_wait().expect("wait").is_some() {
            exited_early = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        !exited_early,
        "the run ended before its first slide was complete"
    );
    child.kill().expect("kill"); // SIGKILL on Unix
    child.wait().expect("reap");
    let complete = names
        .iter()
        .filter(|n| {
            killed
                .join("predictions")
                .join(n)
                .join("metadata.json")
                .is_file()
        })
        .count();
    assert!(
        complete < names.len(),
        "the run finished before it was killed"
    );
    assert!(
        !killed.join("predictions/batch_results.csv").exists(),
        "batch results are written at the end"
    );

    // Rerun: complete slides are skipped, the rest is redone, stale partial folders go.
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(&argv);
    assert!(out.contains("skipped"), "{out}");
    let csv = std::fs::read_to_string(killed.join("predictions/batch_results.csv")).expect("csv");
    assert!(
        csv.contains(&format!("{},", names[0])) && csv.contains(",skipped,"),
        "{csv}"
    );
    let left: Vec<String> = std::fs::read_dir(killed.join("predictions"))
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n != ".locks")
        .collect();
    assert!(left.is_empty(), "leftover temporary folders {left:?}");
    assert_eq!(
        files_of(&killed.join("predictions")),
        files_of(&pred),
        "killed + resumed outputs differ from the uninterrupted run"
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let st = setup();
    let out = st.root.join("bad");
    // Missing checkpoint: an error naming the file, no panic.
    let mut args = infer_args(&st, &out);
    let w = args.iter().position(|a| a == "--weights").expect("weights") + 1;
    args[w] = s(&st.root.join("nope.safetensors")).into();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = pbip(&argv);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("nope.safetensors") && !err.contains("panicked"),
        "{err}"
    );
    // A corrupt slide among good ones: recorded as failed, the others done, exit code non-zero.
    let slides = st.root.join("mixed");
    std::fs::create_dir_all(&slides).expect("mkdir");
    std::fs::copy(st.slides.join("slide_000.tif"), slides.join("good.tif")).expect("copy");
    std::fs::write(slides.join("broken.tif"), b"II*\0not a tiff").expect("write");
    let mut args = infer_args(&st, &out);
    let i = args.iter().position(|a| a == "--input-dir").expect("input") + 1;
    args[i] = s(&slides).into();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = pbip(&argv);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a failed slide must fail the run");
    assert!(err.contains("broken") && !err.contains("panicked"), "{err}");
    let csv = std::fs::read_to_string(out.join("predictions/batch_results.csv")).expect("csv");
    assert!(csv.contains("good,") && csv.contains(",ok,"), "{csv}");
    assert!(csv.contains("broken,") && csv.contains(",failed,"), "{csv}");
    assert!(out.join("predictions/good/segmentation_mask.png").is_file());
}

#[test]
fn patch_sizes_the_backbone_cannot_take_are_config_errors() {
    let st = setup();
    let out = st.root.join("small");
    for side in ["7", "8", "16"] {
        let mut args = infer_args(&st, &out);
        args.push("--set".into());
        args.push(format!("inference.patch_size={side}"));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = pbip(&argv);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "patch size {side} must be refused");
        assert!(
            err.contains("inference.patch_size") && err.contains("at least 29 px"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            !out.join("predictions").exists(),
            "a config error must stop before any slide is touched"
        );
    }
}

#[test]
fn coordinates_outside_the_slide_are_counted_and_skipped() {
    let st = setup();
    let dir = st.root.join("far");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let slide = st.slides.join("slide_000.tif");
    // Two tiles on the 1024 px slide and two far outside it.
    std::fs::write(
        dir.join("some.csv"),
        "0,0\n256,256\n1000000000,5\n5000,900000\n",
    )
    .expect("write");
    std::fs::write(dir.join("none.csv"), "1000000000,1000000000\n5000,0\n").expect("write");
    std::fs::write(
        dir.join("manifest.csv"),
        format!(
            "sample_id,image_path,coordinates_path\nsome,{0},some.csv\nnone,{0},none.csv\n",
            s(&slide)
        ),
    )
    .expect("write");
    let out = st.root.join("far_out");
    let mut args = infer_args(&st, &out);
    let i = args.iter().position(|a| a == "--input-dir").expect("input");
    args[i] = "--manifest".into();
    args[i + 1] = s(&dir.join("manifest.csv")).into();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = pbip(&argv);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "a slide without usable patches fails the run"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("2 of 4 coordinates") && err.contains("outside the slide"),
        "the partly outside file must be warned about with a count\n{err}"
    );
    let csv = std::fs::read_to_string(out.join("predictions/batch_results.csv")).expect("csv");
    let row = |name: &str| {
        csv.lines()
            .find(|l| l.starts_with(&format!("{name},")))
            .unwrap_or_else(|| panic!("no row for {name} in\n{csv}"))
            .to_string()
    };
    assert!(row("some").contains(",ok,"), "{csv}");
    let none = row("none");
    assert!(
        none.contains(",failed,") && none.contains("all 2 coordinates lie outside"),
        "{csv}"
    );
}

/// `pbip infer` over `manifest` into `out`, as a child process.
fn spawn_infer(st: &Setup, out: &Path, manifest: &Path) -> std::process::Child {
    let mut args = infer_args(st, out);
    let i = args.iter().position(|a| a == "--input-dir").expect("input");
    args[i] = "--manifest".into();
    args[i + 1] = s(manifest).into();
    Command::new(PBIP)
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pbip")
}

fn manifest(st: &Setup, path: &Path, ids: &[usize]) {
    let mut text = String::from("sample_id,image_path\n");
    for i in ids {
        text.push_str(&format!(
            "slide_{i:03},{}\n",
            s(&st.slides.join(format!("slide_{i:03}.tif")))
        ));
    }
    std::fs::write(path, text).expect("manifest");
}

/// `N processed` from the summary line of `pbip infer`.
fn processed_count(stdout: &str) -> usize {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("infer: "))
        .unwrap_or_else(|| panic!("no summary line in\n{stdout}"));
    line["infer: ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad summary line {line}"))
}

#[test]
fn concurrent_runs_into_one_folder_share_the_slides() {
    let st = setup();
    let out = st.root.join("shared_out");
    let (ma, mb) = (st.root.join("a.csv"), st.root.join("b.csv"));
    manifest(&st, &ma, &[0, 1, 2]);
    manifest(&st, &mb, &[1, 2, 3]);
    let a = spawn_infer(&st, &out, &ma);
    let b = spawn_infer(&st, &out, &mb);
    let (oa, ob) = (
        a.wait_with_output().expect("wait a"),
        b.wait_with_output().expect("wait b"),
    );
    let text = |o: &Output| {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(oa.status.success(), "run a failed\n{}", text(&oa));
    assert!(ob.status.success(), "run b failed\n{}", text(&ob));
    // Every slide predicted exactly once between the two runs.
    let done = processed_count(&String::from_utf8_lossy(&oa.stdout))
        + processed_count(&String::from_utf8_lossy(&ob.stdout));
    assert_eq!(done, 4, "a:\n{}\nb:\n{}", text(&oa), text(&ob));
    // All rows present once, each slide complete, no partial folder left.
    let pred = out.join("predictions");
    let csv = std::fs::read_to_string(pred.join("batch_results.csv")).expect("csv");
    for i in 0..4 {
        let name = format!("slide_{i:03}");
        let rows: Vec<&str> = csv
            .lines()
            .filter(|l| l.starts_with(&format!("{name},")))
            .collect();
        assert_eq!(rows.len(), 1, "{name} in\n{csv}");
        assert!(
            rows[0].contains(",ok,") || rows[0].contains(",skipped,"),
            "{csv}"
        );
        assert!(pred.join(&name).join("metadata.json").is_file());
        assert!(!pred.join(format!(".{name}.partial")).exists());
    }
    // A rerun on a subset keeps the rows of the other slides.
    manifest(&st, &ma, &[0]);
    let o = spawn_infer(&st, &out, &ma)
        .wait_with_output()
        .expect("wait");
    assert!(o.status.success(), "{}", text(&o));
    let csv = std::fs::read_to_string(pred.join("batch_results.csv")).expect("csv");
    for i in 0..4 {
        assert!(
            csv.contains(&format!("slide_{i:03},")),
            "row {i} lost:\n{csv}"
        );
    }
}

#[test]
fn a_truncated_output_makes_the_slide_run_again() {
    let st = setup();
    let out = st.root.join("trunc");
    let m = st.root.join("two.csv");
    manifest(&st, &m, &[0, 1]);
    let run = || {
        let o = spawn_infer(&st, &out, &m).wait_with_output().expect("wait");
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        stdout
    };
    assert_eq!(processed_count(&run()), 2);
    let tiff = out.join("predictions/slide_000/mask.tiff");
    let full = std::fs::metadata(&tiff).expect("tiff").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&tiff)
        .expect("open")
        .set_len(full / 2)
        .expect("truncate");
    // Only the damaged slide is redone, and its file is whole again.
    assert_eq!(processed_count(&run()), 1);
    assert_eq!(std::fs::metadata(&tiff).expect("tiff").len(), full);
    let csv = std::fs::read_to_string(out.join("predictions/batch_results.csv")).expect("csv");
    assert!(
        csv.lines()
            .any(|l| l.starts_with("slide_000,") && l.contains(",ok,")),
        "{csv}"
    );
    assert!(
        csv.lines()
            .any(|l| l.starts_with("slide_001,") && l.contains(",skipped,")),
        "{csv}"
    );
}
