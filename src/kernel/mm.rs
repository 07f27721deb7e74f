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
use core::sync::atomic::{
    AtomicBool,
    Ordering, //
};

use kernel::error::to_result;
use kernel::ffi;
use kernel::prelude::*;
use kernel::types::Opaque;

use crate::bindings;

/// A block of `2^ORDER` guest pages owned by the driver and not on a
/// balloon list (order 0: one balloon page).
///
/// # Invariants
///
/// `page` is the head of a valid, non-compound block of that order with one
/// reference owned by this value; it is on no list.
pub(crate) struct Page<const ORDER: u32 = 0> {
    page: NonNull<bindings::page>,
}

// SAFETY: a page reference may be dropped from any thread.
unsafe impl<const ORDER: u32> Send for Page<ORDER> {}

impl<const ORDER: u32> Page<ORDER> {
    /// Allocates a free block for a free page hint, the way the C driver
    /// does: no reclaim, no retry, no warning, no memalloc reserves. `None`
    /// means the guest has no more free blocks of this order.
    pub(crate) fn alloc_free_block() -> Option<Self> {
        // SAFETY: no preconditions.
        let page = NonNull::new(unsafe { bindings::vbrs_alloc_free_block(ORDER) })?;
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
}

impl<const ORDER: u32> Drop for Page<ORDER> {
    fn drop(&mut self) {
        // SAFETY: we own one reference to a block of this order (type
        // invariant); dropping it frees the block to the buddy allocator.
        unsafe { bindings::vbrs_free_block(self.page.as_ptr(), ORDER) }
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
    page: NonNull<bindings::page>,
}

// SAFETY: a page reference may be dropped from any thread.
unsafe impl Send for HeldPage {}

impl Drop for HeldPage {
    fn drop(&mut self) {
        // SAFETY: we own one reference (type invariant); `put_page` drops it
        // without touching `lru`, which another owner may be using.
        unsafe { bindings::vbrs_free_block(self.page.as_ptr(), 0) }
    }
}

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

/// Scratch space for the bulk page allocator.
pub(crate) struct BulkAlloc {
    pages: KVec<*mut bindings::page>,
}

// SAFETY: the array only holds pointers between a call and the hand-over
// to a list, both under the caller's `&mut`.
unsafe impl Send for BulkAlloc {}

impl BulkAlloc {
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
        let got = unsafe { bindings::vbrs_alloc_balloon_pages_bulk(count_c, slots.as_mut_ptr()) };
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
            list.as_mut().push(Page { page });
            taken += 1;
        }
        taken
    }
}

impl BulkAlloc {
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
    head: Opaque<bindings::list_head>,
    len: usize,
}

// SAFETY: the list owns its pages; the pages may be freed from any thread.
unsafe impl<const ORDER: u32> Send for PageList<ORDER> {}

impl<const ORDER: u32> PageList<ORDER> {
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

    /// Blocks on the list.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Puts `page` on the list.
    pub(crate) fn push(self: Pin<&mut Self>, page: Page<ORDER>) {
        // SAFETY: pinning is kept: only `len` is moved.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: the page is valid and on no list; the list takes its
        // reference (type invariant).
        unsafe { bindings::vbrs_page_list_add(page.into_raw(), this.head.get()) };
        this.len += 1;
    }

    /// Takes a page off the list.
    pub(crate) fn pop(self: Pin<&mut Self>) -> Option<Page<ORDER>> {
        // SAFETY: pinning is kept: only `len` is moved.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: the head is initialised; the helper unlinks the first page.
        let page = NonNull::new(unsafe { bindings::vbrs_page_list_pop(this.head.get()) })?;
        this.len -= 1;
        // INVARIANT: the list owned the page's reference and it is unlinked.
        Some(Page { page })
    }

