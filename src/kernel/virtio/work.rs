// SPDX-License-Identifier: GPL-2.0

//! Work items on the freezable system workqueue, embedded in their owner.

use core::marker::PhantomData;

use kernel::prelude::*;
use kernel::types::Opaque;

use crate::bindings;

/// A work item on the freezable system workqueue, optionally delayed.
///
/// The owner `T` embeds it and names it with [`impl_has_delayed_work!`];
/// `ID` tells apart several work items of one owner.
#[pin_data]
pub(crate) struct DelayedWork<T, const ID: u64 = 0> {
    #[pin]
    work: Opaque<bindings::delayed_work>,
    _owner: PhantomData<T>,
}

// SAFETY: the C work item is made for use from any thread.
unsafe impl<T, const ID: u64> Sync for DelayedWork<T, ID> {}
// SAFETY: same.
unsafe impl<T, const ID: u64> Send for DelayedWork<T, ID> {}

/// An owner of a [`DelayedWork`], run when the work fires.
///
/// # Safety
///
/// `OFFSET` must be the byte offset of a `DelayedWork<Self, ID>` field in
/// `Self`, and the owner must be pinned and outlive every queued run
/// (cancel in its teardown).
pub(crate) unsafe trait HasDelayedWork<const ID: u64>: Sized + Sync {
    /// Offset of the `DelayedWork<Self, ID>` field.
    const OFFSET: usize;
    /// The work itself (process context, may sleep).
    fn run(&self);
}

/// Implements [`HasDelayedWork`] for `$owner` whose `$field` is its work item.
#[macro_export]
macro_rules! impl_has_delayed_work {
    ($owner:ty, $field:ident, $id:literal, $run:path) => {
        // SAFETY: the offset is computed by the compiler for this field,
        // whose type is `DelayedWork<$owner, $id>`.
        unsafe impl $crate::virtio::HasDelayedWork<$id> for $owner {
            const OFFSET: usize = ::core::mem::offset_of!($owner, $field);
            fn run(&self) {
                $run(self)
            }
        }
    };
}

/// Runs the owner's work.
///
/// # Safety
///
/// Called by the workqueue with the `work_struct` of a [`DelayedWork<T>`].
unsafe extern "C" fn work_callback<T: HasDelayedWork<ID>, const ID: u64>(
    work: *mut bindings::work_struct,
) {
    // SAFETY: `work` is the `work` of a `delayed_work` embedded at
    // `T::OFFSET` in a live, pinned `T` (trait contract).
    unsafe {
        let dwork = bindings::vbrs_to_delayed_work(work);
        let owner = dwork.cast::<u8>().sub(T::OFFSET).cast::<T>();
        (*owner).run();
    }
}

impl<T: HasDelayedWork<ID>, const ID: u64> DelayedWork<T, ID> {
    /// An initialiser for an idle work item.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            work <- Opaque::ffi_init(|slot| {
                // SAFETY: `slot` is valid pinned memory for a delayed work.
                unsafe { bindings::vbrs_init_delayed_work(slot, Some(work_callback::<T, ID>)) }
            }),
            _owner: PhantomData,
        })
    }

    /// Queues the work on the freezable system workqueue after `delay_ms`;
    /// does nothing if it is already queued.
    pub(crate) fn queue(&self, delay_ms: u32) {
        let delay = kernel::time::msecs_to_jiffies(delay_ms);
        // SAFETY: the work was initialised by `new`; the owner outlives it
        // (trait contract).
        unsafe { bindings::vbrs_queue_freezable_delayed_work(self.work.get(), delay) };
    }

    /// Runs the work as soon as possible, bringing a delayed run forward.
    pub(crate) fn run_now(&self) {
        // SAFETY: the work was initialised by `new`; the owner outlives it.
        unsafe { bindings::vbrs_mod_freezable_delayed_work(self.work.get(), 0) };
    }

    /// Cancels the work and waits for a running instance, including one that
    /// re-queues itself.
    pub(crate) fn cancel_sync(&self) {
        // SAFETY: the work was initialised by `new`.
        unsafe { bindings::cancel_delayed_work_sync(self.work.get()) };
    }
}
