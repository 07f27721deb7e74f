// SPDX-License-Identifier: GPL-2.0

//! Memory statistics sent on the stats queue (`VIRTIO_BALLOON_F_STATS_VQ`).
//!
//! The wire format is an array of packed `{ le16 tag; le64 val; }` records
//! (native-endian on a legacy device), in the order and units the C driver
//! uses, so hosts that parse it (QEMU's `guest-stats`) see the same thing.

/// Tags of the statistics (virtio spec 5.5.6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Tag {
    /// Memory swapped in, in bytes.
    SwapIn = 0,
    /// Memory swapped out, in bytes.
    SwapOut = 1,
    /// Major page faults.
    MajorFaults = 2,
    /// Minor page faults.
    MinorFaults = 3,
    /// Free memory, in bytes.
    MemFree = 4,
    /// Total memory, in bytes.
    MemTotal = 5,
    /// Available memory (`MemAvailable`), in bytes.
    Available = 6,
    /// Page cache, in bytes.
    Caches = 7,
    /// Successful hugetlb page allocations.
    HugetlbAllocations = 8,
    /// Failed hugetlb page allocations.
    HugetlbFailures = 9,
    /// OOM killer invocations.
    OomKills = 10,
    /// Allocation stalls.
    AllocStalls = 11,
    /// Memory scanned by kswapd, in bytes.
    AsyncScans = 12,
    /// Memory scanned by direct reclaim, in bytes.
    DirectScans = 13,
    /// Memory reclaimed by kswapd, in bytes.
    AsyncReclaims = 14,
    /// Memory reclaimed by direct reclaim, in bytes.
    DirectReclaims = 15,
}

/// Number of tags the spec defines.
pub const MAX_STATS: usize = 16;

/// Bytes of one packed record.
pub const RECORD_SIZE: usize = 10;

/// Bytes of a buffer that holds every statistic.
pub const BUFFER_SIZE: usize = MAX_STATS * RECORD_SIZE;

/// Raw figures from the guest, in pages or counts as the kernel keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The VM event counters are compiled in (`CONFIG_VM_EVENT_COUNTERS`).
    pub vm_events: bool,
    /// Pages swapped in (`pswpin`).
    pub swap_in_pages: u64,
    /// Pages swapped out (`pswpout`).
    pub swap_out_pages: u64,
    /// Major faults (`pgmajfault`).
    pub major_faults: u64,
    /// All faults (`pgfault`).
    pub minor_faults: u64,
    /// OOM kills (`oom_kill`).
    pub oom_kills: u64,
    /// Allocation stalls, summed over the zones (`allocstall_*`).
    pub alloc_stalls: u64,
    /// Pages scanned by kswapd (`pgscan_kswapd`).
    pub async_scan_pages: u64,
    /// Pages scanned by direct reclaim (`pgscan_direct`).
    pub direct_scan_pages: u64,
    /// Pages reclaimed by kswapd (`pgsteal_kswapd`).
    pub async_reclaim_pages: u64,
    /// Pages reclaimed by direct reclaim (`pgsteal_direct`).
    pub direct_reclaim_pages: u64,
    /// Hugetlb allocations and failures, when `CONFIG_HUGETLB_PAGE` is set.
    pub hugetlb: Option<(u64, u64)>,
    /// Free pages.
    pub free_pages: u64,
    /// Total RAM pages (`totalram_pages`).
    pub total_pages: u64,
    /// Available pages (`si_mem_available`, clamped at 0).
    pub available_pages: u64,
    /// Page cache pages (`NR_FILE_PAGES`).
    pub cache_pages: u64,
}

impl Snapshot {
    /// The statistics in the C driver's order, values in the spec's units.
    pub fn records(&self, page_shift: u32) -> ([(Tag, u64); MAX_STATS], usize) {
        let bytes = |pages: u64| pages.saturating_mul(1u64 << page_shift);
        let mut out = [(Tag::SwapIn, 0u64); MAX_STATS];
        let mut n = 0;
        let mut push = |tag, value| {
            out[n] = (tag, value);
            n += 1;
        };
        if self.vm_events {
            push(Tag::SwapIn, bytes(self.swap_in_pages));
            push(Tag::SwapOut, bytes(self.swap_out_pages));
            push(Tag::MajorFaults, self.major_faults);
            push(Tag::MinorFaults, self.minor_faults);
            push(Tag::OomKills, self.oom_kills);
            push(Tag::AllocStalls, self.alloc_stalls);
            push(Tag::AsyncScans, bytes(self.async_scan_pages));
            push(Tag::DirectScans, bytes(self.direct_scan_pages));
            push(Tag::AsyncReclaims, bytes(self.async_reclaim_pages));
            push(Tag::DirectReclaims, bytes(self.direct_reclaim_pages));
            if let Some((alloc, fail)) = self.hugetlb {
                push(Tag::HugetlbAllocations, alloc);
                push(Tag::HugetlbFailures, fail);
            }
        }
        push(Tag::MemFree, bytes(self.free_pages));
        push(Tag::MemTotal, bytes(self.total_pages));
        push(Tag::Available, bytes(self.available_pages));
        push(Tag::Caches, bytes(self.cache_pages));
        (out, n)
    }

    /// Writes the packed records into `out` and returns the bytes used.
    pub fn encode(
        &self,
        page_shift: u32,
        little_endian: bool,
        out: &mut [u8; BUFFER_SIZE],
    ) -> usize {
        let (records, count) = self.records(page_shift);
        for (i, (tag, value)) in records.iter().take(count).enumerate() {
            let record = &mut out[i * RECORD_SIZE..(i + 1) * RECORD_SIZE];
            let tag = *tag as u16;
            if little_endian {
                record[..2].copy_from_slice(&tag.to_le_bytes());
                record[2..].copy_from_slice(&value.to_le_bytes());
            } else {
                record[..2].copy_from_slice(&tag.to_ne_bytes());
                record[2..].copy_from_slice(&value.to_ne_bytes());
            }
        }
        count * RECORD_SIZE
    }
}
