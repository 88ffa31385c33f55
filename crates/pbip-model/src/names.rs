//! Parameter-name maps between checkpoint families and our (NVlabs / upstream PBIP) names.
//!
//! * NVlabs `mit_b*.pth` (ImageNet): bare MiT names (`patch_embed1.proj.weight`, `block1.0.attn.kv.weight`,
//!   `norm1.weight`) plus a classifier `head.*` that is dropped.
//! * Upstream PBIP ClassNet: the same names under `encoder.`.
//! * Hugging Face `nvidia/mit-b*` (`SegformerForImageClassification` / `SegformerModel`):
//!   `segformer.encoder.patch_embeddings.{i}.proj.*`, `...block.{i}.{j}.attention.self.{query,key,value}.*`
//!   etc.; `key` and `value` are concatenated (keys first) into our `attn.kv`.

use crate::ModelError;
use crate::host::{HostTensor, TensorMap};

/// Renames one Hugging Face SegFormer encoder parameter to its NVlabs name. Returns `None` for
/// names outside the encoder (classifier, decode head) and for `attention.self.key/value`, which
/// need [`hf_to_nvlabs`] (they merge into one `kv` tensor).
pub fn hf_name_to_nvlabs(name: &str) -> Option<String> {
    let s = name.strip_prefix("segformer.").unwrap_or(name);
    let s = s.strip_prefix("encoder.")?;
    let parts: Vec<&str> = s.split('.').collect();
    match parts.as_slice() {
        ["patch_embeddings", i, "proj", leaf] => Some(format!(
            "patch_embed{}.proj.{leaf}",
            i.parse::<usize>().ok()? + 1
        )),
        ["patch_embeddings", i, "layer_norm", leaf] => Some(format!(
            "patch_embed{}.norm.{leaf}",
            i.parse::<usize>().ok()? + 1
        )),
        ["layer_norm", i, leaf] => Some(format!("norm{}.{leaf}", i.parse::<usize>().ok()? + 1)),
        ["block", i, j, rest @ ..] => {
            let stage = i.parse::<usize>().ok()? + 1;
            let j: usize = j.parse().ok()?;
            let tail = match rest {
                ["layer_norm_1", leaf] => format!("norm1.{leaf}"),
                ["layer_norm_2", leaf] => format!("norm2.{leaf}"),
                ["attention", "self", "query", leaf] => format!("attn.q.{leaf}"),
                ["attention", "self", "sr", leaf] => format!("attn.sr.{leaf}"),
                ["attention", "self", "layer_norm", leaf] => format!("attn.norm.{leaf}"),
                ["attention", "output", "dense", leaf] => format!("attn.proj.{leaf}"),
                ["mlp", "dense1", leaf] => format!("mlp.fc1.{leaf}"),
                ["mlp", "dwconv", "dwconv", leaf] => format!("mlp.dwconv.dwconv.{leaf}"),
                ["mlp", "dense2", leaf] => format!("mlp.fc2.{leaf}"),
                _ => return None,
            };
            Some(format!("block{stage}.{j}.{tail}"))
        }
        _ => None,
    }
}

