// SPDX-License-Identifier: GPL-2.0

//! The memory-management figures the driver reads: RAM, `MemAvailable`,
//! the stats counters, and how freed pages are initialised.

use kernel::ffi;

use crate::bindings;

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
