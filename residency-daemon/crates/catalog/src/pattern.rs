//! Host-name patterns: an exact name, or `*.` and a suffix. This is the
//! only form the catalog accepts, because it is the only form the kernel
//! can match with a fixed-size key: the literal part in DNS wire format.

use std::{borrow::Cow, cmp::Ordering, fmt};

/// The most bytes a pattern's literal part may take in DNS wire format
/// (label lengths, labels, and the final root byte): the kernel's key
/// holds 128 bytes, and one stays free for its own use.
pub const MAX_WIRE_LEN: usize = 127;

/// The most bytes in one DNS label (RFC 1035, 2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// A validated host-name pattern: `api.openai.com` matches that name only;
/// `*.openai.azure.com` matches any name with one or more labels before
/// `openai.azure.com`, but not `openai.azure.com` itself.
///
/// Ordering: a greater pattern is a more specific one (see
/// [`Pattern::specificity`]); equal specificities are ordered by text, so
/// that sorting is deterministic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    /// Lower-case, as written.
    text: String,
    wildcard: bool,
}

/// Why a pattern was refused, naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host pattern \"{pattern}\": {reason}")]
pub struct PatternError {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong with it, in plain words.
    pub reason: String,
}

/// How specific a pattern is: exact names beat wildcards, then more
/// labels in the literal part beat fewer. For two patterns that both match
/// one name, the greater specificity is the one to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Specificity {
    exact: bool,
    labels: usize,
    len: usize,
}

