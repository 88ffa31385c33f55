//! Named models pbip uses, with their hub ids, licences and access conditions.
//!
//! Licences are those the model cards state (summarised); the card is what binds. MedCLIP's
//! vision tower has no official hub copy (the MedCLIP package downloads it from its own storage),
//! so there is no preset for it: upstream PBIP uses ImageNet Swin-T plus a random projection
//! (`swin-tiny`), and a MedCLIP `pytorch_model.bin` is given to `prototypes.encoder.weights` as a
//! file.

/// Whether a model can be downloaded anonymously.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Public: no account or token needed.
    Open,
    /// Gated: accept the licence / access conditions on the model page (logged in; some are
    /// approved by hand), then send a token (`HF_TOKEN`).
    Gated,
}

impl Access {
    /// `open` or `gated`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Open => "open",
            Access::Gated => "gated",
        }
    }
}

/// A named model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preset {
    /// The name `pbip weights fetch` and `hf:NAME` accept.
    pub name: &'static str,
    /// The hub repository.
    pub repo_id: &'static str,
    /// What it is.
    pub description: &'static str,
    /// The config key it fits (or where it is used).
    pub use_for: &'static str,
    /// The licence the model card states.
    pub licence: &'static str,
    /// Open or gated.
    pub access: Access,
}

const fn p(
    name: &'static str,
    repo_id: &'static str,
    description: &'static str,
    use_for: &'static str,
    licence: &'static str,
    access: Access,
) -> Preset {
    Preset {
        name,
        repo_id,
        description,
        use_for,
        licence,
        access,
    }
}

const MIT_LICENCE: &str = "NVIDIA Source Code License for SegFormer (non-commercial)";
const MIT_USE: &str = "model.pretrained";

/// Every preset, in `pbip weights list` order.
pub const PRESETS: &[Preset] = &[
    p(
        "mit-b0",
        "nvidia/mit-b0",
        "MiT-B0 (SegFormer encoder), ImageNet-1k",
        MIT_USE,
        MIT_LICENCE,
        Access::Open,
    ),
    p(
        "mit-b1",
        "nvidia/mit-b1",
        "MiT-B1 (SegFormer encoder), ImageNet-1k",
        MIT_USE,
        MIT_LICENCE,
        Access::Open,
    ),
    p(
        "mit-b2",
        "nvidia/mit-b2",
        "MiT-B2 (SegFormer encoder), ImageNet-1k",
        MIT_USE,
        MIT_LICENCE,
        Access::Open,
    ),
    p(
        "mit-b3",
        "nvidia/mit-b3",
        "MiT-B3 (SegFormer encoder), ImageNet-1k",
        MIT_USE,
        MIT_LICENCE,
        Access::Open,
    ),
    p(
        "mit-b4",
        "nvidia/mit-b4",
        "MiT-B4 (SegFormer encoder), ImageNet-1k",
        MIT_USE,
        MIT_LICENCE,
        Access::Open,
    ),
    p(
        "mit-b5",
        "nvidia/mit-b5",
        "MiT-B5 (SegFormer encoder), ImageNet-1k",
        MIT_USE,
        MIT_LICENCE,
        Access::Open,
    ),
    p(
        "swin-tiny",
        "microsoft/swin-tiny-patch4-window7-224",
        "Swin-T, ImageNet-1k (upstream PBIP's prototype encoder)",
        "prototypes.encoder.weights (kind: hf_swin)",
        "Apache-2.0",
        Access::Open,
    ),
    p(
        "uni",
        "MahmoodLab/UNI",
        "UNI, ViT-L/16 pathology foundation model",
        "pathology feature encoder",
        "CC-BY-NC-ND-4.0, research only; access approved by hand (institutional email)",
        Access::Gated,
    ),
    p(
        "phikon",
        "owkin/phikon",
        "Phikon, ViT-B/16 (iBOT) pathology foundation model",
        "pathology feature encoder",
        "Owkin non-commercial licence",
        Access::Open,
    ),
    p(
        "h-optimus-0",
        "bioptimus/H-optimus-0",
        "H-optimus-0, ViT-g/14 pathology foundation model",
        "pathology feature encoder",
        "Apache-2.0; agree to the access conditions on the model page",
        Access::Gated,
    ),
    p(
        "conch",
        "MahmoodLab/CONCH",
        "CONCH, ViT-B/16 vision-language pathology model",
        "pathology feature encoder",
        "CC-BY-NC-ND-4.0, research only; access approved by hand",
        Access::Gated,
    ),
    p(
        "virchow",
        "paige-ai/Virchow",
        "Virchow, ViT-H/14 pathology foundation model",
        "pathology feature encoder",
        "non-commercial research terms on its access form (see the model card)",
        Access::Gated,
    ),
];

/// The preset called `name` (case-insensitive; `_` and `-` are the same).
pub fn preset(name: &str) -> Option<&'static Preset> {
    let norm = |s: &str| s.trim().to_ascii_lowercase().replace('_', "-");
    let want = norm(name);
    PRESETS.iter().find(|p| p.name == want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::validate_repo_id;

    #[test]
    fn presets_are_unique_and_valid() {
        let mut names = std::collections::BTreeSet::new();
        for p in PRESETS {
            assert!(names.insert(p.name), "duplicate {}", p.name);
            validate_repo_id(p.repo_id).unwrap();
            assert!(!p.licence.is_empty());
        }
        for b in 0..=5 {
            let p = preset(&format!("MIT_B{b}")).unwrap();
            assert_eq!(p.repo_id, format!("nvidia/mit-b{b}"));
        }
        for gated in ["uni", "h-optimus-0", "conch", "virchow"] {
            assert_eq!(preset(gated).unwrap().access, Access::Gated, "{gated}");
        }
        assert_eq!(preset("phikon").unwrap().access, Access::Open);
        assert!(preset("nope").is_none());
    }
}
