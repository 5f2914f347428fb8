//! Host names as this crate hands them out: lower-case ASCII letters,
//! digits, `-` and `_`, labels joined by `.`, no trailing dot, at most
//! [`MAX_NAME_LEN`] characters.
//!
//! DNS labels on the wire may hold any byte, and a TLS server name is
//! whatever the client wrote. A name with other bytes (a dot inside a
//! label, a space, a control byte, UTF-8) is not a host name any
//! application connects to by name; it is dropped rather than escaped, so
//! that every name this crate returns can be printed, compared and
//! indexed as it is.

/// The longest host name in text form: 255 bytes on the wire are at most
/// 253 characters without the trailing dot (RFC 1035 section 2.3.4).
pub const MAX_NAME_LEN: usize = 253;

/// The longest label (RFC 1035 section 2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// Joins labels into a host name, or `None` when a label is empty, too
/// long or holds a byte outside letters, digits, `-` and `_`, when there
/// is no label at all (the root), or when the result is too long.
pub(crate) fn from_labels<'a>(labels: impl IntoIterator<Item = &'a [u8]>) -> Option<String> {
    let mut out = String::new();
    for label in labels {
        if label.is_empty() || label.len() > MAX_LABEL_LEN {
            return None;
        }
        if !out.is_empty() {
            out.push('.');
        }
        for &b in label {
            if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return None;
            }
            out.push(char::from(b.to_ascii_lowercase()));
        }
        if out.len() > MAX_NAME_LEN {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A host name from its text form (a TLS server name): one trailing dot is
/// allowed and removed.
pub(crate) fn from_text(text: &[u8]) -> Option<String> {
    let text = text.strip_suffix(b".").unwrap_or(text);
    if text.is_empty() {
        return None;
    }
    from_labels(text.split(|&b| b == b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_cases_and_joins() {
        let labels: [&[u8]; 3] = [b"WWW", b"Example", b"COM"];
        assert_eq!(from_labels(labels).as_deref(), Some("www.example.com"));
        assert_eq!(
            from_text(b"Api.Example.com.").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            from_text(b"_dmarc.x-y.example").as_deref(),
            Some("_dmarc.x-y.example")
        );
    }

    #[test]
    fn refuses_what_is_not_a_host_name() {
        assert_eq!(from_labels(std::iter::empty()), None);
        let dotted: [&[u8]; 2] = [b"a.b", b"com"];
        assert_eq!(from_labels(dotted), None);
        let empty: [&[u8]; 2] = [b"a", b""];
        assert_eq!(from_labels(empty), None);
        assert_eq!(from_text(b""), None);
        assert_eq!(from_text(b"."), None);
        assert_eq!(from_text(b"a..b"), None);
        assert_eq!(from_text(b"a b.com"), None);
        assert_eq!(from_text("b\u{fc}cher.de".as_bytes()), None);
        assert_eq!(from_text(b"x\0.com"), None);
        let long = [b'a'; 64];
        assert_eq!(from_text(&long), None);
        // 4 labels of 63 and dots: 255 characters, two too many.
        let too_long = vec!["a".repeat(63); 4].join(".");
        assert_eq!(from_text(too_long.as_bytes()), None);
        let just_fits = format!("{}.{}", vec!["a".repeat(63); 3].join("."), "a".repeat(61));
        assert_eq!(just_fits.len(), MAX_NAME_LEN);
        assert_eq!(from_text(just_fits.as_bytes()), Some(just_fits));
    }
}
