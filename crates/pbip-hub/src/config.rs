//! Hub settings from the environment (the variables `huggingface_hub` reads).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where and how the hub is reached.
#[derive(Clone)]
pub struct HubConfig {
    /// Hub base URL, without a trailing `/` (`HF_ENDPOINT`).
    pub endpoint: String,
    /// The hub cache (`HF_HUB_CACHE`, default `$HF_HOME/hub`).
    pub cache_dir: PathBuf,
    /// Access token (`HF_TOKEN`, `HF_TOKEN_PATH`, `$HF_HOME/token`).
    pub token: Option<String>,
    /// No network: cached files only (`HF_HUB_OFFLINE`).
    pub offline: bool,
    /// Draw a progress bar per downloaded file on stderr (hidden when stderr is not a terminal).
    pub progress: bool,
    /// Further attempts (each resuming with `Range`) after a download is cut or fails with a
    /// connection error or a 5xx status.
    pub retries: u32,
    /// Pause before retry `n` is `n * retry_pause`.
    pub retry_pause: Duration,
    /// No bytes for this long on a connection is an error (then retried).
    pub read_timeout: Duration,
}

impl std::fmt::Debug for HubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubConfig")
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("offline", &self.offline)
            .field("progress", &self.progress)
            .field("retries", &self.retries)
            .field("retry_pause", &self.retry_pause)
            .field("read_timeout", &self.read_timeout)
            .finish()
    }
}

/// `1`, `true`, `yes`, `on` (any case), as `huggingface_hub` reads boolean variables.
fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES" | "TRUE"
    )
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

impl HubConfig {
    /// Settings from the process environment.
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Settings from a variable look-up (`from_env` uses the process environment; tests pass a map).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let hf_home = non_empty(var("HF_HOME"))
            .map(PathBuf::from)
            .unwrap_or_else(|| default_hf_home(&var));
        let cache_dir = non_empty(var("HF_HUB_CACHE"))
            .or_else(|| non_empty(var("HUGGINGFACE_HUB_CACHE")))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let endpoint = non_empty(var("HF_ENDPOINT"))
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
            .trim()
            .trim_end_matches('/')
            .to_string();
        let token = non_empty(var("HF_TOKEN"))
            .map(|t| t.trim().to_string())
            .or_else(|| {
                let path = non_empty(var("HF_TOKEN_PATH"))
                    .map(PathBuf::from)
                    .unwrap_or_else(|| hf_home.join("token"));
                read_token_file(&path)
            });
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v));
        Self {
            endpoint,
            cache_dir,
            token,
            offline,
            progress: true,
            retries: 3,
            retry_pause: Duration::from_secs(2),
            read_timeout: Duration::from_secs(60),
        }
    }

    /// Settings for an explicit endpoint and cache (no token, online, no progress bar).
    pub fn new(endpoint: &str, cache_dir: &Path) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            cache_dir: cache_dir.to_path_buf(),
            token: None,
            offline: false,
            progress: false,
            retries: 3,
            retry_pause: Duration::from_secs(2),
            read_timeout: Duration::from_secs(60),
        }
    }
}

fn default_hf_home(var: &impl Fn(&str) -> Option<String>) -> PathBuf {
    let cache = non_empty(var("XDG_CACHE_HOME"))
        .map(PathBuf::from)
        .or_else(|| {
            non_empty(var("HOME"))
                .or_else(|| non_empty(var("USERPROFILE")))
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("huggingface")
}

fn read_token_file(path: &Path) -> Option<String> {
    let t = std::fs::read_to_string(path).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> HubConfig {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubConfig::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_follow_home() {
        let c = from(&[("HOME", "/home/u")]);
        assert_eq!(c.endpoint, "https://huggingface.co");
        assert_eq!(c.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert!(c.token.is_none());
        assert!(!c.offline);
        let c = from(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/x")]);
        assert_eq!(c.cache_dir, PathBuf::from("/x/huggingface/hub"));
    }

    #[test]
    fn hf_variables_win() {
        let c = from(&[
            ("HOME", "/home/u"),
            ("HF_HOME", "/hf"),
            ("HF_ENDPOINT", "http://127.0.0.1:9/ "),
            ("HF_HUB_OFFLINE", "yes"),
            ("HF_TOKEN", " hf_abc\n"),
        ]);
        assert_eq!(c.cache_dir, PathBuf::from("/hf/hub"));
        assert_eq!(c.endpoint, "http://127.0.0.1:9");
        assert!(c.offline);
        assert_eq!(c.token.as_deref(), Some("hf_abc"));
        let c = from(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/cache")]);
        assert_eq!(c.cache_dir, PathBuf::from("/cache"));
        for (v, want) in [
            ("0", false),
            ("false", false),
            ("", false),
            ("ON", true),
            ("1", true),
        ] {
            assert_eq!(from(&[("HF_HUB_OFFLINE", v)]).offline, want, "{v:?}");
        }
    }

    #[test]
    fn token_file_of_hf_home() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_file\n").unwrap();
        let home = dir.path().to_str().unwrap();
        assert_eq!(from(&[("HF_HOME", home)]).token.as_deref(), Some("hf_file"));
        // HF_TOKEN beats the file.
        assert_eq!(
            from(&[("HF_HOME", home), ("HF_TOKEN", "hf_env")])
                .token
                .as_deref(),
            Some("hf_env")
        );
        let other = dir.path().join("other");
        std::fs::write(&other, "hf_other").unwrap();
        assert_eq!(
            from(&[
                ("HF_HOME", home),
                ("HF_TOKEN_PATH", other.to_str().unwrap())
            ])
            .token
            .as_deref(),
            Some("hf_other")
        );
    }

    #[test]
    fn debug_hides_the_token() {
        let c = from(&[("HF_TOKEN", "hf_secret")]);
        let s = format!("{c:?}");
        assert!(!s.contains("hf_secret"), "{s}");
    }
}
