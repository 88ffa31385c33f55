//! `pbip weights`: the named pretrained models and downloads from the Hugging Face Hub into its
//! standard cache (crate `pbip-hub`; `HF_HOME`, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`).

use anyhow::{Result, bail};
use clap::Subcommand;
use pbip_hub::{DEFAULT_REVISION, Hub, PRESETS, Selection, parse_target};

/// Subcommands of `pbip weights`.
#[derive(Debug, Subcommand)]
pub enum WeightsCmd {
    /// Download weights into the Hugging Face cache and print their local paths.
    ///
    /// Resumable and checksum-verified. By default the weight files (*.safetensors, else
    /// pytorch_model.bin / *.pth / *.bin) and the small JSON files (config.json, ...).
    Fetch {
        /// A preset (`pbip weights list`) or a hub repository id `org/name`; `@REVISION` and
        /// `/FILE` may follow the id, as in config values (`hf:org/name@rev/file`).
        #[arg(value_name = "NAME|REPO_ID")]
        target: String,
        /// Branch, tag or commit (default: main).
        #[arg(long, value_name = "R")]
        revision: Option<String>,
        /// Fetch this file of the repository instead of the default selection (repeatable).
        #[arg(long = "file", value_name = "PATH")]
        files: Vec<String>,
    },
    /// The presets: name, hub id, access (open or gated) and licence.
    List {
        /// Print JSON ([{name, repo_id, access, licence, description, use_for}, ...]).
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `pbip weights` subcommand.
pub fn run(cmd: &WeightsCmd) -> Result<()> {
    match cmd {
        WeightsCmd::List { json } => list(*json),
        WeightsCmd::Fetch {
            target,
            revision,
            files,
        } => fetch(target, revision.as_deref(), files),
    }
}

fn list(json: bool) -> Result<()> {
    if json {
        let v: Vec<serde_json::Value> = PRESETS
            .iter()
            .map(|p| {
                serde_json::json!({
                    "name": p.name,
                    "repo_id": p.repo_id,
                    "access": p.access.as_str(),
                    "licence": p.licence,
                    "description": p.description,
                    "use_for": p.use_for,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let w_name = PRESETS
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let w_id = PRESETS
        .iter()
        .map(|p| p.repo_id.len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "{:w_name$}  {:w_id$}  {:6}  LICENCE",
        "NAME", "HUB ID", "ACCESS"
    );
    for p in PRESETS {
        println!(
            "{:w_name$}  {:w_id$}  {:6}  {}",
            p.name,
            p.repo_id,
            p.access.as_str(),
            p.licence
        );
        println!("{:w_name$}  {} — {}", "", p.description, p.use_for);
    }
    println!();
    println!(
        "`pbip weights fetch NAME` downloads into the Hugging Face cache (HF_HOME); config values"
    );
    println!(
        "take `hf:NAME` or `hf:org/name[@revision][/file]`. Gated models: accept the licence on the"
    );
    println!(
        "model page while logged in, then set HF_TOKEN (or `huggingface-cli login`). MedCLIP has no"
    );
    println!("hub copy: give its pytorch_model.bin to prototypes.encoder.weights as a file.");
    Ok(())
}

fn fetch(target: &str, revision: Option<&str>, extra_files: &[String]) -> Result<()> {
    let r = parse_target(target)?;
    // `@rev` in the target and --revision must agree.
    let target_rev = target.contains('@').then_some(&r.revision);
    let revision = match (target_rev, revision) {
        (Some(a), Some(b)) if a != b => {
            bail!("{target} names revision {a} but --revision says {b}")
        }
        (_, Some(b)) => b.to_string(),
        (Some(a), None) => a.clone(),
        (None, None) => DEFAULT_REVISION.to_string(),
    };
    let mut files: Vec<String> = r.file.iter().cloned().collect();
    files.extend(extra_files.iter().cloned());
    let selection = if files.is_empty() {
        Selection::Default
    } else {
        Selection::Files(files)
    };
    if let Some(p) = r.preset {
        tracing::info!(
            "{} = {} ({}, licence: {})",
            p.name,
            p.repo_id,
            p.access.as_str(),
            p.licence
        );
    }
    let hub = Hub::from_env();
    let snap = hub.fetch(&r.repo_id, &revision, &selection)?;
    tracing::info!(
        "{}@{} is commit {}: {} downloaded, {} from the cache{}",
        snap.repo_id,
        snap.revision,
        snap.commit,
        snap.downloaded.len(),
        snap.files.len() - snap.downloaded.len(),
        if snap.cache_only {
            " (the hub was not asked)"
        } else {
            ""
        }
    );
    for f in &snap.files {
        println!("{}", f.display());
    }
    Ok(())
}
