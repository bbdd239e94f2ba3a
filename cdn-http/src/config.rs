//! Loading TOML configuration files with errors that name the file, the line and the field.

use std::path::Path;

use serde::de::DeserializeOwned;

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: field `{field}`: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        field: String,
        message: String,
    },
}

/// Reads and parses a TOML file.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.display().to_string(),
        source,
    })?;
    parse_toml(&text, &path.display().to_string())
}

/// Parses TOML text; `file` names it in errors.
pub fn parse_toml<T: DeserializeOwned>(text: &str, file: &str) -> Result<T, ConfigError> {
    let invalid = |span: Option<std::ops::Range<usize>>, field: String, message: &str| {
        let offset = span.map(|s| s.start).unwrap_or(0).min(text.len());
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = offset - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
        ConfigError::Invalid {
            file: file.to_string(),
            line,
            column,
            field,
            message: message.trim().to_string(),
        }
    };
    let de = toml::Deserializer::parse(text)
        .map_err(|e| invalid(e.span(), "(syntax)".into(), e.message()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        invalid(inner.span(), field, inner.message())
    })
}

/// The 1-based line where a field such as `edge[1].weight` or `health.interval_ms` in TOML `text` is written,
/// or where its table starts when the field itself is absent.
pub fn line_of_field(text: &str, field: &str) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut best: Option<usize> = None;
    let mut parts = field.split('.').peekable();
    while let Some(part) = parts.next() {
        let (key, index) = match part.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let value = table.get(key)?;
        best = Some(value.span().start);
        let value = match (value.get_ref(), index) {
            (DeValue::Array(items), Some(i)) => {
                let item = items.get(i)?;
                best = Some(item.span().start);
                item
            }
            _ => value,
        };
        match value.get_ref() {
            DeValue::Table(t) if parts.peek().is_some() => table = t,
            _ => break,
        }
    }
    let offset = best?.min(text.len());
    Some(text[..offset].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Conf {
        name: String,
        limits: Limits,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Limits {
        max: u64,
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = parse_toml::<Conf>("name = \"a\"\n[limits]\nmax = \"x\"\n", "c.toml").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("c.toml:3:"), "{s}");
        assert!(s.contains("limits.max"), "{s}");
        let e = parse_toml::<Conf>("name = \"a\"\nbogus = 1\n[limits]\nmax = 1\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:2:"), "{e}");
        assert!(e.contains("bogus"), "{e}");
        let e = parse_toml::<Conf>("name = \n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:1:"), "{e}");
    }
}
