// SPDX-License-Identifier: GPL-2.0

//! A wait queue head that virtqueue completion callbacks wake.
//!
//! Why not 7.3's `kernel::sync::CondVar`: its waits release the lock whose
//! guard they are given and sleep until notified, while a driver may wait
//! for a buffer with its own lock held throughout (the queue and what the
//! buffer names are under it, and nothing may change them meanwhile), and
//! the wait re-checks the ring itself on every wakeup
//! (`wait_event_timeout` with `virtqueue_get_buf` as its condition), so a
//! completion that comes before the sleep is never missed. 7.3 has no
//! binding for `wait_event_timeout`; the C helper is the whole wait.

use kernel::prelude::*;
use kernel::types::Opaque;

use crate::bindings;

/// A wait queue head that completion callbacks wake.
#[pin_data]
pub(crate) struct WaitQueue {
    #[pin]
    pub(super) head: Opaque<bindings::wait_queue_head>,
}

// SAFETY: a wait queue head is designed for concurrent use from any context.
unsafe impl Sync for WaitQueue {}
// SAFETY: it holds no thread-bound state.
unsafe impl Send for WaitQueue {}

impl WaitQueue {
    /// An initialiser for an empty wait queue.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            head <- Opaque::ffi_init(|slot| {
                // SAFETY: `slot` is valid, pinned memory for a wait queue head.
                unsafe { bindings::vbrs_init_waitqueue_head(slot) }
            }),
        })
    }

    /// Wakes every sleeper; callable from interrupt context.
    pub(crate) fn wake_up(&self) {
        // SAFETY: the head was initialised by `new`.
        unsafe { bindings::vbrs_wake_up(self.head.get()) }
    }
}
