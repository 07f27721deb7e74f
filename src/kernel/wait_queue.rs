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

use kernel::bindings;
use kernel::sync::LockClassKey;
use kernel::task::TASK_NORMAL;

/// A wait queue head that completion callbacks wake.
#[pin_data]
pub(crate) struct WaitQueue {
    #[pin]
    head: Opaque<bindings::wait_queue_head>,
}

// SAFETY: a wait queue head is designed for concurrent use from any context.
unsafe impl Sync for WaitQueue {}
// SAFETY: it holds no thread-bound state.
unsafe impl Send for WaitQueue {}

/// An initialiser for an empty [`WaitQueue`] named after where it is
/// made, with a lock class of its own (as `new_condvar!` does).
#[macro_export]
macro_rules! new_wait_queue {
    ($name:literal) => {
        $crate::wait_queue::WaitQueue::new(
            ::kernel::c_str!($name),
            ::kernel::static_lock_class!(),
        )
    };
}

impl WaitQueue {
    /// An initialiser for an empty wait queue; see [`new_wait_queue!`].
    pub(crate) fn new(name: &'static CStr, key: Pin<&'static LockClassKey>) -> impl PinInit<Self> {
        pin_init!(Self {
            head <- Opaque::ffi_init(|slot| {
                // SAFETY: `slot` is valid, pinned memory for a wait queue
                // head; `name` and `key` are static.
                unsafe { bindings::__init_waitqueue_head(slot, name.as_char_ptr(), key.as_ptr()) }
            }),
        })
    }

    /// The wait queue head, for the C helpers that wait on it.
    pub(crate) fn as_raw(&self) -> *mut bindings::wait_queue_head {
        self.head.get()
    }

    /// Wakes every sleeper (the `wake_up` macro); callable from interrupt
    /// context.
    pub(crate) fn wake_up(&self) {
        // SAFETY: the head was initialised by `new`.
        unsafe {
            bindings::__wake_up(self.head.get(), TASK_NORMAL, 1, core::ptr::null_mut());
        }
    }
}
