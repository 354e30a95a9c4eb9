//! Rate limit for the engine's warnings about guest or host input
//! (malformed messages, refused OPENs, descriptor shortages): at most
//! [`LOG_BURST`] lines a second per kind, then one line saying how many
//! were suppressed. Owns no counters; the stats count every event.

use std::time::Instant;

/// Log lines per second per kind.
const LOG_BURST: u32 = 10;

/// One kind's window: lines allowed so far this second.
#[derive(Debug)]
pub(super) struct LogLimit {
    what: &'static str,
    window: Instant,
    count: u32,
    suppressed: u64,
}

impl LogLimit {
    pub(super) fn new(what: &'static str) -> LogLimit {
        LogLimit {
            what,
            window: Instant::now(),
            count: 0,
            suppressed: 0,
        }
    }

    pub(super) fn allow(&mut self) -> bool {
        if self.window.elapsed().as_secs() >= 1 {
            if self.suppressed > 0 {
                log::warn!("{} more {} messages suppressed", self.suppressed, self.what);
            }
            self.window = Instant::now();
            self.count = 0;
            self.suppressed = 0;
        }
        self.count = self.count.saturating_add(1);
        if self.count <= LOG_BURST {
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}
