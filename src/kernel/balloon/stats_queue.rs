// SPDX-License-Identifier: GPL-2.0

//! The stats queue: the host hands the buffer back when it wants fresh
//! figures.

use balloon_logic::stats;
use kernel::prelude::*;
use kernel::sync::atomic::Relaxed;

use super::{
    Balloon,
    WAKE_STATS, //
};
use crate::mm;
use crate::virtio::Virtqueue;

/// The stats queue; it owns the buffer the host holds between requests.
pub(super) struct StatsState {
    pub(super) queue: Option<Virtqueue>,
}

impl Balloon {
    /// Fills the stats buffer with fresh figures.
    pub(super) fn fill_stats(&self, buffer: &mut [u8; stats::BUFFER_SIZE]) -> usize {
        let little_endian = self.features.little_endian();
        mm::memory_snapshot().encode(mm::PAGE_SHIFT, little_endian, buffer)
    }

    /// The stats work: the host returned the stats buffer to ask for fresh
    /// figures; refill it and hand it back.
    pub(super) fn send_stats(&self) {
        if self.work_started(WAKE_STATS) {
            self.refill_stats();
        }
        self.work_finished();
    }

    /// Hands the host a fresh stats buffer if it gave the last one back.
    pub(super) fn refill_stats(&self) {
        let mut guard = self.stats.lock();
        let Some(queue) = guard.queue.as_mut() else {
            return;
        };
        if !queue.get_buf() {
            return;
        }
        let mut buffer = [0u8; stats::BUFFER_SIZE];
        let len = self.fill_stats(&mut buffer);
        if let Err(err) = queue.send(&buffer[..len]) {
            dev_warn!(self.device(), "cannot queue the stats buffer: {:?}\n", err);
            return;
        }
        queue.kick();
        self.view.stats_updates.fetch_add(1, Relaxed);
    }
}
