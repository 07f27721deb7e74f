// SPDX-License-Identifier: GPL-2.0

//! A device's balloon: the kernel's list of inflated pages (`mm/balloon.c`),
//! which gives page migration, the `Balloon:` line of `/proc/meminfo`, the
//! `balloon_*` vmstat counters and the managed page count adjustment.

use core::marker::PhantomData;
use core::ptr::NonNull;

use balloon_logic::pfn::PageGeometry;
use kernel::prelude::*;
use kernel::types::Opaque;

use super::{
    Embedded,
    Embeds,
    HeldPage,
    Pages,
    PageList, //
};
use crate::bindings;

/// The old page of a balloon page migration, during the migration callback.
pub(crate) struct MigratingPage<'a> {
    page: NonNull<bindings::page>,
    /// The frame of the new page.
    pub(crate) new_pfn: u64,
    /// The frame of the old page.
    pub(crate) old_pfn: u64,
    _callback: PhantomData<&'a ()>,
}

impl MigratingPage<'_> {
    /// Takes a reference to the old page, so that it stays out of the
    /// allocator after the migration core is done with it.
    pub(crate) fn hold(&self) -> HeldPage {
        // SAFETY: the migration core holds a reference to the old page for
        // the whole callback, so it is valid and taking another is allowed.
        unsafe { bindings::vbrs_get_page(self.page.as_ptr()) };
        // INVARIANT: we just took the reference the new value owns.
        HeldPage { page: self.page }
    }
}

/// The owner of a [`BalloonDevInfo`], called when a ballooned page migrates.
///
/// # Safety
///
/// `Self` is pinned once initialised, and empties its `BalloonDevInfo<Self>`
/// (the field `Embeds` names, the only one pages can be put on) before
/// anything else of it is dropped.
pub(crate) unsafe trait MigrationHandler:
    Embeds<BalloonDevInfo<Self>> + Sync
{
    /// Tells the host that the new page replaces the old one in the
    /// balloon. Errors make the core keep the old page (`EAGAIN` to retry
    /// later); on success the core frees the old page unless the owner
    /// holds it ([`MigratingPage::hold`]).
    fn migrate(&self, pages: &MigratingPage<'_>) -> Result;
}

/// Order of the blocks the balloon may take whole: 2 MiB, the size of a
/// host huge page, at every page size (9 with 4 KiB pages, 7 with 16 KiB,
/// 5 with 64 KiB).
///
/// It comes from the geometry the engine counts blocks with
/// ([`PageGeometry::block_order`]): a fixed order 9 took 8 MiB per block
/// from a 16 KiB guest and 32 MiB from a 64 KiB one while telling the host
/// 2 MiB. Where a guest page is 2 MiB or more the order is 0, and the
/// engine takes no blocks.
pub(crate) const HUGE_BLOCK_ORDER: u32 = match PageGeometry::new(super::PAGE_SHIFT) {
    Ok(geometry) => geometry.block_order(),
    Err(_) => 0,
};

/// A balloon: the kernel's list of inflated pages of one device.
///
/// # Invariants
///
/// `info` is initialised by `balloon_devinfo_init`; the pages on its list
/// are owned by the balloon core on behalf of this device.
#[pin_data]
pub(crate) struct BalloonDevInfo<T> {
    #[pin]
    info: Opaque<bindings::balloon_dev_info>,
    _owner: PhantomData<T>,
}

// SAFETY: the balloon core serialises access with its own lock.
unsafe impl<T> Sync for BalloonDevInfo<T> {}
// SAFETY: same.
unsafe impl<T> Send for BalloonDevInfo<T> {}

/// Migration callback of the balloon core: forwards to the owner.
///
/// # Safety
///
/// Called by the balloon core with the descriptor of a [`BalloonDevInfo<T>`]
/// and two valid, locked pages.
unsafe extern "C" fn migrate_callback<T: MigrationHandler>(
    info: *mut bindings::balloon_dev_info,
    newpage: *mut bindings::page,
    page: *mut bindings::page,
    _mode: bindings::migrate_mode,
) -> i32 {
    // SAFETY: `info` is the descriptor wrapped (as `info`, `Opaque` being
    // `repr(transparent)`) by a `BalloonDevInfo<T>` that holds pages, so a
    // field of a live, pinned `T` (`MigrationHandler` contract); the core
    // passes valid, locked pages.
    let (owner, pages) = unsafe {
        let field = kernel::container_of!(
            info.cast::<Opaque<bindings::balloon_dev_info>>(),
            BalloonDevInfo<T>,
            info
        );
        (
            &*T::container_of(field),
            MigratingPage {
                page: match NonNull::new(page) {
                    Some(page) => page,
                    None => return EINVAL.to_errno(),
                },
                new_pfn: bindings::vbrs_page_to_pfn(newpage) as u64,
                old_pfn: bindings::vbrs_page_to_pfn(page) as u64,
                _callback: PhantomData,
            },
        )
    };
    match owner.migrate(&pages) {
        Ok(()) => 0,
        Err(err) => err.to_errno(),
    }
}

impl<T: MigrationHandler> BalloonDevInfo<T> {
    /// An initialiser for an empty balloon.
    ///
    /// `adjust_managed` makes the core lower the managed page count (and so
    /// `MemTotal`) by every page inflated, as a balloon that does not give
    /// pages back under pressure should.
    pub(crate) fn new(adjust_managed: bool) -> impl PinInit<Self> {
        pin_init!(Self {
            info <- Opaque::ffi_init(move |info: *mut bindings::balloon_dev_info| {
                // SAFETY: `info` is valid pinned memory for the descriptor.
                unsafe {
                    bindings::vbrs_balloon_devinfo_init(info);
                    (*info).migratepage = Some(migrate_callback::<T>);
                    (*info).adjust_managed_page_count = adjust_managed;
                }
            }),
            _owner: PhantomData,
        })
    }

}

impl<T: MigrationHandler> Embedded<'_, T, BalloonDevInfo<T>> {
    /// Moves every page of `list` into the balloon, under one lock.
    pub(crate) fn enqueue_list(&self, list: Pin<&mut PageList>) -> usize {
        // SAFETY: only `len` changes; the head stays pinned.
        let list = unsafe { list.get_unchecked_mut() };
        // SAFETY: the descriptor and the list are initialised; the list owns
        // its pages (one reference each), which the balloon core takes over
        // as it unlinks them.
        let moved =
            unsafe { bindings::balloon_page_list_enqueue(self.info.get(), list.head.get()) };
        list.len = 0;
        moved
    }

}

