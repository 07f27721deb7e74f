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
use crate::virtio::{
    Readable,
    Virtqueue, //
};

/// The stats buffer: the tagged figures, in the device's byte order.
#[derive(Zeroable)]
pub(super) struct StatsBuffer {
    bytes: [u8; stats::BUFFER_SIZE],
    len: usize,
}

impl Readable for StatsBuffer {
    fn bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }
}

/// The stats queue, and the stats buffer while the host does not hold it.
pub(super) struct StatsState {
    pub(super) queue: Option<Virtqueue<KBox<StatsBuffer>>>,
    pub(super) buffer: Option<KBox<StatsBuffer>>,
}

impl Balloon {
    /// Fills `buffer` with fresh figures.
    pub(super) fn fill_stats(&self, buffer: &mut StatsBuffer) {
        let little_endian = self.features.little_endian();
        buffer.len = mm::memory_snapshot().encode(mm::PAGE_SHIFT, little_endian, &mut buffer.bytes);
    }

    /// The stats work: the host returned the stats buffer to ask for fresh
    /// figures; refill it and hand it back.
    pub(super) fn send_stats(&self) {
        if self.work_started(WAKE_STATS) {
            self.refill_stats();
        }
        self.work_finished();
    }

    /// Hands the host a fresh stats buffer, once it gave the last one
    /// back (or at start, the first).
    pub(super) fn refill_stats(&self) {
        let mut guard = self.stats.lock();
        let StatsState { queue, buffer } = &mut *guard;
        let Some(queue) = queue.as_mut() else {
            return;
        };
        if let Some((returned, _)) = queue.get_buf() {
            *buffer = Some(returned);
        }
        // The host still holds it: it has not asked for fresh figures.
        let Some(mut fresh) = buffer.take() else {
            return;
        };
        self.fill_stats(&mut fresh);
        if let Err((err, fresh)) = queue.add_outbuf(fresh) {
            dev_warn!(self.device(), "cannot queue the stats buffer: {:?}\n", err);
            *buffer = Some(fresh);
            return;
        }
        queue.kick();
        self.view.stats_updates.fetch_add(1, Relaxed);
    }
}
