// SPDX-License-Identifier: GPL-2.0

//! A memory shrinker: reclaim asks the owner for pages it can give back.

use core::marker::PhantomData;

use kernel::ffi;
use kernel::prelude::*;

use super::registration::{
    Kind,
    Registration,
    RegistrationOwner, //
};
use crate::bindings;

/// An owner reclaim asks for pages.
pub(crate) trait ShrinkerHandler: RegistrationOwner {
    /// Pages the owner could free.
    fn count(&self) -> u64;
    /// Frees up to `pages` pages and returns how many it freed.
    fn scan(&self, pages: u64) -> u64;
}

/// A shrinker (`shrinker_alloc`); registering takes its name. The
/// registration keeps the pointer to the shrinker the kernel allocated,
/// whose `private_data` points back to that pointer.
pub(crate) struct Shrinker<T>(PhantomData<T>);

/// `T`'s shrinker while it lives.
pub(crate) type ShrinkerRegistration<T> = Registration<Shrinker<T>>;

/// The owner of the shrinker `shrinker`.
///
/// # Safety
///
/// `shrinker` was registered by a live [`ShrinkerRegistration<T>`], and
/// the reference is used only during the callback.
unsafe fn owner<'a, T: ShrinkerHandler>(shrinker: *mut bindings::shrinker) -> &'a T {
    // SAFETY: `private_data` is the registration's descriptor (`register`),
    // which lives while the shrinker is registered (the caller's contract).
    unsafe { ShrinkerRegistration::<T>::owner((*shrinker).private_data.cast()) }
}

/// Shrinker count callback.
///
/// # Safety
///
/// Called by reclaim with a shrinker registered by a live
/// [`ShrinkerRegistration<T>`].
unsafe extern "C" fn shrinker_count<T: ShrinkerHandler>(
    shrinker: *mut bindings::shrinker,
    _sc: *mut bindings::shrink_control,
) -> ffi::c_ulong {
    // SAFETY: the caller's contract.
    unsafe { owner::<T>(shrinker) }.count() as ffi::c_ulong
}

/// Shrinker scan callback.
///
/// # Safety
///
/// Called by reclaim with a shrinker registered by a live
/// [`ShrinkerRegistration<T>`] and a valid shrink control.
unsafe extern "C" fn shrinker_scan<T: ShrinkerHandler>(
    shrinker: *mut bindings::shrinker,
    sc: *mut bindings::shrink_control,
) -> ffi::c_ulong {
    // SAFETY: the caller's contract; `sc` is valid for the call.
    let (owner, wanted) = unsafe { (owner::<T>(shrinker), (*sc).nr_to_scan as u64) };
    owner.scan(wanted) as ffi::c_ulong
}

// SAFETY: reclaim calls back only through the shrinker registered here,
// whose `private_data` is the descriptor, and `shrinker_free` unregisters
// it and waits for callbacks in progress.
unsafe impl<T: ShrinkerHandler> Kind for Shrinker<T> {
    type Owner = T;
    /// The shrinker the kernel allocated.
    type Raw = *mut bindings::shrinker;
    /// The shrinker's name.
    type Args = &'static CStr;

    unsafe fn register(raw: *mut *mut bindings::shrinker, name: &'static CStr) -> Result {
        // SAFETY: `name` is a valid C string; "%s" takes it as the one
        // variadic argument.
        let shrinker =
            unsafe { bindings::shrinker_alloc(0, c"%s".as_char_ptr(), name.as_char_ptr()) };
        if shrinker.is_null() {
            return Err(ENOMEM);
        }
        // SAFETY: `raw` is pinned memory that stays until `unregister` (the
        // caller's contract); `shrinker` is freshly allocated and not yet
        // registered.
        unsafe {
            raw.write(shrinker);
            (*shrinker).count_objects = Some(shrinker_count::<T>);
            (*shrinker).scan_objects = Some(shrinker_scan::<T>);
            (*shrinker).private_data = raw.cast();
            bindings::shrinker_register(shrinker);
        }
        Ok(())
    }

    unsafe fn unregister(raw: *mut *mut bindings::shrinker) {
        // SAFETY: `register` stored the shrinker it registered (the caller's
        // contract); it is freed once, here.
        unsafe { bindings::shrinker_free(*raw) };
    }
}
