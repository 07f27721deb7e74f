// SPDX-License-Identifier: GPL-2.0

//! A wait queue head that virtqueue completion callbacks wake.

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
