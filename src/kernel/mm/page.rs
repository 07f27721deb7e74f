// SPDX-License-Identifier: GPL-2.0

//! Guest pages the driver owns: single balloon pages and free blocks, a
//! reference held on a page someone else owns, the bulk allocator, and
//! lists of pages linked through `lru`.

use core::ptr::NonNull;

use kernel::prelude::*;
use kernel::types::Opaque;

use crate::bindings;

/// A block of `2^ORDER` guest pages owned by the driver and not on a
/// balloon list (order 0: one balloon page).
///
/// Why not 7.3's `kernel::page::Page`: it is one order-0 page allocated
/// with `alloc_pages(flags, 0)` and freed with `__free_pages(page, 0)`,
/// while the balloon needs blocks of order 5 to 10 (2 MiB blocks, free
/// page hint blocks), balloon pages allocated by `balloon_page_alloc` and
/// dropped with `put_page` (the balloon core and migration hold references
/// of their own), and lists linked through `lru`; and its flags,
/// `kernel::alloc::Flags`, have no `__GFP_NORETRY`, `__GFP_NOMEMALLOC`,
/// `__GFP_MOVABLE` or `__GFP_DIRECT_RECLAIM`, which every allocation here
/// needs (see [`balloon_gfp`] and the block allocators).
///
/// # Invariants
///
/// `page` is the head of a valid, non-compound block of that order with one
/// reference owned by this value; it is on no list.
pub(crate) struct Pages<const ORDER: u32 = 0> {
    page: NonNull<bindings::page>,
}

// SAFETY: a page reference may be dropped from any thread.
unsafe impl<const ORDER: u32> Send for Pages<ORDER> {}

impl<const ORDER: u32> Pages<ORDER> {
    /// Allocates a free block, the way the C driver takes one for a free
    /// page hint and `vmw_balloon` a 2 MiB page: no reclaim, no retry, no
    /// warning, no memalloc reserves. `None` means the guest has no more
    /// free blocks of this order.
    pub(crate) fn alloc_free_block() -> Option<Self> {
        Self::alloc_block(
            bindings::VBRS___GFP_NORETRY
                | bindings::VBRS___GFP_NOWARN
                | bindings::VBRS___GFP_NOMEMALLOC,
        )
    }

    /// Allocates a block by compacting for it, for when no free block is
    /// left: one pass of asynchronous direct compaction (`__GFP_NORETRY`: at
    /// most a light reclaim after it, no retry, never the OOM killer), no
    /// warning, no memalloc reserves. Asynchronous direct compaction only
    /// moves pages out of pageblocks of the request's migrate type, and a
    /// scattered guest's free memory lies between movable pages, so the
    /// request is movable; the block then fills one whole movable pageblock
    /// and mixes with no movable page, which is why only blocks of at least
    /// a pageblock are taken this way. `None`: none could be made.
    ///
    /// A movable request may be served from a CMA pageblock, which must
    /// stay free for its contiguous allocations, and the block never moves
    /// (it is off the balloon core's list). A module cannot ask a page's
    /// migrate type (`get_pfnblock_migratetype` is not exported), so no
    /// block is made this way while any CMA page is free: then none can
    /// come from CMA.
    pub(crate) fn alloc_compacted_block() -> Option<Self> {
        if !Self::compactable() {
            return None;
        }
        Self::alloc_block(
            bindings::VBRS___GFP_MOVABLE
                | bindings::VBRS___GFP_DIRECT_RECLAIM
                | bindings::VBRS___GFP_IO
                | bindings::VBRS___GFP_FS
                | bindings::VBRS___GFP_NORETRY
                | bindings::VBRS___GFP_NOWARN
                | bindings::VBRS___GFP_NOMEMALLOC,
        )
    }

    /// Marks every page of the block offline (`PageOffline`), as the
    /// balloon core marks its pages; freeing the block clears the marks.
    pub(crate) fn set_offline(&self) {
        // SAFETY: the block is a valid, non-compound block of `ORDER` that
        // we own (type invariant): its pages have no page type but the
        // offline mark this sets (the helper skips pages marked already);
        // freeing the block clears them.
        unsafe { bindings::vbrs_set_block_offline(self.page.as_ptr(), ORDER) }
    }

    /// Whether blocks of this order are made by compaction: those of at
    /// least a pageblock.
    ///
    /// Not while any CMA page is free: see [`Pages::alloc_compacted_block`].
    pub(crate) fn compactable() -> bool {
        // SAFETY: no preconditions (a constant, and a global counter).
        unsafe {
            ORDER >= bindings::vbrs_pageblock_order() && bindings::vbrs_free_cma_pages() == 0
        }
    }

