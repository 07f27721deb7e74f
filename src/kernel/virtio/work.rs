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
/// [`HasDelayedWork::work_container_of`] must return the owner that embeds
/// the given work item, and the owner must be pinned and outlive every
/// queued run (cancel in its teardown). [`impl_has_delayed_work!`] does it.
pub(crate) unsafe trait HasDelayedWork<const ID: u64>: Sized + Sync {
    /// The owner whose `DelayedWork<Self, ID>` field `work` points to.
    ///
    /// # Safety
    ///
    /// `work` must point to that field of a live `Self`.
    unsafe fn work_container_of(work: *mut DelayedWork<Self, ID>) -> *mut Self;
    /// The work itself (process context, may sleep).
    fn run(&self);
}

/// Implements [`HasDelayedWork`] for `$owner` whose `$field` is its work item.
#[macro_export]
macro_rules! impl_has_delayed_work {
    ($owner:ty, $field:ident, $id:literal, $run:path) => {
        // SAFETY: `work_container_of` is `container_of!` on this field,
        // whose type is `DelayedWork<$owner, $id>`.
        unsafe impl $crate::virtio::HasDelayedWork<$id> for $owner {
            unsafe fn work_container_of(
                work: *mut $crate::virtio::DelayedWork<Self, $id>,
            ) -> *mut Self {
                // SAFETY: `work` points to the `$field` of a live `$owner`
                // (the caller's contract).
                unsafe { ::kernel::container_of!(work, $owner, $field) }
            }
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
    // SAFETY: `work` is the `work` of the `delayed_work` wrapped (as
    // `work`, `Opaque` being `repr(transparent)`) by a `DelayedWork<T, ID>`
    // field of a live, pinned `T` (trait contract).
    unsafe {
        let dwork = bindings::vbrs_to_delayed_work(work).cast::<Opaque<bindings::delayed_work>>();
        let item = kernel::container_of!(dwork, DelayedWork<T, ID>, work);
        (*T::work_container_of(item)).run();
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
