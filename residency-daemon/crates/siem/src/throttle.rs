//! Throttling of alert storms: the same workload hitting the same
//! destination under the same rule again and again becomes the first
//! alert, sent at once, and one more alert with the count of repeats when
//! the window closes.

use std::{collections::HashMap, time::Duration};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::alert::{Alert, AlertKind};

/// What makes two violations "the same": the violation key of the store
/// (workload, verdict, destination, port, rule).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Key {
    workload: Option<String>,
    verdict: Option<String>,
    dst: Option<String>,
    port: Option<u16>,
    rule: Option<String>,
}

impl Key {
    fn of(a: &Alert) -> Key {
        let r = a.record();
        Key {
            workload: r.workload().map(str::to_owned),
            verdict: r.verdict().map(str::to_owned),
            dst: r.dst_ip().map(str::to_owned),
            port: r.dst_port(),
            rule: r.rule().0.map(str::to_owned),
        }
    }
}

/// One open window: repeats seen since the alert that opened it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Window {
    key: Key,
    /// Event time of the alert that opened the window.
    opened: Timestamp,
    /// Repeats folded in so far, and the first and last of them.
    repeats: u64,
    first: Option<Timestamp>,
    last: Option<Timestamp>,
    /// Sequence number of the last repeat.
    last_seq: u64,
    /// The opening alert's document, for the summary.
    doc: serde_json::Value,
}

/// Throttling state of one sink (saved with its cursor, so a restart
/// loses no count).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Throttle {
    windows: Vec<Window>,
    #[serde(skip)]
    index: HashMap<Key, usize>,
}

impl Throttle {
    fn reindex(&mut self) {
        self.index = self
            .windows
            .iter()
            .enumerate()
            .map(|(i, w)| (w.key.clone(), i))
            .collect();
    }

    /// Open windows (for the cursor file).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Passes `alerts` through: violations repeated within `window` of the
    /// one that opened it are folded (counted in the window); a repeat
    /// after the window closes releases the summary first. Returns what to
    /// send, in order, and how many were folded.
    pub fn filter(&mut self, alerts: Vec<Alert>, window: Duration) -> (Vec<Alert>, u64) {
        if self.index.len() != self.windows.len() {
            self.reindex();
        }
        let span = jiff::SignedDuration::try_from(window).unwrap_or(jiff::SignedDuration::MAX);
        let mut out = Vec::with_capacity(alerts.len());
        let mut folded = 0;
        for a in alerts {
            if a.kind != AlertKind::Violation {
                out.push(a);
                continue;
            }
            let key = Key::of(&a);
            match self.index.get(&key).copied() {
                Some(i)
                    if a.time
                        < self.windows[i]
                            .opened
                            .saturating_add(span)
                            .unwrap_or(Timestamp::MAX) =>
                {
                    let w = &mut self.windows[i];
                    w.repeats += 1;
                    w.first.get_or_insert(a.time);
                    w.last = Some(a.time);
                    w.last_seq = a.seq;
                    folded += 1;
                }
                Some(i) => {
                    if let Some(summary) = summary(&self.windows[i]) {
                        out.push(summary);
                    }
                    self.windows[i] = Window::open(key, &a);
                    out.push(a);
                }
                None => {
                    self.index.insert(key.clone(), self.windows.len());
                    self.windows.push(Window::open(key, &a));
                    out.push(a);
                }
            }
        }
        (out, folded)
    }

    /// Closes windows older than `window` at `now`: their summaries, in
    /// the order the windows opened.
    pub fn expire(&mut self, now: Timestamp, window: Duration) -> Vec<Alert> {
        let span = jiff::SignedDuration::try_from(window).unwrap_or(jiff::SignedDuration::MAX);
        let mut out = Vec::new();
        let before = self.windows.len();
        self.windows.retain(|w| {
            let open = now < w.opened.saturating_add(span).unwrap_or(Timestamp::MAX);
            if !open && let Some(s) = summary(w) {
                out.push(s);
            }
            open
        });
        if self.windows.len() != before {
            self.reindex();
        }
        out
    }
}

