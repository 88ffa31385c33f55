//! `hf:` references and the checks on repository ids, revisions and file names.

use crate::HubError;
use crate::presets::{PRESETS, Preset, preset};

/// The prefix that marks a config value as a hub reference.
pub const HUB_PREFIX: &str = "hf:";

/// The revision used when none is given.
pub const DEFAULT_REVISION: &str = "main";

/// A parsed hub reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    /// `org/name`.
    pub repo_id: String,
    /// Branch, tag or commit (default `main`).
    pub revision: String,
    /// A file in the repository, if one was named.
    pub file: Option<String>,
    /// The preset the reference named, if it was a preset name.
    pub preset: Option<&'static Preset>,
}

impl HubRef {
    /// Parses `org/name[@revision][/path/in/repo]` or `PRESET[@revision]` (the part after `hf:`).
    /// A revision given this way cannot contain `/` (use a commit hash, or `--revision` on the
    /// command line, for `refs/pr/N`).
    pub fn parse(spec: &str) -> Result<HubRef, HubError> {
        let spec = spec.trim();
        let bad = |why: &str| {
            HubError::Spec(format!(
                "`{HUB_PREFIX}{spec}`: {why}; expected {HUB_PREFIX}org/name[@revision][/file] or \
                 {HUB_PREFIX}PRESET[@revision] (presets: {})",
                preset_names()
            ))
        };
        let (head, path) = match spec.split_once('/') {
            None => {
                let (name, revision) = split_revision(spec).map_err(|w| bad(&w))?;
                let p = preset(name).ok_or_else(|| bad(&format!("`{name}` is not a preset")))?;
                return Ok(HubRef {
                    repo_id: p.repo_id.to_string(),
                    revision: revision.unwrap_or(DEFAULT_REVISION).to_string(),
                    file: None,
                    preset: Some(p),
                });
            }
            Some(x) => x,
        };
        let (name_rev, file) = match path.split_once('/') {
            Some((n, f)) => (n, Some(f)),
            None => (path, None),
        };
        let (name, revision) = split_revision(name_rev).map_err(|w| bad(&w))?;
        let repo_id = format!("{head}/{name}");
        validate_repo_id(&repo_id).map_err(|e| bad(&e.to_string()))?;
        if let Some(f) = file {
            validate_filename(f).map_err(|e| bad(&e.to_string()))?;
        }
        let revision = revision.unwrap_or(DEFAULT_REVISION).to_string();
        validate_revision(&revision).map_err(|e| bad(&e.to_string()))?;
        Ok(HubRef {
            repo_id,
            revision,
            file: file.map(str::to_string),
            preset: None,
        })
    }
}

/// `name@rev` → (`name`, Some(`rev`)).
fn split_revision(s: &str) -> Result<(&str, Option<&str>), String> {
    match s.split_once('@') {
        None => Ok((s, None)),
        Some((_, "")) => Err("empty revision after `@`".into()),
        Some((n, r)) => Ok((n, Some(r))),
    }
}

fn preset_names() -> String {
    PRESETS
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A command-line target: a preset name or a repository id, with or without `hf:` and the
/// `@revision` / `/file` parts of [`HubRef::parse`].
pub fn parse_target(s: &str) -> Result<HubRef, HubError> {
    let s = s.trim();
    HubRef::parse(s.strip_prefix(HUB_PREFIX).unwrap_or(s))
}

fn name_ok(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 96
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !part.contains("..")
        && !part.starts_with(['-', '.'])
        && !part.ends_with(['-', '.'])
}

/// Checks an `org/name` repository id (the hub's character set; no `..`).
pub fn validate_repo_id(repo_id: &str) -> Result<(), HubError> {
    match repo_id.split_once('/') {
        Some((org, name)) if name_ok(org) && name_ok(name) => Ok(()),
        _ => Err(HubError::Spec(format!(
            "`{repo_id}` is not a hub repository id (org/name of letters, digits, `-`, `_`, `.`)"
        ))),
    }
}

/// Checks a revision (branch, tag, `refs/pr/N` or commit): no `..`, no empty parts, no spaces.
pub(crate) fn validate_revision(rev: &str) -> Result<(), HubError> {
    let ok = !rev.is_empty()
        && !rev
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
        && rev
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..");
    if ok {
        Ok(())
    } else {
        Err(HubError::Spec(format!("`{rev}` is not a valid revision")))
    }
}

/// Checks a file name in a repository: relative, `/`-separated, no `.`/`..`/empty parts (so it
/// cannot leave the snapshot folder).
pub(crate) fn validate_filename(name: &str) -> Result<(), HubError> {
    let ok = !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_control() || c == '\\' || c == ':')
        && name
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..");
    if ok {
        Ok(())
    } else {
        Err(HubError::Spec(format!(
            "`{name}` is not a valid file name in a repository"
        )))
    }
}

/// A full commit hash (40 hex digits).
pub(crate) fn is_commit_hash(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let r = HubRef::parse("nvidia/mit-b1").unwrap();
        assert_eq!(
            (r.repo_id.as_str(), r.revision.as_str(), r.file.as_deref()),
            ("nvidia/mit-b1", "main", None)
        );
        let r = HubRef::parse("nvidia/mit-b1@v1.0").unwrap();
        assert_eq!((r.revision.as_str(), r.file.as_deref()), ("v1.0", None));
        let r = HubRef::parse("org/name/sub/model.safetensors").unwrap();
        assert_eq!(
            (r.repo_id.as_str(), r.file.as_deref()),
            ("org/name", Some("sub/model.safetensors"))
        );
        let r = HubRef::parse("org/name@abc/model.safetensors").unwrap();
        assert_eq!(
            (r.revision.as_str(), r.file.as_deref()),
            ("abc", Some("model.safetensors"))
        );
        let r = parse_target("hf:mit-b3@dev").unwrap();
        assert_eq!(
            (r.repo_id.as_str(), r.revision.as_str()),
            ("nvidia/mit-b3", "dev")
        );
        assert_eq!(r.preset.map(|p| p.name), Some("mit-b3"));
    }

    #[test]
    fn rejects_bad_references() {
        for s in [
            "",
            "nosuchpreset",
            "org/",
            "/name",
            "org/na me",
            "org/../x",
            "org/name@",
            "org/name/../../etc/passwd",
            "org/name/a//b",
            "org/name/C:\\x",
        ] {
            let e = HubRef::parse(s).expect_err(s);
            assert!(e.to_string().contains("expected hf:org/name"), "{s}: {e}");
        }
    }

    #[test]
    fn revisions_and_files() {
        assert!(validate_revision("refs/pr/1").is_ok());
        assert!(validate_revision("../x").is_err());
        assert!(validate_revision("a b").is_err());
        assert!(validate_filename("a/b.json").is_ok());
        assert!(validate_filename("/abs").is_err());
        assert!(is_commit_hash(&"a".repeat(40)));
        assert!(!is_commit_hash("main"));
    }
}