/// Converts a Hugging Face SegFormer state dict to NVlabs MiT names, concatenating
/// `attention.self.key` and `.value` into `attn.kv`. Non-encoder tensors (classifier, decode
/// head) are dropped; unknown encoder tensors and unpaired key/value tensors are errors.
pub fn hf_to_nvlabs(map: &TensorMap) -> Result<TensorMap, ModelError> {
    let mut out = TensorMap::new();
    let mut problems = Vec::new();
    for (name, t) in map {
        let s = name.strip_prefix("segformer.").unwrap_or(name);
        if !s.starts_with("encoder.") {
            continue; // classifier / decode head
        }
        if s.contains(".attention.self.key.") || s.contains(".attention.self.value.") {
            continue; // handled below
        }
        match hf_name_to_nvlabs(name) {
            Some(n) => {
                out.insert(n, t.clone());
            }
            None => problems.push(format!("unknown encoder tensor {name}")),
        }
    }
    for (name, k) in map {
        if !name.contains(".attention.self.key.") {
            continue;
        }
        let vname = name.replace(".attention.self.key.", ".attention.self.value.");
        let qname = name.replace(".attention.self.key.", ".attention.self.query.");
        let Some(v) = map.get(&vname) else {
            problems.push(format!("{name} has no matching {vname}"));
            continue;
        };
        let Some(kv_name) = hf_name_to_nvlabs(&qname).map(|q| q.replace(".attn.q.", ".attn.kv."))
        else {
            problems.push(format!("cannot map {name}"));
            continue;
        };
        if k.shape != v.shape || k.shape.is_empty() {
            problems.push(format!(
                "{name} {:?} and {vname} {:?} differ in shape",
                k.shape, v.shape
            ));
            continue;
        }
        let mut shape = k.shape.clone();
        shape[0] *= 2;
        let mut data = k.data.clone();
        data.extend_from_slice(&v.data);
        out.insert(kv_name, HostTensor { shape, data });
    }
    for name in map.keys().filter(|n| n.contains(".attention.self.value.")) {
        if !map.contains_key(&name.replace(".attention.self.value.", ".attention.self.key.")) {
            problems.push(format!("{name} has no matching key tensor"));
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(ModelError::Weights {
            what: "Hugging Face SegFormer checkpoint".into(),
            missing: vec![],
            unexpected: problems,
            misshaped: vec![],
        })
    }
}

/// Which family a backbone state dict comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackboneFormat {
    /// NVlabs `mit_b*.pth` (bare names, optional `head.*`).
    NvLabs,
    /// Upstream PBIP ClassNet (`encoder.*`, optionally under `model.`).
    Upstream,
    /// Hugging Face SegFormer (`segformer.encoder.patch_embeddings...`).
    HuggingFace,
}

/// Detects the family of a backbone state dict from its names.
pub fn detect_backbone_format(map: &TensorMap) -> BackboneFormat {
    if map.keys().any(|k| k.contains("patch_embeddings.")) {
        BackboneFormat::HuggingFace
    } else if map
        .keys()
        .any(|k| k.starts_with("encoder.patch_embed") || k.starts_with("model.encoder."))
    {
        BackboneFormat::Upstream
    } else {
        BackboneFormat::NvLabs
    }
}

