//! The origin's configuration file (`--config FILE`, TOML): Cache-Control per path pattern,
//! the synthetic object size cap, the response-head timeout, whether dotfiles are served and
//! the connection and request limits shared by every node (`[limits]`, see
//! `cdn_http::limits`).

use std::path::Path;

use cdn_http::config::{ConfigError, load_toml, parse_toml};
use globset::{Glob, GlobMatcher};
use serde::Deserialize;

/// One `[[cache_control]]` rule: requests whose path matches `pattern` (a glob over the URL
/// path, `*` does not cross `/`, `**` does) get `value` as Cache-Control.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheControlRule {
    pub pattern: String,
    pub value: String,
}

/// The whole file. Every field has a default; rules from the file are tried before the
/// built-in ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginConfig {
    /// Largest synthetic object, bytes; larger sizes get 400.
    pub synthetic_max_bytes: u64,
    pub cache_control: Vec<CacheControlRule>,
    /// Time to produce a response head, seconds (then 408).
    pub request_timeout_secs: u64,
    /// Serve files and directories whose name starts with `.` (`/.env`, `/.git/config`,
    /// `/media/.hidden`). Off by default: such paths answer `404`, exactly as a missing file
    /// does. Not `403`, which would tell anyone probing for `/.git/` or `/.env` that the file
    /// exists, and which edges never store (a `404` they may cache negatively).
    pub serve_dotfiles: bool,
    /// Connection and request limits (`[limits]`, see `cdn_http::limits`).
    pub limits: cdn_http::limits::Limits,
    /// HTTPS (`[tls]`: listener, certificates by SNI, reload, redirect).
    pub tls: cdn_http::tls::TlsSettings,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            synthetic_max_bytes: 64 * 1024 * 1024,
            cache_control: Vec::new(),
            request_timeout_secs: 30,
            serve_dotfiles: false,
            limits: Default::default(),
            tls: Default::default(),
        }
    }
}

/// The built-in rules, after the configured ones.
pub const DEFAULT_RULES: &[(&str, &str)] = &[
    ("**/*.m3u8", "max-age=2"),
    ("**/*.mpd", "max-age=2"),
    ("/synthetic/**", "public, max-age=31536000, immutable"),
    (
        "**/*.{ts,m4s,mp4,m4v,m4a,webm,aac,vtt}",
        "public, max-age=31536000, immutable",
    ),
];

/// Cache-Control for paths no rule matches.
pub const FALLBACK_CACHE_CONTROL: &str = "max-age=60";

impl OriginConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = load_toml(path)?;
        cfg.check(&path.display().to_string())?;
        Ok(cfg)
    }

    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let cfg: Self = parse_toml(text, file)?;
        cfg.check(file)?;
        Ok(cfg)
    }

    fn check(&self, file: &str) -> Result<(), ConfigError> {
        for (i, rule) in self.cache_control.iter().enumerate() {
            if let Err(e) = Glob::new(&rule.pattern) {
                return Err(ConfigError::Invalid {
                    file: file.to_string(),
                    line: 0,
                    column: 0,
                    field: format!("cache_control[{i}].pattern"),
                    message: e.to_string(),
                });
            }
            if http::HeaderValue::from_str(&rule.value).is_err() {
                return Err(ConfigError::Invalid {
                    file: file.to_string(),
                    line: 0,
                    column: 0,
                    field: format!("cache_control[{i}].value"),
                    message: "not a valid header value".into(),
                });
            }
        }
        Ok(())
    }

    pub fn serve_options(&self) -> cdn_http::server::ServeOptions {
        cdn_http::server::ServeOptions {
            limits: self.limits.clone(),
            ..Default::default()
        }
    }

    /// Compiles the rules (configured first, then built-in).
    pub fn rules(&self) -> CacheRules {
        let configured = self
            .cache_control
            .iter()
            .map(|r| (r.pattern.as_str(), r.value.as_str()));
        let rules = configured
            .chain(DEFAULT_RULES.iter().copied())
            .filter_map(|(pattern, value)| {
                let glob = globset::GlobBuilder::new(pattern)
                    .literal_separator(true)
                    .build()
                    .ok()?;
                Some((
                    glob.compile_matcher(),
                    http::HeaderValue::from_str(value).ok()?,
                ))
            })
            .collect();
        CacheRules { rules }
    }
}

/// Compiled Cache-Control rules.
#[derive(Debug, Clone)]
pub struct CacheRules {
    rules: Vec<(GlobMatcher, http::HeaderValue)>,
}

impl CacheRules {
    /// The Cache-Control value for a URL path.
    pub fn for_path(&self, path: &str) -> http::HeaderValue {
        self.rules
            .iter()
            .find(|(m, _)| m.is_match(path))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| http::HeaderValue::from_static(FALLBACK_CACHE_CONTROL))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_by_kind() {
        let r = OriginConfig::default().rules();
        assert_eq!(r.for_path("/media/demo/index.m3u8"), "max-age=2");
        assert_eq!(
            r.for_path("/media/demo/seg_001.m4s"),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(
            r.for_path("/demo.mp4"),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(
            r.for_path("/synthetic/a"),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(r.for_path("/index.html"), "max-age=60");
    }

    #[test]
    fn configured_rules_win() {
        let c = OriginConfig::parse(
            "[[cache_control]]\npattern = \"/synthetic/nostore-*\"\nvalue = \"no-store\"\n",
            "o.toml",
        )
        .unwrap();
        let r = c.rules();
        assert_eq!(r.for_path("/synthetic/nostore-1"), "no-store");
        assert_eq!(
            r.for_path("/synthetic/other"),
            "public, max-age=31536000, immutable"
        );
    }

    #[test]
    fn bad_config_names_field() {
        let e = OriginConfig::parse("synthetic_max_bytes = \"big\"\n", "o.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("o.toml:1:"), "{e}");
        assert!(e.contains("synthetic_max_bytes"), "{e}");
        let e = OriginConfig::parse(
            "[[cache_control]]\npattern = \"a[\"\nvalue = \"x\"\n",
            "o.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cache_control[0].pattern"), "{e}");
    }
}
