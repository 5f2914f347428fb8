//! systemd's watchdog (`WatchdogSec=`), fed by the pipeline's progress.
//!
//! The ping (`WATCHDOG=1`) is a claim that the daemon is doing its job, so
//! it is not sent from a timer of its own: the ring reader sends it after a
//! pass over the kernel's ring, and only while the writer has also come
//! round its loop recently. A reader or writer that hangs (a deadlock, a
//! sink that never returns, a stopped process) stops the pings, and systemd
//! restarts the service; the pinned programs keep deciding meanwhile.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tracing::{info, warn};

/// When a loop last came round: shared between the writer, which beats,
/// and the reader's [`Watchdog`], which looks.
#[derive(Debug)]
pub struct Heartbeat {
    base: Instant,
    /// Milliseconds from `base` to the last beat.
    last_ms: AtomicU64,
}

impl Heartbeat {
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Heartbeat {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    /// The loop came round.
    pub fn beat(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long ago the last beat was.
    #[must_use]
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

/// Pings systemd's watchdog at half the interval it asked for, when the
/// pipeline has made progress.
#[derive(Debug)]
pub struct Watchdog {
    /// Half of `WATCHDOG_USEC`, as `sd_watchdog_enabled(3)` advises.
    every: Duration,
    /// How recent the writer's beat must be: `every` plus the writer's own
    /// idle wake-up period, so an idle writer always counts as alive.
    writer_slack: Duration,
    writer: Arc<Heartbeat>,
    next: Instant,
    /// The writer was late at the last due ping (said once per episode).
    writer_late: bool,
}

impl Watchdog {
    /// The watchdog systemd set up for this process (`WATCHDOG_USEC`, and
    /// `WATCHDOG_PID` naming this process), if any.
    #[must_use]
    pub fn from_env(writer: Arc<Heartbeat>, writer_idle: Duration) -> Option<Self> {
        let timeout = sd_notify::watchdog_enabled()?;
        info!(?timeout, "systemd watchdog enabled");
        Some(Self::new(timeout, writer, writer_idle))
    }

    /// A watchdog for `timeout`, the writer beating at least every
    /// `writer_idle` when it has nothing to do.
    #[must_use]
    pub fn new(timeout: Duration, writer: Arc<Heartbeat>, writer_idle: Duration) -> Self {
        let every = timeout / 2;
        Watchdog {
            every,
            writer_slack: every + writer_idle,
            writer,
            next: Instant::now(),
            writer_late: false,
        }
    }

    /// How often [`Watchdog::progress`] should at least be called.
    #[must_use]
    pub fn every(&self) -> Duration {
        self.every
    }

    /// The reader made a pass over the ring: ping if one is due and the
    /// writer is alive too. Returns whether it pinged.
    pub fn progress(&mut self) -> bool {
        let now = Instant::now();
        if now < self.next {
            return false;
        }
        let age = self.writer.age();
        if age > self.writer_slack {
            if !self.writer_late {
                warn!(
                    ?age,
                    "the record writer has not come round for a while; not telling systemd we are alive"
                );
                self.writer_late = true;
            }
            return false;
        }
        self.writer_late = false;
        if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]) {
            warn!("cannot ping systemd's watchdog: {e}");
        }
        self.next = now + self.every;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_ages_until_the_next_beat() {
        let beat = Heartbeat::new();
        beat.beat();
        std::thread::sleep(Duration::from_millis(30));
        assert!(beat.age() >= Duration::from_millis(30));
        beat.beat();
        assert!(beat.age() < Duration::from_millis(30));
    }

    #[test]
    fn pings_at_half_the_timeout_and_only_while_the_writer_comes_round() {
        // Without NOTIFY_SOCKET the ping itself goes nowhere; what is
        // tested is when the watchdog decides to send one.
        let beat = Heartbeat::new();
        beat.beat();
        let mut dog = Watchdog::new(
            Duration::from_millis(600),
            beat.clone(),
            Duration::from_millis(20),
        );
        assert_eq!(dog.every(), Duration::from_millis(300));
        assert!(dog.progress(), "the first pass pings");
        assert!(!dog.progress(), "not again before half the timeout");
        std::thread::sleep(Duration::from_millis(310));
        beat.beat();
        assert!(dog.progress(), "due, and the writer beat");
        // The writer stops coming round: no more pings, however often the
        // reader passes, so systemd's timeout runs out.
        std::thread::sleep(Duration::from_millis(450));
        assert!(!dog.progress());
        assert!(!dog.progress());
        beat.beat();
        assert!(dog.progress(), "the writer is back");
    }
}