/// Backbone tensors under bare NVlabs names from any supported family (`head.*`, `l_fc*`,
/// `logit_scale*` and non-encoder Hugging Face tensors dropped).
pub fn to_nvlabs_backbone(map: &TensorMap) -> Result<TensorMap, ModelError> {
    // Some re-saved NVlabs / mmseg files wrap the weights as `{"state_dict": ...}`.
    let unwrapped;
    let map = if !map.is_empty() && map.keys().all(|k| k.starts_with("state_dict.")) {
        unwrapped = map
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("state_dict.")
                    .map(|s| (s.to_string(), v.clone()))
            })
            .collect::<TensorMap>();
        &unwrapped
    } else {
        map
    };
    Ok(match detect_backbone_format(map) {
        BackboneFormat::HuggingFace => hf_to_nvlabs(map)?,
        BackboneFormat::Upstream => map
            .iter()
            .filter_map(|(k, v)| {
                let k = k.strip_prefix("model.").unwrap_or(k);
                k.strip_prefix("encoder.")
                    .map(|s| (s.to_string(), v.clone()))
            })
            .collect(),
        BackboneFormat::NvLabs => map
            .iter()
            .filter(|(k, _)| !k.starts_with("head."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names_map_to_nvlabs() {
        let cases = [
            (
                "segformer.encoder.patch_embeddings.0.proj.weight",
                "patch_embed1.proj.weight",
            ),
            (
                "segformer.encoder.patch_embeddings.3.layer_norm.bias",
                "patch_embed4.norm.bias",
            ),
            (
                "segformer.encoder.block.0.1.layer_norm_1.weight",
                "block1.1.norm1.weight",
            ),
            (
                "segformer.encoder.block.1.0.attention.self.query.bias",
                "block2.0.attn.q.bias",
            ),
            (
                "segformer.encoder.block.2.0.attention.self.sr.weight",
                "block3.0.attn.sr.weight",
            ),
            (
                "segformer.encoder.block.2.0.attention.self.layer_norm.weight",
                "block3.0.attn.norm.weight",
            ),
            (
                "segformer.encoder.block.3.1.attention.output.dense.weight",
                "block4.1.attn.proj.weight",
            ),
            (
                "segformer.encoder.block.0.0.layer_norm_2.bias",
                "block1.0.norm2.bias",
            ),
            (
                "segformer.encoder.block.0.0.mlp.dense1.weight",
                "block1.0.mlp.fc1.weight",
            ),
            (
                "segformer.encoder.block.0.0.mlp.dwconv.dwconv.bias",
                "block1.0.mlp.dwconv.dwconv.bias",
            ),
            (
                "segformer.encoder.block.0.0.mlp.dense2.weight",
                "block1.0.mlp.fc2.weight",
            ),
            ("segformer.encoder.layer_norm.2.weight", "norm3.weight"),
            ("encoder.layer_norm.0.bias", "norm1.bias"),
        ];
        for (hf, nv) in cases {
            assert_eq!(hf_name_to_nvlabs(hf).as_deref(), Some(nv), "{hf}");
        }
        assert_eq!(hf_name_to_nvlabs("classifier.weight"), None);
        assert_eq!(
            hf_name_to_nvlabs("segformer.encoder.block.0.0.attention.self.key.weight"),
            None
        );
    }

    #[test]
    fn hf_key_value_concatenate_into_kv() {
        let mut m = TensorMap::new();
        let p = "segformer.encoder.block.0.0.attention.self";
        m.insert(
            format!("{p}.key.weight"),
            HostTensor {
                shape: vec![1, 2],
                data: vec![1.0, 2.0],
            },
        );
        m.insert(
            format!("{p}.value.weight"),
            HostTensor {
                shape: vec![1, 2],
                data: vec![3.0, 4.0],
            },
        );
        m.insert(
            "classifier.weight".into(),
            HostTensor {
                shape: vec![1],
                data: vec![0.0],
            },
        );
        let out = hf_to_nvlabs(&m).unwrap();
        assert_eq!(out.len(), 1);
        let kv = &out["block1.0.attn.kv.weight"];
        assert_eq!(kv.shape, vec![2, 2]);
        assert_eq!(kv.data, vec![1.0, 2.0, 3.0, 4.0]);
        // unpaired key
        m.remove(&format!("{p}.value.weight"));
        assert!(hf_to_nvlabs(&m).is_err());
    }

    #[test]
    fn format_detection_and_head_drop() {
        let one = HostTensor {
            shape: vec![1],
            data: vec![0.0],
        };
        let mut nv = TensorMap::new();
        nv.insert("patch_embed1.proj.bias".into(), one.clone());
        nv.insert("head.weight".into(), one.clone());
        assert_eq!(detect_backbone_format(&nv), BackboneFormat::NvLabs);
        let b = to_nvlabs_backbone(&nv).unwrap();
        assert!(b.contains_key("patch_embed1.proj.bias") && !b.contains_key("head.weight"));
        let mut up = TensorMap::new();
        up.insert("model.encoder.patch_embed1.proj.bias".into(), one.clone());
        up.insert("model.l_fc1.fc1.bias".into(), one);
        assert_eq!(detect_backbone_format(&up), BackboneFormat::Upstream);
        let b = to_nvlabs_backbone(&up).unwrap();
        assert_eq!(b.keys().collect::<Vec<_>>(), vec!["patch_embed1.proj.bias"]);
        // `{"state_dict": ...}` wrapper
        let wrapped: TensorMap = nv
            .iter()
            .map(|(k, v)| (format!("state_dict.{k}"), v.clone()))
            .collect();
        let b = to_nvlabs_backbone(&wrapped).unwrap();
        assert_eq!(b.keys().collect::<Vec<_>>(), vec!["patch_embed1.proj.bias"]);
    }
}
