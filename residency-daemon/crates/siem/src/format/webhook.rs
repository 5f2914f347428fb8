//! Standard Webhooks (v1) payloads and signatures
//! (<https://www.standardwebhooks.com>, `spec/standard-webhooks.md`).
//!
//! The body follows the spec's payload convention:
//!
//! ```json
//! {"type": "residency.violation", "timestamp": "2027-01-15T08:00:00.123456Z", "data": { ... }}
//! ```
//!
//! with `timestamp` the time of the event and `data` the ECS or OCSF
//! document. Three headers go with it:
//!
//! - `webhook-id`: `msg_<kind>_<seq>` ([`message_id`]), the same on every
//!   retry, so that a receiver processes an alert once;
//! - `webhook-timestamp`: the time of this attempt, in seconds (receivers
//!   reject old ones, against replays), so each retry signs anew;
//! - `webhook-signature`: `v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`.
//!
//! Secrets are written as Standard Webhooks shows them to users:
//! `whsec_` followed by the base64 of 24 to 64 random bytes
//! ([`decode_secret`]).

use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac as _};
use serde_json::{Map, Value};
use sha2::Sha256;

use super::{Context, Format, cef, ecs, kind_name, ocsf, rfc3339_micros, syslog};
use crate::alert::{Alert, AlertKind};

/// How Standard Webhooks marks a symmetric secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// The spec's bounds for a symmetric secret: 24 to 64 bytes (192 to 512
/// bits).
pub const SECRET_LEN: std::ops::RangeInclusive<usize> = 24..=64;

/// A webhook secret that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Not base64 after the optional `whsec_` prefix.
    #[error("the webhook secret is not base64 after its optional \"whsec_\" prefix: {0}")]
    NotBase64(String),
    /// Decoded, but too short or too long.
    #[error(
        "the webhook secret is {0} bytes; Standard Webhooks secrets are 24 to 64 bytes \
         (whsec_ and the base64 of them)"
    )]
    Length(usize),
}

/// The key of a secret written as `whsec_<base64>`. The prefix may be left
/// out, as the reference libraries allow; surrounding whitespace (a
/// secret file's newline) is ignored. The base64 is the standard alphabet
/// with padding.
///
/// # Errors
/// When the rest is not base64 ([`SecretError::NotBase64`]), or the key is
/// not 24 to 64 bytes ([`SecretError::Length`]).
pub fn decode_secret(s: &str) -> Result<Vec<u8>, SecretError> {
    let s = s.trim();
    let b64 = s.strip_prefix(SECRET_PREFIX).unwrap_or(s);
    let key = STANDARD
        .decode(b64)
        .map_err(|e| SecretError::NotBase64(e.to_string()))?;
    if !SECRET_LEN.contains(&key.len()) {
        return Err(SecretError::Length(key.len()));
    }
    Ok(key)
}

/// The `webhook-signature` value: `v1,` and the base64 of
/// HMAC-SHA256(`secret`, `"{id}.{timestamp}.{body}"`).
#[must_use]
pub fn sign(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        unreachable!("HMAC takes keys of any length")
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let mut out = String::from("v1,");
    STANDARD.encode_string(mac.finalize().into_bytes(), &mut out);
    out
}

