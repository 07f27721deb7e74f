// SPDX-License-Identifier: GPL-2.0

//! Free page reporting (`mm/page_reporting.c`): the core hands the driver
//! batches of free pages for the host to discard.

use core::marker::PhantomData;

use kernel::error::to_result;
use kernel::prelude::*;

use super::registration::{
    Kind,
    Registration,
    RegistrationOwner, //
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

/// An owner the page reporting core hands free pages to report.
pub(crate) trait ReportingHandler: RegistrationOwner {
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

/// Free page reporting (`mm/page_reporting.c`); registering takes the
/// most free blocks a report may hold.
pub(crate) struct PageReporting<T>(PhantomData<T>);

/// `T`'s free page reporting while it lives.
pub(crate) type ReportingRegistration<T> = Registration<PageReporting<T>>;

/// Report callback: forwards to the owner.
///
/// # Safety
///
/// Called by the page reporting core with the descriptor of a live
/// [`ReportingRegistration<T>`] and a scatterlist of `nents` entries.
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
    // SAFETY: `info` is the descriptor of a live registration, which the
    // core calls only until the registration's drop unregisters it.
    let owner = unsafe { ReportingRegistration::<T>::owner(info) };
    match owner.report(&pages) {
        Ok(()) => 0,
        Err(err) => err.to_errno(),
    }
}

// SAFETY: the core calls back only through the registered descriptor, and
// `page_reporting_unregister` waits for a report in progress.
unsafe impl<T: ReportingHandler> Kind for PageReporting<T> {
    type Owner = T;
    type Raw = bindings::page_reporting_dev_info;
    /// The most free blocks in one report (the queue's size).
    type Args = u32;

    unsafe fn register(info: *mut bindings::page_reporting_dev_info, capacity: u32) -> Result {
        let desc = bindings::page_reporting_dev_info {
            report: Some(report_callback::<T>),
            order: reporting_order(),
            capacity,
            ..Default::default()
        };
        // SAFETY: `info` is pinned memory for the descriptor that stays
        // until `unregister` (the caller's contract).
        unsafe {
            info.write(desc);
            to_result(bindings::page_reporting_register(info))
        }
    }

    unsafe fn unregister(info: *mut bindings::page_reporting_dev_info) {
        // SAFETY: registered by `register` (the caller's contract).
        unsafe { bindings::page_reporting_unregister(info) };
    }
}
