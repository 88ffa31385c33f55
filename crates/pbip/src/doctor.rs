//! `pbip doctor`: what this binary was built with and what it finds on this machine — compute
//! backends and visible devices, slide readers, the versions that matter.

use anyhow::Result;
use serde_json::json;

/// One line of the report: a check, whether it is usable, and details.
struct Item {
    section: &'static str,
    name: String,
    ok: bool,
    detail: String,
}

fn items() -> Vec<Item> {
    let mut out = vec![
        Item {
            section: "pbip",
            name: format!("pbip {}", env!("CARGO_PKG_VERSION")),
            ok: true,
            detail: format!(
                "{} build for {}-{}; burn 0.22.1",
                if cfg!(debug_assertions) {
                    "debug"
                } else {
                    "release"
                },
                std::env::consts::ARCH,
                std::env::consts::OS
            ),
        },
        Item {
            section: "pbip",
            name: "cpu threads".into(),
            ok: true,
            detail: format!(
                "{} (RAYON_NUM_THREADS {})",
                std::thread::available_parallelism().map_or(1, |n| n.get()),
                std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into())
            ),
        },
    ];
    for b in pbip_model::backend::backends() {
        out.push(Item {
            section: "compute",
            name: format!("device {}", b.devices),
            ok: b.compiled,
            detail: match (b.compiled, b.detail) {
                (true, Some(d)) => format!("{}: {d}", b.description),
                (true, None) => b.description,
                (false, _) => format!("{}: not compiled in", b.description),
            },
        });
    }
    out.push(Item {
        section: "slides",
        name: "pure-Rust reader".into(),
        ok: true,
        detail: "tiled TIFF / SVS / pyramidal TIFF with JPEG, deflate, LZW, PackBits or raw tiles (JPEG 2000 needs OpenSlide)".into(),
    });
    match pbip_slide::openslide_version() {
        Some((version, file)) => out.push(Item {
            section: "slides",
            name: "OpenSlide".into(),
            ok: true,
            detail: format!("{version} ({file})"),
        }),
        None => out.push(Item {
            section: "slides",
            name: "OpenSlide".into(),
            ok: false,
            detail: pbip_slide::openslide_load_error().unwrap_or_else(|| "cannot be loaded".into()),
        }),
    }
    out
}

/// Prints the report (`json`: one object).
pub fn run(json_out: bool) -> Result<()> {
    let items = items();
    if json_out {
        let v: Vec<_> = items
            .iter()
            .map(|i| json!({"section": i.section, "name": i.name, "ok": i.ok, "detail": i.detail}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({ "checks": v }))?);
        return Ok(());
    }
    let mut section = "";
    for i in &items {
        if i.section != section {
            section = i.section;
            println!("{section}:");
        }
        println!(
            "  [{}] {:<24} {}",
            if i.ok { "x" } else { " " },
            i.name,
            i.detail
        );
    }
    println!();
    println!(
        "choose a device with `device:` in the config (or --set device=...): {}",
        pbip_config::Device::SPELLINGS
    );
    Ok(())
}
