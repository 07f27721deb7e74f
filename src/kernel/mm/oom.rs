// SPDX-License-Identifier: GPL-2.0

//! A registration with the OOM notifier chain.

use core::marker::PhantomData;

use kernel::error::to_result;
use kernel::ffi;
use kernel::prelude::*;

use super::registration::{
    Kind,
    Registration,
    RegistrationOwner, //
};
use crate::bindings;

/// An owner the OOM notifier chain calls when the guest runs out of memory.
pub(crate) trait OomHandler: RegistrationOwner {
    /// The guest is out of memory: free what can be freed, return the
    /// number of pages freed (process context, may sleep).
    fn out_of_memory(&self) -> u64;
}

/// A place on the OOM notifier chain, called before the OOM killer picks a
/// victim.
pub(crate) struct OomNotifier<T>(PhantomData<T>);

/// `T`'s place on the OOM notifier chain while it lives.
pub(crate) type OomRegistration<T> = Registration<OomNotifier<T>>;

/// Notifier callback: forwards to the owner.
///
/// # Safety
///
/// Called by the OOM notifier chain with the block of a live
/// [`OomRegistration<T>`] and a pointer to the freed-pages counter.
unsafe extern "C" fn oom_callback<T: OomHandler>(
    block: *mut bindings::notifier_block,
    _event: ffi::c_ulong,
    freed: *mut ffi::c_void,
) -> i32 {
    // SAFETY: `block` is the descriptor of a live registration, which the
    // chain calls only until the registration's drop unregisters it.
    let owner = unsafe { OomRegistration::<T>::owner(block) };
    let pages = owner.out_of_memory();
    // SAFETY: `freed` points to the caller's `unsigned long` counter.
    unsafe {
        let freed = freed.cast::<ffi::c_ulong>();
        *freed = (*freed).saturating_add(pages as ffi::c_ulong);
    }
    bindings::VBRS_NOTIFY_OK
}

// SAFETY: the chain calls back only through the registered block, and
// `unregister_oom_notifier` waits for a callback in progress (a blocking
// notifier chain).
unsafe impl<T: OomHandler> Kind for OomNotifier<T> {
    type Owner = T;
    type Raw = bindings::notifier_block;
    type Args = ();

    unsafe fn register(block: *mut bindings::notifier_block, (): ()) -> Result {
        let nb = bindings::notifier_block {
            notifier_call: Some(oom_callback::<T>),
            // The C driver's priority, among the OOM notifiers.
            priority: 80,
            ..Default::default()
        };
        // SAFETY: `block` is pinned memory for the block that stays until
        // `unregister` (the caller's contract).
        unsafe {
            block.write(nb);
            to_result(bindings::register_oom_notifier(block))
        }
    }

    unsafe fn unregister(block: *mut bindings::notifier_block) {
        // SAFETY: registered by `register` (the caller's contract).
        unsafe { bindings::unregister_oom_notifier(block) };
    }
}
