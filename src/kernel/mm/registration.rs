// SPDX-License-Identifier: GPL-2.0

//! Whether a callback registration with an mm subsystem (the OOM notifier
//! chain, page reporting, a shrinker) is in place.

use kernel::prelude::*;
use kernel::sync::atomic::{
    Atomic,
    Full,
    Release, //
};

const UNREGISTERED: i32 = 0;
const CHANGING: i32 = 1;
const REGISTERED: i32 = 2;

/// The state of one registration: registering and unregistering are
/// idempotent (a compare-and-swap decides who does the work) and never
/// overlap.
pub(super) struct RegistrationState(Atomic<i32>);

impl RegistrationState {
    /// Not registered.
    pub(super) const fn new() -> Self {
        Self(Atomic::new(UNREGISTERED))
    }

    /// Runs `register` if nothing is registered or being changed; `Ok`
    /// without calling it otherwise.
    pub(super) fn register(&self, register: impl FnOnce() -> Result) -> Result {
        if self.0.cmpxchg(UNREGISTERED, CHANGING, Full).is_err() {
            return Ok(());
        }
        let result = register();
        let state = if result.is_ok() {
            REGISTERED
        } else {
            UNREGISTERED
        };
        self.0.store(state, Release);
        result
    }

    /// Runs `unregister` if registered; nothing otherwise.
    pub(super) fn unregister(&self, unregister: impl FnOnce()) {
        if self.0.cmpxchg(REGISTERED, CHANGING, Full).is_ok() {
            unregister();
            self.0.store(UNREGISTERED, Release);
        }
    }
}

/// An owner with a field of type `F` (a notifier, a shrinker, a balloon),
/// found back from the field when the kernel calls through it.
///
/// # Safety
///
/// [`Embeds::container_of`] must return the `Self` whose field `field`
/// points to, and [`Embeds::field`] that field of `self`.
/// [`impl_embeds!`] implements both. That the owner is pinned is the
/// promise of each handler trait.
pub(crate) unsafe trait Embeds<F>: Sized {
    /// The owner whose field `field` points to.
    ///
    /// # Safety
    ///
    /// `field` must point to that field of a live `Self`.
    unsafe fn container_of(field: *mut F) -> *mut Self;

    /// The field, of this owner.
    fn field(&self) -> &F;
}

/// A field reached from its owner `T`, so known to be embedded in it: what
/// makes the kernel call back through the field (a registration, a page
/// put on a balloon) is only offered here, since the callback finds the
/// owner from the field with `container_of`, which a field that is not
/// embedded would make undefined behaviour.
pub(crate) struct Embedded<'a, T, F> {
    owner: &'a T,
    field: &'a F,
}

impl<'a, T: Embeds<F>, F> Embedded<'a, T, F> {
    /// The field `F` of `owner`.
    pub(crate) fn of(owner: &'a T) -> Self {
        Self {
            owner,
            field: owner.field(),
        }
    }

    /// The owner.
    pub(super) fn owner(&self) -> &'a T {
        self.owner
    }
}

impl<T, F> Clone for Embedded<'_, T, F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T, F> Copy for Embedded<'_, T, F> {}

impl<T, F> core::ops::Deref for Embedded<'_, T, F> {
    type Target = F;

    fn deref(&self) -> &F {
        self.field
    }
}

/// Implements [`Embeds`] for `$owner`, once per field named.
#[macro_export]
macro_rules! impl_embeds {
    ($owner:ty { $($field:ident: $type:ty),* $(,)? }) => {$(
        // SAFETY: `container_of!` on `$field`, which only compiles if the
        // field has type `$type`.
        unsafe impl $crate::mm::Embeds<$type> for $owner {
            unsafe fn container_of(field: *mut $type) -> *mut Self {
                // SAFETY: `field` points to the `$field` of a live `$owner`
                // (the caller's contract).
                unsafe { ::kernel::container_of!(field, $owner, $field) }
            }

            fn field(&self) -> &$type {
                &self.$field
            }
        }
    )*};
}
