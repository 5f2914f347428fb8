//! What every component's configuration shares.
//!
//! residency's configuration is one TOML file, but each component owns its
//! section: the evidence store `[evidence]`, the REST API `[api]`, the SIEM
//! sinks `[[sink]]`, and the daemon the rest. Each parses a raw form that
//! mirrors the file (`deny_unknown_fields`, values wrapped in
//! [`toml::Spanned`] so that they know where they were written) and
//! validates it into a form in which invalid states cannot be represented.
//! This crate is the part they share: a [`ConfigError`] that names the
//! file, the line and the field, and the [`Locator`] that turns a value's
//! byte span into one.
//!
//! It sits below every component crate, so that none of them needs the
//! daemon to report a bad setting, and the daemon's `config` module can
//! parse the file and hand each component its part.
#![forbid(unsafe_code)]

use std::{fmt, ops::Range};

pub use toml::Spanned;

/// A configuration error: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file, or `<built-in default>`.
    pub file: String,
    /// 1-based line, when the error points at a place in the file.
    pub line: Option<usize>,
    /// Dotted path of the field, e.g. `deny[1].destinations[0]`; empty when
    /// the file as a whole is at fault.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    /// An error about a whole file (one that cannot be read, say).
    #[must_use]
    pub fn file(file: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.into(),
            line: None,
            field: String::new(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Turns byte spans of one file into line numbers, and builds errors.
#[derive(Debug, Clone, Copy)]
pub struct Locator<'a> {
    text: &'a str,
    source: &'a str,
}

impl<'a> Locator<'a> {
    /// For `text`, named `source` in errors (a path, or
    /// `<built-in default>`).
    #[must_use]
    pub fn new(text: &'a str, source: &'a str) -> Self {
        Locator { text, source }
    }

    /// The file's name, as errors give it.
    #[must_use]
    pub fn source(&self) -> &'a str {
        self.source
    }

    /// The 1-based line a span starts on.
    #[must_use]
    pub fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.get(..end).map_or(0, |t| t.matches('\n').count()) + 1
    }

    /// An error at `span`, about `field`.
    #[must_use]
    pub fn err(&self, span: Range<usize>, field: &str, message: &str) -> ConfigError {
        self.err_opt(Some(span), field, message)
    }

    /// An error about `field`, at `span` if it was written at all (an
    /// absent setting has no place).
    #[must_use]
    pub fn err_opt(&self, span: Option<Range<usize>>, field: &str, message: &str) -> ConfigError {
        ConfigError {
            file: self.source.to_owned(),
            line: span.map(|s| self.line(&s)),
            field: field.to_owned(),
            message: message.to_owned(),
        }
    }

    /// The file parsed into its raw form, or an error that names the line
    /// and, where the parser gives only a position, the field found there.
    ///
    /// # Errors
    /// The parser's first complaint, located.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(self.text).map_err(|e| ConfigError {
            file: self.source.to_owned(),
            line: e.span().map(|s| self.line(&s)),
            field: e
                .span()
                .map(|s| field_at(self.text, s.start))
                .unwrap_or_default(),
            message: e.message().trim().to_owned(),
        })
    }

    /// A whole number within `range`, or `default` when it is not set.
    ///
    /// # Errors
    /// When it is set outside `range`.
    pub fn ranged(
        &self,
        value: Option<&Spanned<u64>>,
        field: &str,
        default: Option<u64>,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Option<u64>, ConfigError> {
        match value {
            None => Ok(default),
            Some(s) if range.contains(s.get_ref()) => Ok(Some(*s.get_ref())),
            Some(s) => Err(self.err(
                s.span(),
                field,
                &format!(
                    "{} is outside {}..={}",
                    s.get_ref(),
                    range.start(),
                    range.end()
                ),
            )),
        }
    }
}

/// The dotted path of the key whose value starts at or around `offset`, for
/// errors that the TOML parser reports by position only (an unknown variant,
/// a wrong type): `workload[1].role`, `policy.unknown`. Empty when the
/// position is not on a `key = value` line.
#[must_use]
pub fn field_at(text: &str, offset: usize) -> String {
    let mut table = String::new();
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut key = None;
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let end = start + line.len();
        let t = line.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_owned();
            let n = counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            name.trim().clone_into(&mut table);
        } else if offset >= start
            && offset < end.max(start + 1)
            && let Some((k, _)) = t.split_once('=')
        {
            key = Some(k.trim().trim_matches('"').to_owned());
        }
        if offset < end {
            break;
        }
        start = end;
    }
    match key {
        Some(k) if table.is_empty() => k,
        Some(k) => format!("{table}.{k}"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_the_field_by_position() {
        let text = "[policy]\nunknown = \"maybe\"\n[[tenant]]\nid = \"a\"\n[[tenant]]\nid = 5\n";
        assert_eq!(
            field_at(text, text.find("maybe").unwrap()),
            "policy.unknown"
        );
        assert_eq!(field_at(text, text.find('5').unwrap()), "tenant[1].id");
        assert_eq!(field_at(text, 0), "");
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        port: Option<Spanned<u64>>,
    }

    #[test]
    fn errors_say_file_line_and_field() {
        let text = "\n\nport = \"x\"\n";
        let at = Locator::new(text, "/etc/r.toml");
        let e = at.parse::<Raw>().unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (Some(3), "port"), "{e}");
        assert!(e.to_string().starts_with("/etc/r.toml:3: port: "), "{e}");
        let e = Locator::new("colour = 1\n", "f")
            .parse::<Raw>()
            .unwrap_err();
        assert!(e.message.contains("colour"), "unknown keys are errors: {e}");
        assert_eq!(
            ConfigError::file("f", "cannot read the file").to_string(),
            "f: cannot read the file"
        );
    }

    #[test]
    fn ranged_values_keep_defaults_and_refuse_the_rest() {
        let text = "\nport = 70000\n";
        let at = Locator::new(text, "f");
        let raw: Raw = at.parse().unwrap();
        let e = at
            .ranged(raw.port.as_ref(), "api.port", None, 1..=65_535)
            .unwrap_err();
        assert_eq!(e.to_string(), "f:2: api.port: 70000 is outside 1..=65535");
        assert_eq!(at.ranged(None, "p", Some(7), 1..=9), Ok(Some(7)));
        let raw: Raw = Locator::new("port = 9", "f").parse().unwrap();
        assert_eq!(at.ranged(raw.port.as_ref(), "p", None, 1..=9), Ok(Some(9)));
    }
}