impl Window {
    fn open(key: Key, a: &Alert) -> Window {
        Window {
            key,
            opened: a.time,
            repeats: 0,
            first: None,
            last: None,
            last_seq: a.seq,
            doc: a.doc.clone(),
        }
    }
}

/// The alert that reports a window's repeats, if it had any: the opening
/// alert's document, with the count and the span of the repeats, dated
/// at the last repeat.
fn summary(w: &Window) -> Option<Alert> {
    let (first, last) = (w.first?, w.last?);
    Some(Alert {
        kind: AlertKind::Violation,
        seq: w.last_seq,
        time: last,
        doc: w.doc.clone(),
        checkpoint: None,
        count: w.repeats,
        span: Some((first, last)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violation(seq: u64, secs: i64, dst: &str) -> Alert {
        let time = Timestamp::from_second(1_795_000_000 + secs).unwrap();
        let doc = serde_json::json!({
            "@timestamp": time.to_string(),
            "event": {"dataset": "residency.flow"},
            "destination": {"ip": dst, "port": 443},
            "rule": {"id": "3"},
            "residency": {"verdict": "blocked", "workload": {"name": "crm"}},
        });
        Alert {
            kind: AlertKind::Violation,
            seq,
            time,
            doc,
            checkpoint: None,
            count: 1,
            span: None,
        }
    }

    #[test]
    fn a_storm_becomes_one_alert_and_one_count() {
        let mut t = Throttle::default();
        let storm: Vec<Alert> = (0..10_000)
            .map(|i| violation(i + 1, 0, "203.0.113.7"))
            .collect();
        let (out, folded) = t.filter(storm, Duration::from_mins(1));
        assert_eq!(out.len(), 1, "the first goes out at once");
        assert_eq!(out[0].seq, 1);
        assert_eq!(folded, 9_999);
        // Another destination is another alert.
        let (out, _) = t.filter(
            vec![violation(10_001, 1, "198.51.100.1")],
            Duration::from_mins(1),
        );
        assert_eq!(out.len(), 1);
        // The window closes: one summary with the count.
        let now = Timestamp::from_second(1_795_000_000 + 61).unwrap();
        let summaries = t.expire(now, Duration::from_mins(1));
        assert_eq!(summaries.len(), 1, "only the window with repeats reports");
        assert_eq!(summaries[0].count, 9_999);
        assert_eq!(summaries[0].seq, 10_000);
        assert!(t.is_empty());
    }

    #[test]
    fn a_repeat_after_the_window_releases_the_summary_first() {
        let mut t = Throttle::default();
        let w = Duration::from_secs(10);
        let (out, _) = t.filter(
            vec![
                violation(1, 0, "203.0.113.7"),
                violation(2, 5, "203.0.113.7"),
                violation(3, 11, "203.0.113.7"),
            ],
            w,
        );
        let got: Vec<(u64, u64, bool)> = out
            .iter()
            .map(|a| (a.seq, a.count, a.span.is_some()))
            .collect();
        // The opening alert, the summary of the one repeat, the new alert.
        assert_eq!(got, [(1, 1, false), (2, 1, true), (3, 1, false)]);
    }

    #[test]
    fn state_survives_a_save() {
        let mut t = Throttle::default();
        let _ = t.filter(
            (0..5).map(|i| violation(i + 1, 0, "203.0.113.7")).collect(),
            Duration::from_mins(1),
        );
        let saved = serde_json::to_string(&t).unwrap();
        let mut back: Throttle = serde_json::from_str(&saved).unwrap();
        let (out, folded) =
            back.filter(vec![violation(6, 1, "203.0.113.7")], Duration::from_mins(1));
        assert!(out.is_empty());
        assert_eq!(folded, 1);
        let s = back.expire(
            Timestamp::from_second(1_795_000_000 + 120).unwrap(),
            Duration::from_mins(1),
        );
        assert_eq!(s[0].count, 5);
    }
}