    fn alloc_block(gfp: bindings::gfp_t) -> Option<Self> {
        // SAFETY: no preconditions (the kernel crate's helper for the
        // `alloc_pages` macro).
        let page = NonNull::new(unsafe { kernel::bindings::alloc_pages(gfp, ORDER) })?;
        // INVARIANT: a fresh block with its one reference, on no list.
        Some(Self { page })
    }

    /// The raw page, for the virtio layer to put its memory on a queue.
    pub(crate) fn as_raw(&self) -> *mut bindings::page {
        self.page.as_ptr()
    }

    fn into_raw(self) -> *mut bindings::page {
        let page = self.page.as_ptr();
        core::mem::forget(self);
        page
    }
}

impl Pages {
    /// Allocates a page for the balloon the way `balloon_page_alloc` does:
    /// movable, without retrying, without warning and without touching the
    /// memalloc reserves.
    pub(crate) fn alloc() -> Option<Self> {
        // SAFETY: no preconditions.
        let page = NonNull::new(unsafe { bindings::balloon_page_alloc() })?;
        // INVARIANT: a fresh page with its one reference, on no list.
        Some(Self { page })
    }
}

impl<const ORDER: u32> Drop for Pages<ORDER> {
    fn drop(&mut self) {
        // SAFETY: we own one reference to a block of this order (type
        // invariant); dropping it frees the block to the buddy allocator
        // (single pages through `put_page`, as balloon pages must be).
        unsafe {
            if ORDER == 0 {
                bindings::vbrs_put_page(self.page.as_ptr())
            } else {
                bindings::vbrs_free_pages(self.page.as_ptr(), ORDER)
            }
        }
    }
}

/// An extra reference to a page that someone else (the migration core) may
/// still be using; the page goes back to the allocator only when every
/// reference, this one included, is dropped.
///
/// # Invariants
///
/// `page` is a valid page on which this value owns one reference.
pub(crate) struct HeldPage {
    pub(super) page: NonNull<bindings::page>,
}

// SAFETY: a page reference may be dropped from any thread.
unsafe impl Send for HeldPage {}

impl Drop for HeldPage {
    fn drop(&mut self) {
        // SAFETY: we own one reference (type invariant); `put_page` drops it
        // without touching `lru`, which another owner may be using.
        unsafe { bindings::vbrs_put_page(self.page.as_ptr()) }
    }
}

/// The flags of `balloon_page_alloc()`: movable where balloon pages can
/// migrate, no retry, no warning, no memalloc reserves.
fn balloon_gfp() -> bindings::gfp_t {
    let base = if cfg!(CONFIG_BALLOON_MIGRATION) {
        bindings::VBRS_GFP_HIGHUSER_MOVABLE
    } else {
        bindings::VBRS_GFP_HIGHUSER
    };
    base | bindings::VBRS___GFP_NOMEMALLOC
        | bindings::VBRS___GFP_NORETRY
        | bindings::VBRS___GFP_NOWARN
}

/// Scratch space for the bulk page allocator.
pub(crate) struct BulkPages {
    pages: KVec<*mut bindings::page>,
}

// SAFETY: the array only holds pointers between a call and the hand-over
// to a list, both under the caller's `&mut`.
unsafe impl Send for BulkPages {}

impl BulkPages {
    /// Room for `capacity` pages per call.
    pub(crate) fn new(capacity: usize) -> Result<Self> {
        let mut pages = KVec::with_capacity(capacity, GFP_KERNEL)?;
        pages.resize(capacity, core::ptr::null_mut(), GFP_KERNEL)?;
        Ok(Self { pages })
    }

    /// Allocates up to `max` balloon pages (the flags of
    /// `balloon_page_alloc`) in one call and puts them on `list`; returns
    /// how many. Stops early near the low watermark.
    pub(crate) fn alloc_into(&mut self, mut list: Pin<&mut PageList>, max: usize) -> usize {
        let count = max.min(self.pages.len());
        let slots = &mut self.pages[..count];
        slots.fill(core::ptr::null_mut());
        let count_c = i32::try_from(count).unwrap_or(i32::MAX);
        // SAFETY: `slots` has `count` null entries for the allocator to fill.
        let got =
            unsafe { bindings::vbrs_alloc_pages_bulk(balloon_gfp(), count_c, slots.as_mut_ptr()) };
        let mut taken = 0;
        for slot in slots.iter_mut().take(got as usize) {
            // Not `mem::take`: raw pointers are `Default` only from Rust 1.88,
            // and the module must build with 1.85.
            let raw = *slot;
            *slot = core::ptr::null_mut();
            let Some(page) = NonNull::new(raw) else {
                continue;
            };
            // INVARIANT: a fresh page with its one reference, on no list.
            list.as_mut().push(Pages { page });
            taken += 1;
        }
        taken
    }
}

