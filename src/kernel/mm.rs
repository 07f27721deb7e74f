// SPDX-License-Identifier: GPL-2.0

//! Safe abstractions over the kernel's balloon page API (`mm/balloon.c`) and
//! the few memory-management figures the driver reads.
//!
//! Pages allocated and queued here get page migration, the `Balloon:` line
//! of `/proc/meminfo`, the `balloon_*` vmstat counters and (when asked) the
//! managed page count adjustment for free. Every `unsafe` block of the module
//! that touches mm lives here.

use core::marker::PhantomData;
use core::ptr::NonNull;

use kernel::prelude::*;
use kernel::types::Opaque;

use crate::bindings;

/// One guest page owned by the balloon driver and not on a balloon list.
///
/// # Invariants
///
/// `page` is a valid page with one reference owned by this value; it is on
/// no list.
pub(crate) struct Page {
    page: NonNull<bindings::page>,
}

// SAFETY: a page reference may be dropped from any thread.
unsafe impl Send for Page {}

impl Page {
    /// Allocates a page for the balloon the way `balloon_page_alloc` does:
    /// movable, without retrying, without warning and without touching the
    /// memalloc reserves.
    pub(crate) fn alloc() -> Option<Self> {
        // SAFETY: no preconditions.
        let page = NonNull::new(unsafe { bindings::balloon_page_alloc() })?;
        // INVARIANT: a fresh page with its one reference, on no list.
        Some(Self { page })
    }

    /// Its page frame number.
    pub(crate) fn pfn(&self) -> u64 {
        // SAFETY: the page is valid (type invariant).
        unsafe { bindings::vbrs_page_to_pfn(self.page.as_ptr()) as u64 }
    }

    fn into_raw(self) -> *mut bindings::page {
        let page = self.page.as_ptr();
        core::mem::forget(self);
        page
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: we own one reference (type invariant); dropping it frees
        // the page back to the buddy allocator.
        unsafe { bindings::vbrs_put_page(self.page.as_ptr()) }
    }
}

/// A list of pages linked through their `lru` field: the staging area of an
/// inflate or deflate.
///
/// # Invariants
///
/// `head` is an initialised list head; every page on it is owned by the
/// list (one reference each) and on no other list.
#[pin_data(PinnedDrop)]
pub(crate) struct PageList {
    #[pin]
    head: Opaque<bindings::list_head>,
    len: usize,
}

// SAFETY: the list owns its pages; the pages may be freed from any thread.
unsafe impl Send for PageList {}

impl PageList {
    /// An initialiser for an empty list.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            head <- Opaque::ffi_init(|head| {
                // SAFETY: `head` is valid pinned memory for a list head.
                unsafe { bindings::vbrs_init_list_head(head) }
            }),
            len: 0,
        })
    }

    /// Puts `page` on the list.
    pub(crate) fn push(self: Pin<&mut Self>, page: Page) {
        // SAFETY: pinning is kept: only `len` is moved.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: the page is valid and on no list; the list takes its
        // reference (type invariant).
        unsafe { bindings::vbrs_page_list_add(page.into_raw(), this.head.get()) };
        this.len += 1;
    }

    /// Takes a page off the list.
    pub(crate) fn pop(self: Pin<&mut Self>) -> Option<Page> {
        // SAFETY: pinning is kept: only `len` is moved.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: the head is initialised; the helper unlinks the first page.
        let page = NonNull::new(unsafe { bindings::vbrs_page_list_pop(this.head.get()) })?;
        this.len -= 1;
        // INVARIANT: the list owned the page's reference and it is unlinked.
        Some(Page { page })
    }

    /// Frees every page on the list.
    pub(crate) fn clear(mut self: Pin<&mut Self>) {
        while self.as_mut().pop().is_some() {}
    }
}

#[pinned_drop]
impl PinnedDrop for PageList {
    fn drop(self: Pin<&mut Self>) {
        self.clear();
    }
}

