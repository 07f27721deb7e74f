// SPDX-License-Identifier: GPL-2.0

//! A memory shrinker: reclaim asks the owner for pages it can give back.

use core::marker::PhantomData;

use kernel::ffi;
use kernel::prelude::*;
use kernel::sync::atomic::{
    Atomic,
    Full,
    Release, //
};

use super::registration::{
    Embedded,
    Embeds,
    RegistrationState, //
};
use crate::bindings;

/// The owner of a [`Shrinker`], which reclaim asks for pages.
///
/// # Safety
///
/// `Self` is pinned once initialised, and unregisters its `Shrinker<Self>`
/// (the field `Embeds` names, the only one that can be registered) before
/// anything else of it is dropped.
pub(crate) unsafe trait ShrinkerHandler: Embeds<Shrinker<Self>> + Sync {
    /// Pages the owner could free.
    fn count(&self) -> u64;
    /// Frees up to `pages` pages and returns how many it freed.
    fn scan(&self, pages: u64) -> u64;
}

/// A memory shrinker: reclaim asks the owner for pages it can give back.
///
/// # Invariants
///
/// `shrinker` is null or a shrinker from `shrinker_alloc` whose
/// `private_data` is the pinned owner, registered until `unregister`.
#[pin_data(PinnedDrop)]
pub(crate) struct Shrinker<T> {
    shrinker: Atomic<*mut bindings::shrinker>,
    registration: RegistrationState,
    _owner: PhantomData<T>,
}

// SAFETY: the pointer is only changed atomically, and the shrinker's
// callbacks call the owner, which is `Sync`.
unsafe impl<T> Sync for Shrinker<T> {}
// SAFETY: same.
unsafe impl<T> Send for Shrinker<T> {}

/// Shrinker count callback.
///
/// # Safety
///
/// Called by reclaim with a shrinker registered by `Embedded::register`.
unsafe extern "C" fn shrinker_count<T: ShrinkerHandler>(
    shrinker: *mut bindings::shrinker,
    _sc: *mut bindings::shrink_control,
) -> ffi::c_ulong {
    // SAFETY: `private_data` is the pinned owner (type invariant).
    let owner = unsafe { &*(*shrinker).private_data.cast::<T>() };
    owner.count() as ffi::c_ulong
}

/// Shrinker scan callback.
///
/// # Safety
///
/// Called by reclaim with a shrinker registered by [`Shrinker::register`]
/// and a valid shrink control.
unsafe extern "C" fn shrinker_scan<T: ShrinkerHandler>(
    shrinker: *mut bindings::shrinker,
    sc: *mut bindings::shrink_control,
) -> ffi::c_ulong {
    // SAFETY: `private_data` is the pinned owner (type invariant); `sc` is
    // valid for the call.
    let (owner, wanted) = unsafe {
        (
            &*(*shrinker).private_data.cast::<T>(),
            (*sc).nr_to_scan as u64,
        )
    };
    owner.scan(wanted) as ffi::c_ulong
}

impl<T: ShrinkerHandler> Shrinker<T> {
    /// An initialiser for an unregistered shrinker.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            shrinker: Atomic::new(core::ptr::null_mut()),
            registration: RegistrationState::new(),
            _owner: PhantomData,
        })
    }
}

impl<T: ShrinkerHandler> Embedded<'_, T, Shrinker<T>> {
    /// Allocates and registers the shrinker under `name`, unless already
    /// registered.
    pub(crate) fn register(&self, name: &CStr) -> Result {
        self.registration.register(|| {
            // SAFETY: `name` is a valid C string; "%s" takes it as the one
            // variadic argument.
            let shrinker =
                unsafe { bindings::shrinker_alloc(0, c"%s".as_char_ptr(), name.as_char_ptr()) };
            if shrinker.is_null() {
                return Err(ENOMEM);
            }
            // The pinned owner (`ShrinkerHandler` contract), which
            // unregisters before it goes.
            let owner = core::ptr::from_ref(self.owner()).cast_mut();
            // SAFETY: `shrinker` is freshly allocated and not yet registered;
            // INVARIANT: its `private_data` is the pinned owner.
            unsafe {
                (*shrinker).count_objects = Some(shrinker_count::<T>);
                (*shrinker).scan_objects = Some(shrinker_scan::<T>);
                (*shrinker).private_data = owner.cast();
                bindings::shrinker_register(shrinker);
            }
            self.shrinker.store(shrinker, Release);
            Ok(())
        })
    }
}

impl<T> Shrinker<T> {
    /// Unregisters and frees the shrinker; waits for running callbacks.
    pub(crate) fn unregister(&self) {
        self.registration.unregister(|| {
            let shrinker = self.shrinker.xchg(core::ptr::null_mut(), Full);
            if !shrinker.is_null() {
                // SAFETY: allocated and registered by `register`; taken out
                // of `self`, so freed once.
                unsafe { bindings::shrinker_free(shrinker) };
            }
        });
    }
}

#[pinned_drop]
impl<T> PinnedDrop for Shrinker<T> {
    fn drop(self: Pin<&mut Self>) {
        self.unregister();
    }
}