impl BulkPages {
    /// Frees every page of `list` in batches (`release_pages`), cheaper than
    /// one `put_page` each.
    pub(crate) fn free_list(&mut self, mut list: Pin<&mut PageList>) {
        loop {
            let mut count = 0;
            for slot in self.pages.iter_mut() {
                let Some(page) = list.as_mut().pop() else {
                    break;
                };
                *slot = page.into_raw();
                count += 1;
            }
            if count == 0 {
                return;
            }
            let count_c = i32::try_from(count).unwrap_or(i32::MAX);
            // SAFETY: the first `count` slots hold pages whose one reference
            // each was taken off the list (`into_raw`); `release_pages` drops
            // those references.
            unsafe { bindings::vbrs_release_pages(self.pages.as_mut_ptr(), count_c) };
            self.pages[..count].fill(core::ptr::null_mut());
        }
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
pub(crate) struct PageList<const ORDER: u32 = 0> {
    #[pin]
    pub(super) head: Opaque<bindings::list_head>,
    pub(super) len: usize,
}

// SAFETY: the list owns its pages; the pages may be freed from any thread.
unsafe impl<const ORDER: u32> Send for PageList<ORDER> {}

impl<const ORDER: u32> PageList<ORDER> {
    /// An initialiser for an empty list.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            head <- Opaque::ffi_init(|head| {
                // SAFETY: `head` is valid pinned memory for a list head.
                unsafe { kernel::bindings::INIT_LIST_HEAD(head) }
            }),
            len: 0,
        })
    }

    /// Blocks on the list.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Puts `page` on the list.
    pub(crate) fn push(self: Pin<&mut Self>, page: Pages<ORDER>) {
        // SAFETY: pinning is kept: only `len` is moved.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: the page is valid and on no list; the list takes its
        // reference (type invariant).
        unsafe { bindings::vbrs_page_list_add(page.into_raw(), this.head.get()) };
        this.len += 1;
    }

    /// Takes a page off the list.
    pub(crate) fn pop(self: Pin<&mut Self>) -> Option<Pages<ORDER>> {
        // SAFETY: pinning is kept: only `len` is moved.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: the head is initialised; the helper unlinks the first page.
        let page = NonNull::new(unsafe { bindings::vbrs_page_list_pop(this.head.get()) })?;
        this.len -= 1;
        // INVARIANT: the list owned the page's reference and it is unlinked.
        Some(Pages { page })
    }

    /// Moves up to `count` blocks from `other` onto this list; returns how
    /// many it moved.
    pub(crate) fn take_from(self: Pin<&mut Self>, other: Pin<&mut Self>, count: usize) -> usize {
        self.take_from_each(other, count, |_| {})
    }

    /// [`PageList::take_from`], calling `each` with every block it moves.
    pub(crate) fn take_from_each(
        mut self: Pin<&mut Self>,
        mut other: Pin<&mut Self>,
        count: usize,
        mut each: impl FnMut(&Pages<ORDER>),
    ) -> usize {
        let mut moved = 0;
        while moved < count {
            let Some(page) = other.as_mut().pop() else {
                break;
            };
            each(&page);
            self.as_mut().push(page);
            moved += 1;
        }
        moved
    }

    /// Calls `f` with the frame number of every page on the list.
    pub(crate) fn for_each_pfn(&self, f: &mut dyn FnMut(u64)) {
        let head = self.head.get();
        let mut page = core::ptr::null_mut();
        loop {
            // SAFETY: the head is initialised and `page` is null or on it.
            page = unsafe { bindings::vbrs_page_list_next(head, page) };
            if page.is_null() {
                return;
            }
            // SAFETY: `page` is a valid page on the list.
            f(unsafe { bindings::vbrs_page_to_pfn(page) } as u64);
        }
    }

    /// Frees every page on the list.
    pub(crate) fn clear(mut self: Pin<&mut Self>) {
        while self.as_mut().pop().is_some() {}
    }

    /// Frees up to `count` blocks and returns how many it freed.
    pub(crate) fn release(mut self: Pin<&mut Self>, count: usize) -> usize {
        let mut freed = 0;
        while freed < count && self.as_mut().pop().is_some() {
            freed += 1;
        }
        freed
    }
}

#[pinned_drop]
impl<const ORDER: u32> PinnedDrop for PageList<ORDER> {
    fn drop(self: Pin<&mut Self>) {
        self.clear();
    }
}
