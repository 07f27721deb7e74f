// SPDX-License-Identifier: GPL-2.0

//! Free page reporting (`mm/page_reporting.c`): the core hands the driver
//! batches of free pages for the host to discard.

use core::marker::PhantomData;

use kernel::error::to_result;
use kernel::prelude::*;
use kernel::types::Opaque;

use super::registration::RegistrationState;
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

/// The owner of a [`PageReporting`].
///
/// # Safety
///
/// [`HasPageReporting::reporting_container_of`] must return the owner that embeds the given
/// `PageReporting<Self>` field, every `PageReporting<Self>` must be that field of a
/// `Self`, and the owner must stay pinned while it is registered. [`impl_has_page_reporting!`]
/// implements it for a field.
pub(crate) unsafe trait HasPageReporting: Sized + Sync {
    /// The owner whose `PageReporting<Self>` field `field` points to.
    ///
    /// # Safety
    ///
    /// `field` must point to that field of a live `Self`.
    unsafe fn reporting_container_of(field: *mut PageReporting<Self>) -> *mut Self;
    /// Reports `pages` to the host; returns once the host has them.
    fn report(&self, pages: &ReportedPages<'_>) -> Result;
}

/// Implements [`HasPageReporting`] for `$owner` whose `$field` is its
/// page reporting registration.
#[macro_export]
macro_rules! impl_has_page_reporting {
    ($owner:ty, $field:ident, $report:path) => {
        // SAFETY: the container is found with `container_of!` on this
        // field, whose type is `PageReporting<$owner>`.
        unsafe impl $crate::mm::HasPageReporting for $owner {
            unsafe fn reporting_container_of(
                field: *mut $crate::mm::PageReporting<Self>,
            ) -> *mut Self {
                // SAFETY: `field` points to the `$field` of a live `$owner`
                // (the caller's contract).
                unsafe { ::kernel::container_of!(field, $owner, $field) }
            }
            fn report(&self, pages: &$crate::mm::ReportedPages<'_>) -> ::kernel::error::Result {
                $report(self, pages)
            }
        }
    };
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
unsafe extern "C" fn report_callback<T: HasPageReporting>(
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
    // live, pinned `T` (trait contract).
    let owner = unsafe {
        let field = kernel::container_of!(
            info.cast::<Opaque<bindings::page_reporting_dev_info>>(),
            PageReporting<T>,
            info
        );
        &*T::reporting_container_of(field)
    };
    match owner.report(&pages) {
        Ok(()) => 0,
        Err(err) => err.to_errno(),
    }
}

impl<T: HasPageReporting> PageReporting<T> {
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
        self.registration.unregister(|| {
            // SAFETY: registered and still pinned.
            unsafe { bindings::page_reporting_unregister(self.info.get()) };
        });
    }
}
