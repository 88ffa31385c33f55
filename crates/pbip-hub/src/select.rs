//! Which files of a repository are its weights.

/// Small JSON files (configs, preprocessor settings, shard indexes) are fetched with the weights.
pub(crate) const SMALL_JSON_BYTES: u64 = 1 << 20;

fn top_level(name: &str) -> bool {
    !name.contains('/')
}

/// The weight files of a repository listing (top-level files only): every `*.safetensors`; else
/// `pytorch_model.bin`; else every `*.pth`; else every `*.bin`. Sorted.
pub fn weight_files<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut names: Vec<&str> = names.into_iter().filter(|n| top_level(n)).collect();
    names.sort_unstable();
    names.dedup();
    let with = |ext: &str| -> Vec<String> {
        names
            .iter()
            .filter(|n| n.ends_with(ext))
            .map(|n| n.to_string())
            .collect()
    };
    let st = with(".safetensors");
    if !st.is_empty() {
        return st;
    }
    if names.contains(&"pytorch_model.bin") {
        return vec!["pytorch_model.bin".to_string()];
    }
    let pth = with(".pth");
    if !pth.is_empty() {
        return pth;
    }
    with(".bin")
}

/// The one weight file a config value without a file name means: `model.safetensors`, else the
/// only file of [`weight_files`], else `pytorch_model.bin`. `Err` explains (no candidate, or
/// several: name one with `hf:org/name/FILE`).
pub fn primary_weight_file<'a>(
    names: impl IntoIterator<Item = &'a str> + Clone,
) -> Result<String, String> {
    let all: Vec<&str> = names.clone().into_iter().collect();
    if all.contains(&"model.safetensors") {
        return Ok("model.safetensors".to_string());
    }
    let w = weight_files(names);
    match w.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(
            "no weight file (*.safetensors, pytorch_model.bin, *.pth, *.bin) at the top level; \
             name one: hf:org/name/FILE"
                .into(),
        ),
        _ if all.contains(&"pytorch_model.bin") => Ok("pytorch_model.bin".to_string()),
        many => Err(format!(
            "several weight files ({}); name one: hf:org/name/FILE",
            many.join(", ")
        )),
    }
}

/// The files `fetch` takes by default: the weight files plus `config.json` and the other small
/// top-level JSON files (`size` unknown counts as small).
pub(crate) fn default_files(listing: &[(&str, Option<u64>)]) -> Vec<String> {
    let mut out = weight_files(listing.iter().map(|(n, _)| *n));
    for (n, size) in listing {
        if top_level(n)
            && n.ends_with(".json")
            && size.is_none_or(|s| s <= SMALL_JSON_BYTES)
            && !out.iter().any(|o| o == n)
        {
            out.push(n.to_string());
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_safetensors_then_pytorch_model_bin() {
        let hf = [
            "README.md",
            "config.json",
            "pytorch_model.bin",
            "model.safetensors",
            "tf_model.h5",
            "sub/other.safetensors",
        ];
        assert_eq!(weight_files(hf), vec!["model.safetensors"]);
        assert_eq!(primary_weight_file(hf).unwrap(), "model.safetensors");
        let torch = ["config.json", "pytorch_model.bin", "training_args.bin"];
        assert_eq!(weight_files(torch), vec!["pytorch_model.bin"]);
        assert_eq!(primary_weight_file(torch).unwrap(), "pytorch_model.bin");
        let pth = ["mit_b1.pth", "x.bin"];
        assert_eq!(weight_files(pth), vec!["mit_b1.pth"]);
        assert_eq!(weight_files(["a.bin", "b.bin"]), vec!["a.bin", "b.bin"]);
    }

    #[test]
    fn primary_needs_one_candidate() {
        let sharded = [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
        ];
        let e = primary_weight_file(sharded).unwrap_err();
        assert!(e.contains("several weight files"), "{e}");
        assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
        let e = primary_weight_file(["README.md", "tf_model.h5"]).unwrap_err();
        assert!(e.contains("no weight file"), "{e}");
        // Several .safetensors but also pytorch_model.bin: the latter is the model.
        assert_eq!(
            primary_weight_file(["a.safetensors", "b.safetensors", "pytorch_model.bin"]).unwrap(),
            "pytorch_model.bin"
        );
    }

    #[test]
    fn default_adds_small_json() {
        let listing = [
            ("config.json", Some(700)),
            ("preprocessor_config.json", None),
            ("tokenizer.json", Some(5 << 20)),
            ("model.safetensors", Some(10 << 20)),
            ("README.md", Some(10)),
            ("sub/config.json", Some(10)),
        ];
        assert_eq!(
            default_files(&listing),
            vec![
                "config.json",
                "model.safetensors",
                "preprocessor_config.json"
            ]
        );
    }
}