/// The owner of a [`BalloonDevInfo`] and its migration callback.
///
/// # Safety
///
/// `OFFSET` must be the byte offset of a `BalloonDevInfo<Self>` field in
/// `Self`, and the owner must stay pinned while pages are in the balloon.
pub(crate) unsafe trait HasBalloonDevInfo: Sized + Sync {
    /// Offset of the `BalloonDevInfo<Self>` field.
    const OFFSET: usize;
    /// Tells the host that `new_pfn` replaces `old_pfn` in the balloon.
    /// Errors make the core keep the old page (`EAGAIN` to retry later).
    fn migrate(&self, new_pfn: u64, old_pfn: u64) -> Result;
}

/// Implements [`HasBalloonDevInfo`] for `$owner` whose `$field` is its balloon.
#[macro_export]
macro_rules! impl_has_balloon_dev_info {
    ($owner:ty, $field:ident, $migrate:path) => {
        // SAFETY: the offset is computed by the compiler for this field,
        // whose type is `BalloonDevInfo<$owner>`.
        unsafe impl $crate::mm::HasBalloonDevInfo for $owner {
            const OFFSET: usize = ::core::mem::offset_of!($owner, $field);
            fn migrate(&self, new_pfn: u64, old_pfn: u64) -> ::kernel::error::Result {
                $migrate(self, new_pfn, old_pfn)
            }
        }
    };
}

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
unsafe extern "C" fn migrate_callback<T: HasBalloonDevInfo>(
    info: *mut bindings::balloon_dev_info,
    newpage: *mut bindings::page,
    page: *mut bindings::page,
    _mode: bindings::migrate_mode,
) -> i32 {
    // SAFETY: `info` is the `info` field of a live `BalloonDevInfo<T>` at
    // `T::OFFSET` in a pinned `T` (trait contract); the core passes valid,
    // locked pages.
    unsafe {
        let owner = info.cast::<u8>().sub(T::OFFSET).cast::<T>();
        let new_pfn = bindings::vbrs_page_to_pfn(newpage) as u64;
        let old_pfn = bindings::vbrs_page_to_pfn(page) as u64;
        match (*owner).migrate(new_pfn, old_pfn) {
            Ok(()) => 0,
            Err(err) => err.to_errno(),
        }
    }
}

impl<T: HasBalloonDevInfo> BalloonDevInfo<T> {
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

    /// Moves every page of `list` into the balloon.
    pub(crate) fn enqueue_list(&self, mut list: Pin<&mut PageList>) -> usize {
        let mut moved = 0;
        while let Some(page) = list.as_mut().pop() {
            // SAFETY: the descriptor is initialised and the page is ours and
            // on no list; the balloon core takes over its reference.
            unsafe { bindings::balloon_page_enqueue(self.info.get(), page.into_raw()) };
            moved += 1;
        }
        moved
    }

    /// Takes one page out of the balloon, or `None` when every page left
    /// is isolated for migration.
    ///
    /// The caller must know the balloon is not empty: the core treats a
    /// dequeue from an empty balloon as lost pages and BUGs.
    pub(crate) fn dequeue(&self) -> Option<Page> {
        // SAFETY: the descriptor is initialised; the caller's count says a
        // page is on the list or isolated.
        let page = NonNull::new(unsafe { bindings::balloon_page_dequeue(self.info.get()) })?;
        // INVARIANT: the core handed us its reference and unlinked the page.
        Some(Page { page })
    }
}

/// Guest RAM in pages (`totalram_pages`), which ballooned pages leave when
/// the managed count is adjusted.
pub(crate) fn total_ram_pages() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bindings::vbrs_totalram_pages() as u64 }
}

/// Pages the guest could use without swapping (`MemAvailable`), already net
/// of the zones' watermark reserves.
pub(crate) fn available_pages() -> u64 {
    // SAFETY: no preconditions.
    let pages = unsafe { bindings::si_mem_available() };
    u64::try_from(pages).unwrap_or(0)
}

/// The guest's page size as a shift.
pub(crate) const PAGE_SHIFT: u32 = kernel::page::PAGE_SHIFT as u32;
