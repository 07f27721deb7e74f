// SPDX-License-Identifier: GPL-2.0

//! Free page reporting (`mm/page_reporting.c`): the core hands the driver
//! batches of free pages for the host to discard.

use core::marker::PhantomData;

use kernel::error::to_result;
use kernel::prelude::*;
use kernel::types::Opaque;

use super::registration::{
    Embedded,
    Embeds,
    RegistrationState, //
};
use super::PAGE_SHIFT;
use crate::bindings;

/// One batch of free pages the page reporting core asks the driver to
/// report, as a scatterlist.
pub(crate) struct ReportedPages<'a> {
    sg: *mut bindings::scatterlist,
    nents: u32,
    _batch: PhantomData<&'a ()>,
}

impl ReportedPages<'_> {
    /// The scatterlist and its length, for the virtio layer.
    pub(crate) fn raw(&self) -> (*mut bindings::scatterlist, u32) {
        (self.sg, self.nents)
    }
}

/// The owner of a [`PageReporting`], which reports free pages to the host.
///
/// # Safety
///
/// `Self` is pinned once initialised, and unregisters its `PageReporting<Self>`
/// (the field `Embeds` names, the only one that can be registered) before
/// anything else of it is dropped.
pub(crate) unsafe trait ReportingHandler: Embeds<PageReporting<Self>> + Sync {
    /// Reports `pages` to the host; returns once the host has them.
    fn report(&self, pages: &ReportedPages<'_>) -> Result;
}

/// The order of the free blocks to report: with 64 KiB pages the default
/// (`pageblock_order`, 512 MiB) would never trigger, so 2 MiB blocks, as
/// the C driver does; otherwise the default.
fn reporting_order() -> u32 {
    if PAGE_SHIFT == 16 {
        5
    } else {
        bindings::VBRS_PAGE_REPORTING_ORDER_UNSPECIFIED as u32
    }
}

/// A free page reporting registration (`mm/page_reporting.c`).
#[pin_data(PinnedDrop)]
pub(crate) struct PageReporting<T> {
    #[pin]
    info: Opaque<bindings::page_reporting_dev_info>,
    registration: RegistrationState,
    _owner: PhantomData<T>,
}

// SAFETY: the descriptor is written only while unregistered, by the one
// caller the registration state lets in; afterwards the page reporting core
// reads it and serialises reports, which call the owner, which is `Sync`.
unsafe impl<T> Sync for PageReporting<T> {}
// SAFETY: same.
unsafe impl<T> Send for PageReporting<T> {}

/// Report callback: forwards to the owner.
///
/// # Safety
///
/// Called by the page reporting core with the descriptor of a registered
/// [`PageReporting<T>`] and a scatterlist of `nents` entries.
unsafe extern "C" fn report_callback<T: ReportingHandler>(
    info: *mut bindings::page_reporting_dev_info,
    sg: *mut bindings::scatterlist,
    nents: u32,
) -> i32 {
    let pages = ReportedPages {
        sg,
        nents,
        _batch: PhantomData,
    };
    // SAFETY: `info` is the descriptor wrapped (as `info`, `Opaque` being
    // `repr(transparent)`) by a `PageReporting<T>`, which is a field of a
    // live, pinned `T` (`ReportingHandler` contract).
    let owner = unsafe {
        let field = kernel::container_of!(
            info.cast::<Opaque<bindings::page_reporting_dev_info>>(),
            PageReporting<T>,
            info
        );
        &*T::container_of(field)
    };
    match owner.report(&pages) {
        Ok(()) => 0,
        Err(err) => err.to_errno(),
    }
}

impl<T: ReportingHandler> PageReporting<T> {
    /// An initialiser for an unregistered descriptor.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            info <- Opaque::ffi_init(|info: *mut bindings::page_reporting_dev_info| {
                // SAFETY: `info` is valid pinned memory; all-zero is a valid
                // unregistered descriptor.
                unsafe { info.write(Default::default()) };
            }),
            registration: RegistrationState::new(),
            _owner: PhantomData,
        })
    }

}

impl<T: ReportingHandler> Embedded<'_, T, PageReporting<T>> {
    /// Starts reporting free pages in batches of at most `capacity`,
    /// unless already reporting.
    pub(crate) fn register(&self, capacity: u32) -> Result {
        self.registration.register(|| {
            let info = self.info.get();
            // SAFETY: the descriptor is not registered and the registration
            // state lets only this caller in, so no one else reads or writes
            // it; after registration the core owns it until `unregister`.
            unsafe {
                (*info).report = Some(report_callback::<T>);
                (*info).order = reporting_order();
                (*info).capacity = capacity;
                to_result(bindings::page_reporting_register(info))
            }
        })
    }
}

impl<T> PageReporting<T> {
    /// Stops reporting; waits for a report in progress.
    pub(crate) fn unregister(&self) {
        self.registration.unregister(|| {
            // SAFETY: registered by `register`.
            unsafe { bindings::page_reporting_unregister(self.info.get()) };
        });
    }
}

#[pinned_drop]
impl<T> PinnedDrop for PageReporting<T> {
    fn drop(self: Pin<&mut Self>) {
        self.unregister();
    }
}