    /// Moves up to `count` blocks from `other` onto this list; returns how
    /// many it moved.
    pub(crate) fn take_from(mut self: Pin<&mut Self>, mut other: Pin<&mut Self>, count: usize) -> usize {
        let mut moved = 0;
        while moved < count {
            let Some(page) = other.as_mut().pop() else {
                break;
            };
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

/// The owner of a [`BalloonDevInfo`] and its migration callback.
///
/// # Safety
///
/// `OFFSET` must be the byte offset of a `BalloonDevInfo<Self>` field in
/// `Self`, and the owner must stay pinned while pages are in the balloon.
pub(crate) unsafe trait HasBalloonDevInfo: Sized + Sync {
    /// Offset of the `BalloonDevInfo<Self>` field.
    const OFFSET: usize;
    /// Tells the host that the new page replaces the old one in the
    /// balloon. Errors make the core keep the old page (`EAGAIN` to retry
    /// later); on success the core frees the old page unless the owner
    /// holds it ([`MigratingPage::hold`]).
    fn migrate(&self, pages: &MigratingPage<'_>) -> Result;
}

/// Implements [`HasBalloonDevInfo`] for `$owner` whose `$field` is its balloon.
#[macro_export]
macro_rules! impl_has_balloon_dev_info {
    ($owner:ty, $field:ident, $migrate:path) => {
        // SAFETY: the offset is computed by the compiler for this field,
        // whose type is `BalloonDevInfo<$owner>`.
        unsafe impl $crate::mm::HasBalloonDevInfo for $owner {
            const OFFSET: usize = ::core::mem::offset_of!($owner, $field);
            fn migrate(&self, pages: &$crate::mm::MigratingPage<'_>) -> ::kernel::error::Result {
                $migrate(self, pages)
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
    let (owner, pages) = unsafe {
        (
            &*info.cast::<u8>().sub(T::OFFSET).cast::<T>(),
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

/// Order of the blocks handed out as free page hints (`MAX_PAGE_ORDER`, the
/// C driver's choice: 4 MiB with 4 KiB pages).
pub(crate) const HINT_BLOCK_ORDER: u32 = bindings::VBRS_MAX_PAGE_ORDER;

/// The guest's page size as a shift.
pub(crate) const PAGE_SHIFT: u32 = kernel::page::PAGE_SHIFT as u32;

/// What the kernel counts about memory, for the stats queue.
pub(crate) fn memory_snapshot() -> balloon_logic::stats::Snapshot {
    use bindings::*;
    let mut events = [0 as ffi::c_ulong; vm_event_item_NR_VM_EVENT_ITEMS as usize];
    // SAFETY: `events` has room for every VM event counter.
    unsafe { all_vm_events(events.as_mut_ptr()) };
    let event = |item: vm_event_item| events.get(item as usize).map_or(0, |v| *v as u64);
    // SAFETY: `item` is a valid node stat item.
    let node = |item: node_stat_item| unsafe { vbrs_global_node_page_state(item as i32) } as u64;
    let mut info = sysinfo::default();
    // SAFETY: `info` is valid for writes.
    unsafe { si_meminfo(&mut info) };
    // Stalls are counted per zone type; the C driver sums them all.
    let first_stall = vm_event_item_ALLOCSTALL_NORMAL - zone_type_ZONE_NORMAL;
    let alloc_stalls = (0..zone_type___MAX_NR_ZONES)
        .map(|zone| event(first_stall + zone))
        .sum();
    #[cfg(CONFIG_HUGETLB_PAGE)]
    let hugetlb = Some((
        event(vm_event_item_HTLB_BUDDY_PGALLOC),
        event(vm_event_item_HTLB_BUDDY_PGALLOC_FAIL),
    ));
    #[cfg(not(CONFIG_HUGETLB_PAGE))]
    let hugetlb = None;
    balloon_logic::stats::Snapshot {
        vm_events: cfg!(CONFIG_VM_EVENT_COUNTERS),
        swap_in_pages: event(vm_event_item_PSWPIN),
        swap_out_pages: event(vm_event_item_PSWPOUT),
        major_faults: event(vm_event_item_PGMAJFAULT),
        minor_faults: event(vm_event_item_PGFAULT),
        oom_kills: event(vm_event_item_OOM_KILL),
        alloc_stalls,
        async_scan_pages: node(node_stat_item_PGSCAN_KSWAPD),
        direct_scan_pages: node(node_stat_item_PGSCAN_DIRECT),
        async_reclaim_pages: node(node_stat_item_PGSTEAL_KSWAPD),
        direct_reclaim_pages: node(node_stat_item_PGSTEAL_DIRECT),
        hugetlb,
        free_pages: info.freeram as u64,
        total_pages: info.totalram as u64,
        available_pages: available_pages(),
        cache_pages: node(node_stat_item_NR_FILE_PAGES),
    }
}

/// Whether freed pages are poisoned or zeroed, which the host must then
/// preserve (`VIRTIO_BALLOON_F_PAGE_POISON`).
pub(crate) fn poisons_free_pages() -> bool {
    // SAFETY: no preconditions.
    unsafe { bindings::vbrs_want_init_on_free() || bindings::vbrs_page_poisoning_enabled() }
}

/// Whether freed pages are zeroed (`init_on_free`).
pub(crate) fn zeroes_free_pages() -> bool {
    // SAFETY: no preconditions.
    unsafe { bindings::vbrs_want_init_on_free() }
}

/// The owner of an [`OomNotifier`].
///
/// # Safety
///
/// `OFFSET` must be the byte offset of an `OomNotifier<Self>` field in
/// `Self`, and the owner must stay pinned while the notifier is registered.
pub(crate) unsafe trait HasOomNotifier: Sized + Sync {
    /// Offset of the `OomNotifier<Self>` field.
    const OFFSET: usize;
    /// The guest is out of memory: free what can be freed, return the
    /// number of pages freed (process context, may sleep).
    fn out_of_memory(&self) -> u64;
}

/// Implements [`HasOomNotifier`] for `$owner` whose `$field` is its notifier.
#[macro_export]
macro_rules! impl_has_oom_notifier {
    ($owner:ty, $field:ident, $handler:path) => {
        // SAFETY: the offset is computed by the compiler for this field,
        // whose type is `OomNotifier<$owner>`.
        unsafe impl $crate::mm::HasOomNotifier for $owner {
            const OFFSET: usize = ::core::mem::offset_of!($owner, $field);
            fn out_of_memory(&self) -> u64 {
                $handler(self)
            }
        }
    };
}

/// A registration with the OOM notifier chain, called before the OOM killer
/// picks a victim.
#[pin_data(PinnedDrop)]
pub(crate) struct OomNotifier<T> {
    #[pin]
    block: Opaque<bindings::notifier_block>,
    registered: AtomicBool,
    _owner: PhantomData<T>,
}

// SAFETY: the notifier chain serialises calls; the block is only changed
// under `&mut`.
unsafe impl<T> Sync for OomNotifier<T> {}
// SAFETY: same.
unsafe impl<T> Send for OomNotifier<T> {}

/// Notifier callback: forwards to the owner.
///
/// # Safety
///
/// Called by the OOM notifier chain with the block of a registered
/// [`OomNotifier<T>`] and a pointer to the freed-pages counter.
unsafe extern "C" fn oom_callback<T: HasOomNotifier>(
    block: *mut bindings::notifier_block,
    _event: ffi::c_ulong,
    freed: *mut ffi::c_void,
) -> i32 {
    // SAFETY: `block` is the `block` field of a live `OomNotifier<T>` at
    // `T::OFFSET` in a pinned `T` (trait contract); `freed` points to the
    // caller's `unsigned long` counter.
    unsafe {
        let owner = block.cast::<u8>().sub(T::OFFSET).cast::<T>();
        let pages = (*owner).out_of_memory();
        let freed = freed.cast::<ffi::c_ulong>();
        *freed = (*freed).saturating_add(pages as ffi::c_ulong);
    }
    bindings::VBRS_NOTIFY_OK
}

impl<T: HasOomNotifier> OomNotifier<T> {
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
            registered: AtomicBool::new(false),
            _owner: PhantomData,
        })
    }

    /// Joins the OOM notifier chain (the driver core serialises this with
    /// [`OomNotifier::unregister`]).
    pub(crate) fn register(&self) -> Result {
        if self.registered.load(Ordering::Acquire) {
            return Ok(());
        }
        // SAFETY: the block is initialised and pinned; it stays registered
        // until `unregister` or drop.
        to_result(unsafe { bindings::register_oom_notifier(self.block.get()) })?;
        self.registered.store(true, Ordering::Release);
        Ok(())
    }

    /// Leaves the chain; waits for a running callback to finish.
    pub(crate) fn unregister(&self) {
        if self.registered.swap(false, Ordering::AcqRel) {
            // SAFETY: the block was registered by `register`.
            unsafe { bindings::unregister_oom_notifier(self.block.get()) };
        }
    }
}

#[pinned_drop]
impl<T> PinnedDrop for OomNotifier<T> {
    fn drop(self: Pin<&mut Self>) {
        if self.registered.load(Ordering::Acquire) {
            // SAFETY: the block was registered and is still pinned.
            unsafe { bindings::unregister_oom_notifier(self.block.get()) };
        }
    }
}

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
/// `OFFSET` must be the byte offset of a `PageReporting<Self>` field in
/// `Self`, and the owner must stay pinned while it is registered.
pub(crate) unsafe trait HasPageReporting: Sized + Sync {
    /// Offset of the `PageReporting<Self>` field.
    const OFFSET: usize;
    /// Reports `pages` to the host; returns once the host has them.
    fn report(&self, pages: &ReportedPages<'_>) -> Result;
}

/// Implements [`HasPageReporting`] for `$owner` whose `$field` is its
/// page reporting registration.
#[macro_export]
macro_rules! impl_has_page_reporting {
    ($owner:ty, $field:ident, $report:path) => {
        // SAFETY: the offset is computed by the compiler for this field,
        // whose type is `PageReporting<$owner>`.
        unsafe impl $crate::mm::HasPageReporting for $owner {
            const OFFSET: usize = ::core::mem::offset_of!($owner, $field);
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
    registered: AtomicBool,
    _owner: PhantomData<T>,
}

// SAFETY: the page reporting core serialises reports; the descriptor is
// only changed under `&mut`.
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
    // SAFETY: `info` is the `info` field of a live `PageReporting<T>` at
    // `T::OFFSET` in a pinned `T` (trait contract).
    let owner = unsafe { &*info.cast::<u8>().sub(T::OFFSET).cast::<T>() };
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
            registered: AtomicBool::new(false),
            _owner: PhantomData,
        })
    }

    /// Starts reporting free pages in batches of at most `capacity` (the
    /// driver core serialises this with [`PageReporting::unregister`]).
    pub(crate) fn register(&self, capacity: u32) -> Result {
        if self.registered.load(Ordering::Acquire) {
            return Ok(());
        }
        let info = self.info.get();
        // SAFETY: the descriptor is not registered, so no one else reads it;
        // after registration the core owns it until `unregister`.
        unsafe {
            (*info).report = Some(report_callback::<T>);
            (*info).order = reporting_order();
            (*info).capacity = capacity;
            to_result(bindings::page_reporting_register(info))?;
        }
        self.registered.store(true, Ordering::Release);
        Ok(())
    }

    /// Stops reporting; waits for a report in progress.
    pub(crate) fn unregister(&self) {
        if self.registered.swap(false, Ordering::AcqRel) {
            // SAFETY: registered by `register`.
            unsafe { bindings::page_reporting_unregister(self.info.get()) };
        }
    }
}

#[pinned_drop]
impl<T> PinnedDrop for PageReporting<T> {
    fn drop(self: Pin<&mut Self>) {
        if self.registered.load(Ordering::Acquire) {
            // SAFETY: registered and still pinned.
            unsafe { bindings::page_reporting_unregister(self.info.get()) };
        }
    }
}

/// The owner of a [`Shrinker`].
///
/// # Safety
///
/// `OFFSET` must be the byte offset of a `Shrinker<Self>` field in `Self`,
/// and the owner must stay pinned while the shrinker is registered.
pub(crate) unsafe trait HasShrinker: Sized + Sync {
    /// Offset of the `Shrinker<Self>` field.
    const OFFSET: usize;
    /// Pages the owner could free.
    fn count(&self) -> u64;
    /// Frees up to `pages` pages and returns how many it freed.
    fn scan(&self, pages: u64) -> u64;
}

/// Implements [`HasShrinker`] for `$owner` whose `$field` is its shrinker.
#[macro_export]
macro_rules! impl_has_shrinker {
    ($owner:ty, $field:ident, $count:path, $scan:path) => {
        // SAFETY: the offset is computed by the compiler for this field,
        // whose type is `Shrinker<$owner>`.
        unsafe impl $crate::mm::HasShrinker for $owner {
            const OFFSET: usize = ::core::mem::offset_of!($owner, $field);
            fn count(&self) -> u64 {
                $count(self)
            }
            fn scan(&self, pages: u64) -> u64 {
                $scan(self, pages)
            }
        }
    };
}

/// A memory shrinker: reclaim asks the owner for pages it can give back.
///
/// # Invariants
///
/// `shrinker` is null or a shrinker from `shrinker_alloc` whose
/// `private_data` is the pinned owner, registered until `unregister`.
#[pin_data(PinnedDrop)]
pub(crate) struct Shrinker<T> {
    shrinker: core::sync::atomic::AtomicPtr<bindings::shrinker>,
    _owner: PhantomData<T>,
}

/// Shrinker count callback.
///
/// # Safety
///
/// Called by reclaim with a shrinker registered by [`Shrinker::register`].
unsafe extern "C" fn shrinker_count<T: HasShrinker>(
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
unsafe extern "C" fn shrinker_scan<T: HasShrinker>(
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

impl<T: HasShrinker> Shrinker<T> {
    /// An initialiser for an unregistered shrinker.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            shrinker: core::sync::atomic::AtomicPtr::new(core::ptr::null_mut()),
            _owner: PhantomData,
        })
    }

    /// Allocates and registers the shrinker under `name`.
    pub(crate) fn register(&self, name: &CStr) -> Result {
        if !self.shrinker.load(Ordering::Acquire).is_null() {
            return Ok(());
        }
        // SAFETY: `name` is a valid C string; "%s" takes it as the one
        // variadic argument.
        let shrinker =
            unsafe { bindings::shrinker_alloc(0, c"%s".as_char_ptr(), name.as_char_ptr()) };
        if shrinker.is_null() {
            return Err(ENOMEM);
        }
        // The owner is pinned and embeds `self` at `T::OFFSET`.
        let owner = core::ptr::from_ref(self)
            .cast::<u8>()
            .wrapping_sub(T::OFFSET);
        // SAFETY: `shrinker` is freshly allocated and not yet registered;
        // INVARIANT: its `private_data` is the pinned owner.
        unsafe {
            (*shrinker).count_objects = Some(shrinker_count::<T>);
            (*shrinker).scan_objects = Some(shrinker_scan::<T>);
            (*shrinker).private_data = owner.cast_mut().cast();
            bindings::shrinker_register(shrinker);
        }
        self.shrinker.store(shrinker, Ordering::Release);
        Ok(())
    }

    /// Unregisters and frees the shrinker; waits for running callbacks.
    pub(crate) fn unregister(&self) {
        let shrinker = self.shrinker.swap(core::ptr::null_mut(), Ordering::AcqRel);
        if !shrinker.is_null() {
            // SAFETY: allocated and registered by `register`; taken out of
            // `self`, so freed once.
            unsafe { bindings::shrinker_free(shrinker) };
        }
    }
}

#[pinned_drop]
impl<T> PinnedDrop for Shrinker<T> {
    fn drop(self: Pin<&mut Self>) {
        let shrinker = self.shrinker.swap(core::ptr::null_mut(), Ordering::AcqRel);
        if !shrinker.is_null() {
            // SAFETY: allocated and registered by `register`.
            unsafe { bindings::shrinker_free(shrinker) };
        }
    }
}