/// The three headers of a delivery: `webhook-id`, `webhook-timestamp`
/// (the attempt's time, seconds since the epoch) and `webhook-signature`.
#[must_use]
pub fn headers(
    secret: &[u8],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> [(&'static str, String); 3] {
    [
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", sign(secret, id, timestamp, body)),
    ]
}

/// `msg_<store>_<kind>_<seq>` (`msg_<kind>_<seq>` without a store): the
/// same for every attempt to deliver the alert, different for every store
/// (without `.`, which the signed content uses as its separator).
#[must_use]
pub fn message_id(alert: &Alert, store: &str) -> String {
    if store.is_empty() {
        format!("msg_{}_{}", kind_name(alert.kind), alert.seq)
    } else {
        format!("msg_{store}_{}_{}", kind_name(alert.kind), alert.seq)
    }
}

/// The payload's `type`: `residency.flow`, `residency.violation`,
/// `residency.checkpoint` or `residency.gap`.
#[must_use]
pub const fn event_type(alert: &Alert) -> &'static str {
    match alert.kind {
        AlertKind::Flow => "residency.flow",
        AlertKind::Violation => "residency.violation",
        AlertKind::Checkpoint => "residency.checkpoint",
        AlertKind::Gap => "residency.gap",
    }
}

/// The request body: `{"type", "timestamp", "data"}` with `data` the ECS
/// document or the OCSF event by `inner` (CEF and RFC 5424 go as a string:
/// the line).
#[must_use]
pub fn body(alert: &Alert, ctx: &Context, inner: Format) -> Vec<u8> {
    let data = match inner {
        Format::Ecs => ecs::ecs(alert),
        Format::Ocsf => ocsf::ocsf(alert, ctx),
        Format::Cef => cef::cef(alert, ctx).into(),
        Format::Rfc5424 => {
            let line = syslog::rfc5424(alert, ctx, 1, alert.summary().as_bytes());
            String::from_utf8_lossy(&line).into_owned().into()
        }
    };
    let mut m = Map::new();
    m.insert("type".to_owned(), event_type(alert).into());
    m.insert("timestamp".to_owned(), rfc3339_micros(alert.time).into());
    m.insert("data".to_owned(), data);
    // Serialising a JSON value cannot fail.
    serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::fixtures::{self, HOSTILE};

    /// The test vector of the Standard Webhooks reference libraries
    /// (standard-webhooks `libraries/javascript/src/webhook.test.ts`, "sign
    /// function works"; the same values in the other languages' tests).
    #[test]
    fn signatures_match_the_reference_test_vector() {
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            sign(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        // And anything else signed differs.
        assert_ne!(
            sign(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_331,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets() {
        let with = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        assert_eq!(with.len(), 24);
        assert_eq!(decode_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), Ok(with));
        assert!(matches!(
            decode_secret("whsec_not base64!"),
            Err(SecretError::NotBase64(_))
        ));
        assert_eq!(decode_secret("whsec_c2hvcnQ="), Err(SecretError::Length(5)));
        let long = STANDARD.encode([7u8; 65]);
        assert_eq!(decode_secret(&long), Err(SecretError::Length(65)));
    }

    #[test]
    fn headers_ids_and_body() {
        let key = [9u8; 32];
        let a = fixtures::blocked();
        let id = message_id(&a, "");
        assert_eq!(id, "msg_violation_13");
        let b = body(&a, &Context::default(), Format::Ecs);
        let h = headers(&key, &id, 1_900_000_000, &b);
        assert_eq!(h[0], ("webhook-id", "msg_violation_13".to_owned()));
        assert_eq!(h[1], ("webhook-timestamp", "1900000000".to_owned()));
        assert_eq!(h[2].0, "webhook-signature");
        assert_eq!(h[2].1, sign(&key, &id, 1_900_000_000, &b));

        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["type"], "residency.violation");
        assert_eq!(v["timestamp"], "2027-01-15T08:00:00.123456Z");
        assert_eq!(v["data"], ecs::ecs(&a));
        assert_eq!(
            message_id(&fixtures::checkpoint(), ""),
            "msg_checkpoint_120000"
        );
        assert_eq!(event_type(&fixtures::gap()), "residency.gap");
        let v: Value =
            serde_json::from_slice(&body(&a, &Context::default(), Format::Ocsf)).unwrap();
        assert_eq!(v["data"]["class_uid"], 2004);
    }

    #[test]
    fn hostile_values_round_trip() {
        let a = fixtures::hostile();
        for inner in [Format::Ecs, Format::Ocsf] {
            let v: Value = serde_json::from_slice(&body(&a, &Context::default(), inner)).unwrap();
            let name = match inner {
                Format::Ecs => &v["data"]["process"]["name"],
                _ => &v["data"]["evidences"][0]["process"]["name"],
            };
            assert_eq!(name, HOSTILE);
        }
        let v: Value = serde_json::from_slice(&body(&a, &Context::default(), Format::Cef)).unwrap();
        assert_eq!(v["data"], cef::cef(&a, &Context::default()));
    }
}
