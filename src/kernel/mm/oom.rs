// SPDX-License-Identifier: GPL-2.0

//! A registration with the OOM notifier chain.

use core::marker::PhantomData;

use kernel::error::to_result;
use kernel::ffi;
use kernel::prelude::*;
use kernel::types::Opaque;

use super::registration::{
    Embedded,
    Embeds,
    RegistrationState, //
};
use crate::bindings;

/// The owner of an [`OomNotifier`], called when the guest runs out of memory.
///
/// # Safety
///
/// `Self` is pinned once initialised, and unregisters its `OomNotifier<Self>`
/// (the field `Embeds` names, the only one that can be registered) before
/// anything else of it is dropped.
pub(crate) unsafe trait OomHandler: Embeds<OomNotifier<Self>> + Sync {
    /// The guest is out of memory: free what can be freed, return the
    /// number of pages freed (process context, may sleep).
    fn out_of_memory(&self) -> u64;
}

/// A registration with the OOM notifier chain, called before the OOM killer
/// picks a victim.
#[pin_data(PinnedDrop)]
pub(crate) struct OomNotifier<T> {
    #[pin]
    block: Opaque<bindings::notifier_block>,
    registration: RegistrationState,
    _owner: PhantomData<T>,
}

// SAFETY: the block is written only by the initialiser; afterwards the
// notifier chain only reads it, and calls the owner, which is `Sync`.
unsafe impl<T> Sync for OomNotifier<T> {}
// SAFETY: same.
unsafe impl<T> Send for OomNotifier<T> {}

/// Notifier callback: forwards to the owner.
///
/// # Safety
///
/// Called by the OOM notifier chain with the block of a registered
/// [`OomNotifier<T>`] and a pointer to the freed-pages counter.
unsafe extern "C" fn oom_callback<T: OomHandler>(
    block: *mut bindings::notifier_block,
    _event: ffi::c_ulong,
    freed: *mut ffi::c_void,
) -> i32 {
    // SAFETY: `block` is the block wrapped (as `block`, `Opaque` being
    // `repr(transparent)`) by an `OomNotifier<T>`, which is a field of a
    // live, pinned `T` (`OomHandler` contract); `freed` points to the caller's
    // `unsigned long` counter.
    unsafe {
        let field = kernel::container_of!(
            block.cast::<Opaque<bindings::notifier_block>>(),
            OomNotifier<T>,
            block
        );
        let owner = T::container_of(field);
        let pages = (*owner).out_of_memory();
        let freed = freed.cast::<ffi::c_ulong>();
        *freed = (*freed).saturating_add(pages as ffi::c_ulong);
    }
    bindings::VBRS_NOTIFY_OK
}

impl<T: OomHandler> OomNotifier<T> {
    /// An initialiser for an unregistered notifier.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            block <- Opaque::ffi_init(|block: *mut bindings::notifier_block| {
                let nb = bindings::notifier_block {
                    notifier_call: Some(oom_callback::<T>),
                    // The C driver's priority, among the OOM notifiers.
                    priority: 80,
                    ..Default::default()
                };
                // SAFETY: `block` is valid pinned memory for the block.
                unsafe { block.write(nb) };
            }),
            registration: RegistrationState::new(),
            _owner: PhantomData,
        })
    }

}

impl<T: OomHandler> Embedded<'_, T, OomNotifier<T>> {
    /// Joins the OOM notifier chain, unless already in it.
    pub(crate) fn register(&self) -> Result {
        self.registration.register(|| {
            // SAFETY: the block is initialised and pinned (a field of the
            // pinned owner, `OomHandler` contract); it stays registered
            // until `unregister` or drop.
            to_result(unsafe { bindings::register_oom_notifier(self.block.get()) })
        })
    }
}

impl<T> OomNotifier<T> {
    /// Leaves the chain; waits for a running callback to finish.
    pub(crate) fn unregister(&self) {
        self.registration.unregister(|| {
            // SAFETY: the block was registered by `register`.
            unsafe { bindings::unregister_oom_notifier(self.block.get()) };
        });
    }
}

#[pinned_drop]
impl<T> PinnedDrop for OomNotifier<T> {
    fn drop(self: Pin<&mut Self>) {
        self.unregister();
    }
}
