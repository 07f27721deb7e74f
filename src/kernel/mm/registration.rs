// SPDX-License-Identifier: GPL-2.0

//! Registrations with the mm subsystems (the OOM notifier chain, page
//! reporting, shrinkers): one type, [`Registration`], that registers when
//! it is made and unregisters when it is dropped; and [`Embeds`], how the
//! balloon core's migration callback finds the owner of a balloon.

use core::ptr::NonNull;

use kernel::prelude::*;
use kernel::types::Opaque;

/// An owner whose handlers the kernel may call through a [`Registration`].
///
/// # Safety
///
/// `Self` drops every [`Registration`] made of it before it goes itself.
pub(crate) unsafe trait RegistrationOwner: Sync {}

/// What one kind of registration is: the C descriptor the kernel keeps,
/// how it is filled and registered, and how it is unregistered.
///
/// # Safety
///
/// [`Kind::register`] arranges for the kernel to call back only through
/// the descriptor it is given, and [`Kind::unregister`] returns only once
/// no callback runs or will run through it.
pub(crate) unsafe trait Kind {
    /// The owner whose handler the callbacks call.
    type Owner: RegistrationOwner;
    /// The descriptor the kernel keeps while registered.
    type Raw;
    /// What registering needs besides the owner.
    type Args;

    /// Fills the descriptor and registers it.
    ///
    /// # Safety
    ///
    /// `raw` is the descriptor of a [`Registration<Self>`] being made, in
    /// pinned memory that stays until [`Kind::unregister`].
    unsafe fn register(raw: *mut Self::Raw, args: Self::Args) -> Result;

    /// Unregisters the descriptor; waits for callbacks in progress.
    ///
    /// # Safety
    ///
    /// `raw` was registered by [`Kind::register`].
    unsafe fn unregister(raw: *mut Self::Raw);
}

/// A registration of `K`: in place from the moment it is made until it is
/// dropped; the kernel's callbacks reach the owner through it.
///
/// # Invariants
///
/// `raw` is registered (by `K::register`) for the registration's whole
/// life, and `owner` outlives it.
#[pin_data(PinnedDrop)]
pub(crate) struct Registration<K: Kind> {
    owner: NonNull<K::Owner>,
    #[pin]
    raw: Opaque<K::Raw>,
}

// SAFETY: the descriptor is written only while the registration is made;
// afterwards the kernel reads it and calls the owner, which is `Sync`.
unsafe impl<K: Kind> Sync for Registration<K> {}
// SAFETY: same; dropping it (unregistering) may happen on any thread.
unsafe impl<K: Kind> Send for Registration<K> {}

impl<K: Kind> Registration<K> {
    /// Registers `owner`'s handler with `args`; `owner` outlives the
    /// registration (the [`RegistrationOwner`] contract).
    pub(crate) fn new(owner: &K::Owner, args: K::Args) -> impl PinInit<Self, Error> {
        let owner = NonNull::from(owner);
        try_pin_init!(Self {
            // Set before the descriptor is registered: a callback may come
            // at once.
            owner,
            raw <- Opaque::try_ffi_init(move |raw: *mut K::Raw| {
                // SAFETY: `raw` is pinned memory of this registration, which
                // unregisters it when dropped.
                unsafe { K::register(raw, args) }
            }),
        })
    }

    /// The owner of the registration whose descriptor `raw` is.
    ///
    /// # Safety
    ///
    /// `raw` is the descriptor of a live `Registration<K>`, and the
    /// returned reference is used only while that registration lives.
    pub(super) unsafe fn owner<'a>(raw: *mut K::Raw) -> &'a K::Owner {
        // SAFETY: `raw` is the `raw` field (`Opaque` is `repr(transparent)`)
        // of a live registration (the caller's contract), whose owner
        // outlives it (type invariant).
        unsafe {
            let this = kernel::container_of!(raw.cast::<Opaque<K::Raw>>(), Self, raw);
            (*this).owner.as_ref()
        }
    }
}

#[pinned_drop]
impl<K: Kind> PinnedDrop for Registration<K> {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: registered since the registration was made (type
        // invariant).
        unsafe { K::unregister(self.raw.get()) };
    }
}

/// An owner with a field of type `F` (a balloon),
/// found back from the field when the kernel calls through it.
///
/// # Safety
///
/// [`Embeds::container_of`] must return the `Self` whose field `field`
/// points to, and [`Embeds::field`] that field of `self`.
/// [`impl_embeds!`] implements both. That the owner is pinned is the
/// promise of the handler trait (`MigrationHandler`).
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
/// makes the kernel call back through the field (a page put on a balloon,
/// whose migration callback finds the owner) is only offered here, since
/// the callback uses `container_of`, which a field that is not
/// embedded would make undefined behaviour.
pub(crate) struct Embedded<'a, T, F> {
    field: &'a F,
    _owner: core::marker::PhantomData<&'a T>,
}

impl<'a, T: Embeds<F>, F> Embedded<'a, T, F> {
    /// The field `F` of `owner`.
    pub(crate) fn of(owner: &'a T) -> Self {
        Self {
            field: owner.field(),
            _owner: core::marker::PhantomData,
        }
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