impl Pattern {
    /// Parses and validates a pattern; letters are lower-cased.
    ///
    /// # Errors
    /// [`PatternError`] naming the pattern and the rule it breaks: empty
    /// labels or a trailing dot, a label over 63 bytes, a character other
    /// than letters, digits, `-` and `_`, a `*` other than a leading `*.`,
    /// or a literal part over [`MAX_WIRE_LEN`] bytes in DNS wire format.
    pub fn parse(pattern: &str) -> Result<Pattern, PatternError> {
        let fail = |reason: String| PatternError {
            pattern: pattern.to_owned(),
            reason,
        };
        let text = pattern.to_ascii_lowercase();
        if text.is_empty() {
            return Err(fail("the pattern is empty".into()));
        }
        if text == "*" {
            return Err(fail(
                "a bare \"*\" would match every name; write \"*.\" and a suffix".into(),
            ));
        }
        let (wildcard, literal) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        if literal.contains('*') {
            return Err(fail(
                "\"*\" is allowed only as the whole first label, as in \"*.example.com\"".into(),
            ));
        }
        if literal.ends_with('.') {
            return Err(fail("the name ends with a dot; write it without".into()));
        }
        for label in literal.split('.') {
            if label.is_empty() {
                return Err(fail(
                    "the name has an empty label (\"..\" or a leading dot)".into(),
                ));
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(fail(format!(
                    "the label \"{label}\" is {} bytes; DNS allows {MAX_LABEL_LEN}",
                    label.len()
                )));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
            {
                return Err(fail(format!(
                    "the character {c:?} is not allowed: only letters, digits, '-' and '_' \
                     (write internationalised names in their xn-- form)"
                )));
            }
        }
        let wire = wire_len(literal);
        if wire > MAX_WIRE_LEN {
            return Err(fail(format!(
                "the name takes {wire} bytes in DNS wire format; the kernel's key holds at most {MAX_WIRE_LEN}"
            )));
        }
        Ok(Pattern { text, wildcard })
    }

    /// Whether this is a `*.` pattern.
    #[must_use]
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// The literal part: the suffix after `*.`, or the whole exact name.
    #[must_use]
    pub fn suffix(&self) -> &str {
        if self.wildcard {
            &self.text[2..]
        } else {
            &self.text
        }
    }

    /// The pattern as written, lower-case.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern matches a host name, without regard to case and
    /// with or without one trailing dot. A name with empty labels matches
    /// nothing.
    #[must_use]
    pub fn matches(&self, name: &str) -> bool {
        let Some(name) = normalize(name) else {
            return false;
        };
        let suffix = self.suffix();
        if !self.wildcard {
            return *name == *suffix;
        }
        name.len() > suffix.len() + 1
            && name.ends_with(suffix)
            && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
    }

    /// Whether every name this pattern matches is also matched by `self`
    /// (a pattern covers itself). Deployment settings refine the entry that
    /// covers them.
    #[must_use]
    pub fn covers(&self, other: &Pattern) -> bool {
        if !self.wildcard {
            return self == other;
        }
        // `*.s` covers an exact name it matches, and `*.t` when t is s or
        // a name under s.
        self.matches(other.suffix()) || (other.wildcard && other.suffix() == self.suffix())
    }

    /// The literal part in DNS wire format, lower-case: each label as a
    /// length byte and its bytes, then the 0 root byte. `api.openai.com`
    /// gives `\x03api\x06openai\x03com\x00`.
    #[must_use]
    pub fn wire_suffix(&self) -> Vec<u8> {
        let literal = self.suffix();
        let mut out = Vec::with_capacity(wire_len(literal));
        for label in literal.split('.') {
            // Parsing checked every label against MAX_LABEL_LEN.
            out.push(u8::try_from(label.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    /// A stable 32-bit id: the 32-bit FNV-1a hash of the pattern text,
    /// never 0 (so that 0 can mean "no pattern" in kernel maps and
    /// events). The same pattern has the same id in every run and every
    /// version; [`crate::Catalog`] refuses two patterns with one id.
    #[must_use]
    pub fn id(&self) -> u32 {
        const OFFSET: u32 = 0x811c_9dc5;
        const PRIME: u32 = 0x0100_0193;
        let h = self
            .text
            .bytes()
            .fold(OFFSET, |h, b| (h ^ u32::from(b)).wrapping_mul(PRIME));
        if h == 0 { 1 } else { h }
    }

    /// How specific the pattern is; see [`Specificity`].
    #[must_use]
    pub fn specificity(&self) -> Specificity {
        let literal = self.suffix();
        Specificity {
            exact: !self.wildcard,
            labels: literal.split('.').count(),
            len: literal.len(),
        }
    }
}

impl Ord for Pattern {
    fn cmp(&self, other: &Self) -> Ordering {
        self.specificity()
            .cmp(&other.specificity())
            .then_with(|| self.text.cmp(&other.text))
    }
}

impl PartialOrd for Pattern {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Pattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::parse(s)
    }
}

/// A host name as the catalog compares it: one trailing dot dropped,
/// lower-case. `None` for names with empty labels, which no pattern
/// matches.
pub(crate) fn normalize(name: &str) -> Option<Cow<'_, str>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.split('.').any(str::is_empty) {
        return None;
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(name.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(name))
    }
}

/// Bytes of `name` (no trailing dot) in DNS wire format.
fn wire_len(name: &str) -> usize {
    name.split('.').map(|l| l.len() + 1).sum::<usize>() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn parses_and_lower_cases() {
        let exact = p("API.OpenAI.com");
        assert_eq!(exact.as_str(), "api.openai.com");
        assert_eq!(exact.to_string(), "api.openai.com");
        assert!(!exact.is_wildcard());
        assert_eq!(exact.suffix(), "api.openai.com");
        let wild = p("*.OpenAI.Azure.com");
        assert!(wild.is_wildcard());
        assert_eq!(wild.suffix(), "openai.azure.com");
        assert_eq!(wild.to_string(), "*.openai.azure.com");
        assert_eq!(p("_dmarc.example.com").as_str(), "_dmarc.example.com");
        assert_eq!("x.io".parse::<Pattern>().unwrap(), p("x.io"));
    }

    #[test]
    fn refuses_bad_patterns_naming_them() {
        let long_label = "a".repeat(64);
        let long_name = vec!["abcdefghi"; 13].join("."); // 13 * 10 + 1 = 131 bytes
        for (bad, says) in [
            ("", "empty"),
            ("*", "bare"),
            ("api.openai.com.", "ends with a dot"),
            ("api..openai.com", "empty label"),
            (".openai.com", "empty label"),
            ("bedrock-runtime.*.amazonaws.com", "first label"),
            ("*-aiplatform.googleapis.com", "first label"),
            ("**.example.com", "first label"),
            ("*.*.example.com", "first label"),
            ("*.", "empty label"),
            ("exa mple.com", "' '"),
            ("example.com/path", "'/'"),
            ("bücher.de", "'ü'"),
            (long_label.as_str(), "64 bytes"),
            (long_name.as_str(), "131 bytes"),
        ] {
            let err = Pattern::parse(bad).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(&format!("\"{bad}\"")), "{msg}");
            assert!(msg.contains(says), "{bad:?}: {msg}");
        }
        // At the limits: 63-byte labels, 127 bytes on the wire.
        assert!(Pattern::parse(&"a".repeat(63)).is_ok());
        let at_limit = format!("{}.{}", "a".repeat(63), "b".repeat(61)); // 64 + 62 + 1
        assert_eq!(p(&at_limit).wire_suffix().len(), MAX_WIRE_LEN);
        let over = format!("{}.{}", "a".repeat(63), "b".repeat(62));
        assert!(Pattern::parse(&over).is_err());
        // The wildcard is not part of the kernel key.
        assert!(Pattern::parse(&format!("*.{at_limit}")).is_ok());
    }

    #[test]
    fn exact_and_wildcard_matching() {
        let exact = p("api.openai.com");
        assert!(exact.matches("api.openai.com"));
        assert!(exact.matches("API.OPENAI.COM."));
        assert!(!exact.matches("eu.api.openai.com"));
        assert!(!exact.matches("api.openai.co"));
        let wild = p("*.openai.azure.com");
        assert!(wild.matches("acme.openai.azure.com"));
        assert!(wild.matches("x.y.openai.azure.com"), "one or more labels");
        assert!(wild.matches("Acme.OpenAI.Azure.Com."));
        assert!(!wild.matches("openai.azure.com"), "not the suffix itself");
        assert!(!wild.matches("xopenai.azure.com"), "label boundary");
        assert!(!wild.matches(".openai.azure.com"));
        assert!(!wild.matches("a..openai.azure.com"));
        assert!(!wild.matches(""));
        assert!(!wild.matches("."));
    }

    #[test]
    fn coverage() {
        let wild = p("*.openai.azure.com");
        assert!(wild.covers(&p("acme.openai.azure.com")));
        assert!(wild.covers(&p("*.eu.openai.azure.com")));
        assert!(wild.covers(&wild));
        assert!(!wild.covers(&p("openai.azure.com")));
        assert!(!wild.covers(&p("*.azure.com")));
        assert!(!p("acme.openai.azure.com").covers(&p("*.acme.openai.azure.com")));
        assert!(p("a.io").covers(&p("a.io")));
    }

    #[test]
    fn wire_suffix_bytes() {
        assert_eq!(
            p("api.openai.com").wire_suffix(),
            b"\x03api\x06openai\x03com\x00"
        );
        assert_eq!(
            p("*.OpenAI.azure.com").wire_suffix(),
            b"\x06openai\x05azure\x03com\x00"
        );
        assert_eq!(p("io").wire_suffix(), b"\x02io\x00");
    }

    #[test]
    fn specificity_orders_exact_then_longest_suffix() {
        let mut ps = [
            p("*.openai.com"),
            p("api.openai.com"),
            p("*.api.openai.com"),
            p("eu.api.openai.com"),
            p("*.com"),
        ];
        ps.sort();
        let order: Vec<_> = ps.iter().map(Pattern::as_str).collect();
        assert_eq!(
            order,
            [
                "*.com",
                "*.openai.com",
                "*.api.openai.com",
                "api.openai.com",
                "eu.api.openai.com",
            ]
        );
        // For a name, the greatest matching pattern wins.
        let best = ps.iter().filter(|q| q.matches("eu.api.openai.com")).max();
        assert_eq!(best.unwrap().as_str(), "eu.api.openai.com");
        let best = ps.iter().filter(|q| q.matches("x.api.openai.com")).max();
        assert_eq!(best.unwrap().as_str(), "*.api.openai.com");
    }

    #[test]
    fn ids_are_fnv1a_and_stable() {
        // FNV-1a 32 of the text: fixed values, so that a change of the
        // hash (which would renumber every kernel map) fails here.
        assert_eq!(p("api.openai.com").id(), 0xc8cc_c396);
        assert_eq!(p("*.openai.azure.com").id(), 0xb9c2_a1b9);
        assert_eq!(p("API.openai.com").id(), p("api.openai.com").id());
        assert_ne!(p("*.a.io").id(), p("a.io").id());
        assert_ne!(p("a.io").id(), 0);
    }
}