impl<T: MigrationHandler> BalloonDevInfo<T> {
    /// Whether the balloon holds no page, isolated ones included.
    pub(crate) fn is_empty(&self) -> bool {
        // SAFETY: the descriptor is initialised; the helper only reads it.
        unsafe { bindings::vbrs_balloon_is_empty(self.info.get()) }
    }

    /// Moves up to `max` pages from the balloon onto `list`, under one lock;
    /// returns how many (fewer when pages are isolated for migration).
    pub(crate) fn dequeue_list(&self, list: Pin<&mut PageList>, max: usize) -> usize {
        // SAFETY: only `len` changes; the head stays pinned.
        let list = unsafe { list.get_unchecked_mut() };
        // SAFETY: the descriptor and the list are initialised; the core hands
        // over one reference per page it links onto the list.
        let moved =
            unsafe { bindings::balloon_page_list_dequeue(self.info.get(), list.head.get(), max) };
        list.len += moved;
        moved
    }
}

/// Whole blocks in the balloon. The balloon core's list holds single pages;
/// blocks stay on a list of the driver's, unmovable (as `vmw_balloon`'s
/// 2 MiB pages are), and are accounted as the core accounts its pages, so
/// that `MemTotal`, `Balloon:` and the `balloon_*` events stay exact.
impl<T: MigrationHandler> BalloonDevInfo<T> {
    /// Moves every block of `staged` onto `blocks`, the balloon's own,
    /// marking their pages offline as the core marks its pages, so that
    /// dump tools skip the memory the host has discarded (the mark stays
    /// until the block is freed).
    pub(crate) fn enqueue_blocks<const ORDER: u32>(
        &self,
        staged: Pin<&mut PageList<ORDER>>,
        blocks: Pin<&mut PageList<ORDER>>,
    ) -> usize {
        blocks.take_from_each(staged, usize::MAX, |block| {
            block.set_offline();
            self.account(block, true)
        })
    }

    /// Moves up to `max` blocks from the balloon's `blocks` onto `staged`.
    pub(crate) fn dequeue_blocks<const ORDER: u32>(
        &self,
        blocks: Pin<&mut PageList<ORDER>>,
        staged: Pin<&mut PageList<ORDER>>,
        max: usize,
    ) -> usize {
        staged.take_from_each(blocks, max, |block| self.account(block, false))
    }

    /// Accounts `block` entering (`inflate`) or leaving the balloon.
    fn account<const ORDER: u32>(&self, block: &Pages<ORDER>, inflate: bool) {
        let pages: kernel::ffi::c_long = 1 << ORDER;
        let (delta, event) = if inflate {
            (pages, bindings::vm_event_item_BALLOON_INFLATE)
        } else {
            (-pages, bindings::vm_event_item_BALLOON_DEFLATE)
        };
        // SAFETY: the descriptor is initialised (type invariant) and only
        // read; `block` is a valid block of `2^ORDER` pages that we own
        // (its type invariant).
        unsafe {
            if (*self.info.get()).adjust_managed_page_count {
                bindings::adjust_managed_page_count(block.as_raw(), -delta);
            }
            bindings::vbrs_count_vm_events(event as kernel::ffi::c_int, pages);
            bindings::mod_node_page_state(
                bindings::vbrs_page_pgdat(block.as_raw()),
                bindings::node_stat_item_NR_BALLOON_PAGES,
                delta,
            );
        }
    }
}
