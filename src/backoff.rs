// SPDX-License-Identifier: GPL-2.0

//! The back-off schedule used when the guest cannot give more pages.

/// First delay after a failed inflate, in milliseconds (the C driver's
/// fixed `msleep(200)`).
pub const INITIAL_DELAY_MS: u32 = 200;

/// Longest delay between two attempts, in milliseconds.
pub const MAX_DELAY_MS: u32 = 10_000;

/// Exponential, capped back-off with a rate limit for its log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// A back-off with no failures recorded.
    pub const fn new() -> Self {
        Self { failures: 0 }
    }

    /// Records a failure and returns how long to wait before the next try.
    pub fn fail(&mut self) -> u32 {
        self.failures = self.failures.saturating_add(1);
        self.delay_ms()
    }

    /// Forgets the failures after an attempt that made progress.
    pub fn succeed(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    pub const fn failures(&self) -> u32 {
        self.failures
    }

    /// The current delay: 200 ms doubling per failure, at most [`MAX_DELAY_MS`].
    pub fn delay_ms(&self) -> u32 {
        if self.failures == 0 {
            return 0;
        }
        let doublings = (self.failures - 1).min(31);
        INITIAL_DELAY_MS
            .checked_shl(doublings)
            .filter(|d| *d / INITIAL_DELAY_MS == 1 << doublings)
            .map_or(MAX_DELAY_MS, |d| d.min(MAX_DELAY_MS))
    }
}
