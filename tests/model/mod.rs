// SPDX-License-Identifier: GPL-2.0

//! A model of guest memory, of the kernel's balloon and migration core, and
//! of the host side of the balloon device, with hosts that are slow, dead,
//! broken or refuse buffers, and that read buffers by the rules of QEMU,
//! Firecracker, cloud-hypervisor or crosvm. It checks every buffer the
//! driver sends and every page the driver frees, and that the host saw
//! every page the guest counts in the balloon.

#![allow(dead_code)]

use std::collections::BTreeSet;

use balloon_logic::engine::{Backend, HostError};
use balloon_logic::features::QueueRole;
use balloon_logic::format::PFNS_PER_BLOCK;
use balloon_logic::pfn::{PageGeometry, PFNS_PER_BUFFER};

/// Whose balloon device reads the buffers, by the rules in its source (see
/// `balloon_logic::format` for the files and functions). The driver sends
/// every buffer as one descriptor, so the rules about the other
/// descriptors of a chain (Firecracker and kvmtool read only the head one)
/// never come into play here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    /// Reads every buffer whole, frees nothing in particular: the model
    /// the tests had before the VMM profiles.
    Reference,
    /// `virtio_balloon_handle_output`: reads every PFN; with huge-page
    /// backing, frees a host huge page only when its 512 PFNs come one
    /// after the other in one element; a deflate refaults the whole host
    /// page.
    Qemu,
    /// `process_inflate`: an inflate descriptor longer than 256 PFNs is
    /// skipped and never returned; deflates are returned unread.
    Firecracker,
    /// `process_queue`: a descriptor longer than 256 PFNs is skipped but
    /// returned, so the host never sees its PFNs.
    CloudHypervisor,
    /// `handle_address_chain`: reads every PFN, merges neighbours into
    /// ranges and frees each range, which frees a host huge page the range
    /// covers.
    Crosvm,
}

/// The most PFNs Firecracker and cloud-hypervisor read from a descriptor.
const MAX_PAGES_IN_DESC: usize = 256;

/// How the host answers the next buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMode {
    /// Returns every buffer at once.
    Prompt,
    /// Misses the deadline, then processes and returns the buffer when the
    /// test calls [`Model::deliver_late`].
    Slow,
    /// Never returns a buffer (until a device reset).
    Dead,
    /// Every add fails for good (a surprise-removed device).
    Broken,
    /// Every add fails for now (ring full, no memory).
    Refusing,
}

/// A buffer the host holds past the deadline.
#[derive(Debug, Clone)]
pub struct LateBuffer {
    pub queue: QueueRole,
    pub pfns: Vec<u32>,
    /// The most PFNs in one of its buffers (several go out at once).
    pub per_buffer: usize,
    /// The guest pages the buffer names.
    pub pages: BTreeSet<u64>,
    /// Set once the host processed it and handed it back.
    pub returned: bool,
    /// A dead host never hands it back.
    pub dead: bool,
    /// Tells late buffers apart.
    pub serial: u64,
}

/// What the migration core is doing with one balloon page.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub old: u64,
    pub new: u64,
}

/// Guest memory plus the host side of the balloon device.
pub struct Model {
    pub geometry: PageGeometry,
    /// Guest pages that are free (guest PFNs).
    pub free: BTreeSet<u64>,
    /// Pages allocated for an inflate, not yet acknowledged.
    pub staged_inflate: Vec<u64>,
    /// Pages taken out of the balloon for a deflate, not yet freed.
    pub staged_deflate: Vec<u64>,
    /// Pages on the guest's balloon list.
    pub balloon: Vec<u64>,
    /// First guest PFN of each 2 MiB block allocated for an inflate, not
    /// yet acknowledged.
    pub staged_inflate_blocks: Vec<u64>,
    /// Blocks taken out of the balloon for a deflate, not yet freed.
    pub staged_deflate_blocks: Vec<u64>,
    /// Blocks in the balloon (never isolated: unmovable).
    pub balloon_blocks: Vec<u64>,
    /// Block allocation fails after this many more blocks (None: never).
    pub block_alloc_left: Option<u64>,
    /// Whole blocks one allocation call makes at most, as compaction makes
    /// them a few at a time (`None`: as many as are free).
    pub blocks_per_call: Option<u64>,
    /// Whose device reads the buffers.
    pub vmm: Vmm,
    /// Guest RAM is backed by 2 MiB host huge pages (hugetlbfs).
    pub host_huge_pages: bool,
    /// Host huge pages (guest PFN >> 9 of 4 KiB PFNs) the host freed and
    /// did not refault.
    pub huge_freed: BTreeSet<u64>,
    /// Host huge pages freed since boot.
    pub huge_frees: u64,
    /// Buffers the host skipped (never saw their PFNs), by length.
    pub skipped: Vec<usize>,
    /// The device was reset and the driver has not forgotten its pages yet.
    after_reset: bool,
    /// Balloon pages isolated by the migration core.
    pub isolated: Vec<u64>,
    /// Old pages of migrations the driver holds away from the allocator.
    pub held: Vec<u64>,
    /// Set by `hold_migrated_page` during a migration callback.
    hold_requested: bool,
    /// Pages the guest uses for something else (see [`Model::fragment`]).
    pub pinned: Vec<u64>,
    /// Balloon PFNs the host believes are ballooned.
    pub host_ballooned: BTreeSet<u32>,
    pub num_pages: u32,
    pub actual: u32,
    pub actual_writes: Vec<u32>,
    pub buffers: Vec<(QueueRole, usize)>,
    /// Allocation fails after this many more pages (None: never).
    pub alloc_left: Option<u64>,
    pub available_override: Option<u64>,
    pub mode: HostMode,
    /// With `Some(n)`, the next `n` buffers are answered at once whatever
    /// `mode` says (e.g. a migration's inflate), the rest as `mode` says.
    pub prompt_for: Option<usize>,
    /// A target the host sets while the next buffer is with it.
    pub target_while_told: Option<u32>,
    pub late: Option<LateBuffer>,
    late_buffers: u64,
    /// Guest pages hot-plugged since boot.
    pub hotplugged: u64,
    first_pfn: u64,
    total: u64,
}

impl Model {
    /// A guest of `guest_pages` pages of `1 << page_shift` bytes, all free.
    pub fn new(page_shift: u32, guest_pages: u64) -> Self {
        Self {
            geometry: PageGeometry::new(page_shift).expect("supported page size"),
            free: (1000..1000 + guest_pages).collect(),
            staged_inflate: Vec::new(),
            staged_deflate: Vec::new(),
            balloon: Vec::new(),
            staged_inflate_blocks: Vec::new(),
            staged_deflate_blocks: Vec::new(),
            balloon_blocks: Vec::new(),
            block_alloc_left: None,
            blocks_per_call: None,
            vmm: Vmm::Reference,
            host_huge_pages: false,
            huge_freed: BTreeSet::new(),
            huge_frees: 0,
            skipped: Vec::new(),
            after_reset: false,
            isolated: Vec::new(),
            held: Vec::new(),
            hold_requested: false,
            pinned: Vec::new(),
            host_ballooned: BTreeSet::new(),
            num_pages: 0,
            actual: 0,
            actual_writes: Vec::new(),
            buffers: Vec::new(),
            alloc_left: None,
            available_override: None,
            mode: HostMode::Prompt,
            prompt_for: None,
            target_while_told: None,
            late: None,
            late_buffers: 0,
            hotplugged: 0,
            first_pfn: 1000,
            total: guest_pages,
        }
    }

    /// Every guest page the model knows of.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// A guest like [`Model::new`] whose host follows `vmm`'s rules.
    pub fn for_vmm(vmm: Vmm, page_shift: u32, guest_pages: u64) -> Self {
        Self {
            vmm,
            host_huge_pages: true,
            ..Self::new(page_shift, guest_pages)
        }
    }

    /// Guest pages in a 2 MiB block.
    pub fn block_pages(&self) -> u64 {
        (PFNS_PER_BLOCK as u64) >> self.geometry.balloon_pages_per_page().trailing_zeros()
    }

    /// The guest pages of the block starting at `first`.
    fn block_range(&self, first: u64) -> std::ops::Range<u64> {
        first..first + self.block_pages()
    }

    /// Guest pages in the balloon: single pages (isolated ones included)
    /// and the pages of blocks.
    pub fn balloon_pages(&self) -> u64 {
        (self.balloon.len() + self.isolated.len()) as u64
            + self.balloon_blocks.len() as u64 * self.block_pages()
    }

    /// Frees single pages so that no 2 MiB block is free any more: one
    /// page of every aligned block is taken away for good.
    pub fn fragment(&mut self) {
        let per = self.block_pages();
        let pinned: Vec<u64> = self
            .free
            .iter()
            .copied()
            .filter(|pfn| pfn % per == per / 2)
            .collect();
        for pfn in pinned {
            self.free.remove(&pfn);
            self.pinned.push(pfn);
        }
    }

    /// Adds `pages` free guest pages (memory hot-plug).
    pub fn hotplug(&mut self, pages: u64) {
        let start = self.first_pfn + self.total;
        self.free.extend(start..start + pages);
        self.total += pages;
        self.hotplugged += pages;
    }

    /// Every page is in exactly one place, the host's view matches the
    /// guest's balloon, and no page the host may still read is free.
    pub fn check(&self) {
        let mut seen = BTreeSet::new();
        let block_pages: Vec<u64> = self
            .staged_inflate_blocks
            .iter()
            .chain(&self.staged_deflate_blocks)
            .chain(&self.balloon_blocks)
            .flat_map(|first| {
                assert_eq!(first % self.block_pages(), 0, "block {first} not aligned");
                self.block_range(*first)
            })
            .collect();
        for page in self
            .free
            .iter()
            .chain(&self.staged_inflate)
            .chain(&self.staged_deflate)
            .chain(&self.balloon)
            .chain(&self.isolated)
            .chain(&self.held)
            .chain(&self.pinned)
            .chain(&block_pages)
        {
            assert!(seen.insert(*page), "page {page} is in two places at once");
        }
        assert_eq!(
            seen.len() as u64,
            self.total,
            "a guest page was lost or duplicated"
        );
        if let Some(late) = self.late.as_ref().filter(|late| !late.returned) {
            for guest in &late.pages {
                assert!(
                    !self.free.contains(guest),
                    "page {guest} freed while the host may still read the {:?} buffer naming it",
                    late.queue
                );
            }
        }
        let per = u64::from(self.geometry.balloon_pages_per_page());
        let ballooned_pages: BTreeSet<u64> = self
            .host_ballooned
            .iter()
            .map(|pfn| self.geometry.guest_pfn(*pfn))
            .collect();
        for page in &ballooned_pages {
            assert!(
                !self.free.contains(page),
                "MUST_TELL_HOST: page {page} is free while the host has it ballooned"
            );
        }
        // A deflate the host processed but the driver has not collected yet
        // still counts: `actual` follows once the driver sees it back.
        let deflating = self
            .late
            .as_ref()
            .filter(|late| late.queue == QueueRole::Deflate)
            .map_or(0, |late| late.pfns.len());
        assert!(
            u64::from(self.actual) <= (self.host_ballooned.len() + deflating) as u64,
            "actual {} claims more than the host was told of ({} pages)",
            self.actual,
            self.host_ballooned.len()
        );
        assert_eq!(self.host_ballooned.len() as u64 % per, 0);
        self.check_host_saw_the_balloon();
    }

    /// Every page the guest counts in the balloon was told to the host:
    /// a host that skipped a buffer it returned leaves ballooned pages the
    /// host never heard of (it keeps backing them, and `actual` lies).
    pub fn check_host_saw_the_balloon(&self) {
        if self.after_reset {
            return;
        }
        // A late inflate the host still holds may name pages the guest
        // already counts (a migration's new page).
        let unanswered: BTreeSet<u64> = self
            .late
            .as_ref()
            .filter(|late| !late.returned && late.queue == QueueRole::Inflate)
            .map(|late| late.pages.clone())
            .unwrap_or_default();
        let per = self.geometry.balloon_pages_per_page();
        // Pages staged for a deflate are on their way out: the host may
        // have processed the deflate already.
        let blocks = self
            .balloon_blocks
            .iter()
            .flat_map(|first| self.block_range(*first));
        for page in self
            .balloon
            .iter()
            .chain(&self.isolated)
            .copied()
            .chain(blocks)
        {
            if unanswered.contains(&page) {
                continue;
            }
            let first = self.geometry.balloon_pfn(page).expect("valid pfn");
            for pfn in first..first + per {
                assert!(
                    self.host_ballooned.contains(&pfn),
                    "UNTOLD: page {page} counts in the balloon but the host never saw it ({:?})",
                    self.vmm
                );
            }
        }
    }

    /// The host processes the late buffer and hands it back.
    pub fn deliver_late(&mut self) {
        let Some(late) = self.late.as_mut() else {
            return;
        };
        if late.returned || late.dead {
            return;
        }
        late.returned = true;
        let (queue, pfns, per_buffer) = (late.queue, late.pfns.clone(), late.per_buffer);
        for buffer in pfns.chunks(per_buffer) {
            self.vmm_process(queue, buffer);
        }
    }

    /// The device is reset: the host forgets every buffer and page.
    pub fn reset(&mut self) {
        self.after_reset = true;
        self.host_ballooned.clear();
        self.actual = 0;
        self.late = None;
    }

    /// Compaction isolates the balloon page at `index` (modulo the list).
    pub fn isolate(&mut self, index: usize) -> Option<u64> {
        if self.balloon.is_empty() {
            return None;
        }
        let page = self.balloon.remove(index % self.balloon.len());
        self.isolated.push(page);
        Some(page)
    }

    /// The migration core gives every isolated page back to the balloon.
    pub fn putback_isolated(&mut self) {
        self.balloon.append(&mut self.isolated);
    }

    /// The migration core moves isolated page `old` to a free page, calling
    /// `migrate` (the driver's callback) as the balloon core does.
    pub fn migrate_with(
        &mut self,
        old: u64,
        migrate: impl FnOnce(&mut Self, u64) -> Result<(), HostError>,
    ) -> Result<(), HostError> {
        let Some(new) = self.free.pop_last() else {
            self.isolated.retain(|p| *p != old);
            self.balloon.push(old);
            return Err(HostError::Queue);
        };
        assert!(
            self.isolated.contains(&old),
            "migrating a page not isolated"
        );
        self.hold_requested = false;
        let result = migrate(self, new);
        self.isolated.retain(|p| *p != old);
        match result {
            Ok(()) => {
                self.balloon.push(new);
                if std::mem::take(&mut self.hold_requested) {
                    self.held.push(old);
                } else {
                    self.free_checked(old);
                }
            }
            Err(_) => {
                assert!(
                    !self.hold_requested,
                    "held a page of a migration that failed"
                );
                self.balloon.push(old);
                self.free_checked(new);
            }
        }
        result
    }

    fn free_checked(&mut self, page: u64) {
        let first = self.geometry.balloon_pfn(page).expect("valid pfn");
        for pfn in first..first + self.geometry.balloon_pages_per_page() {
            assert!(
                !self.host_ballooned.contains(&pfn),
                "MUST_TELL_HOST: page {page} freed before the host was told"
            );
        }
        if let Some(late) = self.late.as_ref().filter(|late| !late.returned) {
            assert!(
                !late.pages.contains(&page),
                "page {page} freed while the host may still read a buffer naming it"
            );
        }
        assert!(self.free.insert(page), "double free of {page}");
    }

    /// Whether the host hands the buffer back at all.
    fn vmm_returns(&self, queue: QueueRole, pfns: &[u32]) -> bool {
        !(self.vmm == Vmm::Firecracker
            && queue == QueueRole::Inflate
            && pfns.len() > MAX_PAGES_IN_DESC)
    }

    /// The host reads a buffer it hands back, by its VMM's rules.
    fn vmm_process(&mut self, queue: QueueRole, pfns: &[u32]) {
        let skip = match self.vmm {
            Vmm::CloudHypervisor | Vmm::Firecracker => pfns.len() > MAX_PAGES_IN_DESC,
            Vmm::Reference | Vmm::Qemu | Vmm::Crosvm => false,
        };
        if skip {
            self.skipped.push(pfns.len());
            return;
        }
        self.process(queue, pfns);
        if !self.host_huge_pages {
            return;
        }
        let pfns: Vec<u32> = pfns.iter().map(|p| u32::from_le(*p)).collect();
        let huge = PFNS_PER_BLOCK as u32;
        match (self.vmm, queue) {
            (Vmm::Qemu, QueueRole::Inflate) => {
                // `balloon_inflate_page`: one partially ballooned page per
                // element, dropped when a PFN of another host page comes.
                let mut partial: Option<(u32, BTreeSet<u32>)> = None;
                for pfn in pfns {
                    let host_page = pfn / huge;
                    if partial.as_ref().is_none_or(|(page, _)| *page != host_page) {
                        partial = Some((host_page, BTreeSet::new()));
                    }
                    let (_, bits) = partial.as_mut().expect("set above");
                    bits.insert(pfn % huge);
                    if bits.len() == PFNS_PER_BLOCK {
                        self.free_huge_page(u64::from(host_page));
                        partial = None;
                    }
                }
            }
            (Vmm::Crosvm, QueueRole::Inflate) => {
                // `handle_address_chain`: neighbours merge into ranges,
                // ascending or one below the range's start.
                let mut ranges: Vec<(u32, u32)> = Vec::new();
                let (mut start, mut len) = (0u32, 0u32);
                for pfn in pfns {
                    if len > 0 && start + len == pfn {
                        len += 1;
                    } else if len > 0 && start == pfn + 1 {
                        start = pfn;
                        len += 1;
                    } else {
                        if len > 0 {
                            ranges.push((start, len));
                        }
                        (start, len) = (pfn, 1);
                    }
                }
                if len > 0 {
                    ranges.push((start, len));
                }
                for (start, len) in ranges {
                    let first = start.div_ceil(huge);
                    let end = (start + len) / huge;
                    for host_page in first..end {
                        self.free_huge_page(u64::from(host_page));
                    }
                }
            }
            (Vmm::Qemu | Vmm::Crosvm, QueueRole::Deflate) => {
                // The whole host page comes back on the first touch.
                for pfn in pfns {
                    self.huge_freed.remove(&u64::from(pfn / huge));
                }
            }
            _ => {}
        }
    }

    fn free_huge_page(&mut self, host_page: u64) {
        if self.huge_freed.insert(host_page) {
            self.huge_frees += 1;
        }
    }

    /// Checks a buffer's shape and applies it to the host's view.
    fn process(&mut self, queue: QueueRole, pfns: &[u32]) {
        for pfn in pfns.iter().map(|p| u32::from_le(*p)) {
            match queue {
                QueueRole::Inflate => {
                    assert!(self.host_ballooned.insert(pfn), "pfn {pfn} inflated twice");
                }
                QueueRole::Deflate => {
                    assert!(
                        self.host_ballooned.remove(&pfn),
                        "pfn {pfn} deflated but not ballooned"
                    );
                }
                other => panic!("PFNs sent on the {other:?} queue"),
            }
        }
    }

    fn pages_of(&self, pfns: &[u32]) -> BTreeSet<u64> {
        pfns.iter()
            .map(|pfn| self.geometry.guest_pfn(u32::from_le(*pfn)))
            .collect()
    }

    /// The host keeps the buffers of one [`Backend::tell_host`] call (a
    /// `dead` host for ever): to the driver, a timeout.
    fn go_late(
        &mut self,
        dead: bool,
        queue: QueueRole,
        pfns: &[u32],
        per_buffer: usize,
    ) -> Result<(), HostError> {
        self.late_buffers += 1;
        self.late = Some(LateBuffer {
            dead,
            serial: self.late_buffers,
            queue,
            pfns: pfns.to_vec(),
            per_buffer,
            pages: self.pages_of(pfns),
            returned: false,
        });
        self.push_buffers(queue, pfns, per_buffer);
        Err(HostError::Timeout)
    }

    /// Records the buffers of one [`Backend::tell_host`] call.
    fn push_buffers(&mut self, queue: QueueRole, pfns: &[u32], per_buffer: usize) {
        for buffer in pfns.chunks(per_buffer) {
            self.buffers.push((queue, buffer.len()));
        }
    }

    fn check_shape(&self, queue: QueueRole, pfns: &[u32], per_buffer: usize) {
        assert!(!pfns.is_empty(), "empty buffer sent");
        assert!(
            per_buffer <= PFNS_PER_BUFFER,
            "buffer larger than the array"
        );
        let per = self.geometry.balloon_pages_per_page() as usize;
        assert_eq!(pfns.len() % per, 0, "partial guest page in a buffer");
        for chunk in pfns.chunks(per) {
            let first = u32::from_le(chunk[0]);
            assert_eq!(
                first % per as u32,
                0,
                "balloon PFN not at a guest page start"
            );
            for (i, pfn) in chunk.iter().enumerate() {
                assert_eq!(
                    u32::from_le(*pfn),
                    first + i as u32,
                    "non-contiguous sub-pages"
                );
            }
        }
        // Every staged block goes whole into this buffer, its pages one
        // after the other.
        let blocks = match queue {
            QueueRole::Inflate => &self.staged_inflate_blocks,
            _ => &self.staged_deflate_blocks,
        };
        let values: Vec<u32> = pfns.iter().map(|p| u32::from_le(*p)).collect();
        for first in blocks {
            let first_pfn = self.geometry.balloon_pfn(*first).expect("valid pfn");
            let at = values
                .iter()
                .position(|pfn| *pfn == first_pfn)
                .unwrap_or_else(|| panic!("{queue:?} buffer lacks staged block {first}"));
            let run: Vec<u32> = (first_pfn..first_pfn + PFNS_PER_BLOCK as u32).collect();
            assert_eq!(
                values.get(at..at + PFNS_PER_BLOCK),
                Some(&run[..]),
                "block {first} split or out of order in the {queue:?} buffer"
            );
            assert_eq!(
                at / per_buffer,
                (at + PFNS_PER_BLOCK - 1) / per_buffer,
                "block {first} spans two {queue:?} buffers"
            );
        }
        // Inflated pages are the driver's (staged, or a migration's new page
        // now in the balloon's hands); deflated ones are out of the balloon.
        let on_list: BTreeSet<u64> = match queue {
            QueueRole::Deflate => self
                .balloon
                .iter()
                .copied()
                .chain(
                    self.balloon_blocks
                        .iter()
                        .flat_map(|first| self.block_range(*first)),
                )
                .collect(),
            _ => BTreeSet::new(),
        };
        for guest in self.pages_of(pfns) {
            assert!(
                !self.free.contains(&guest),
                "{queue:?} buffer names free page {guest}"
            );
            assert!(
                !on_list.contains(&guest),
                "deflating page {guest} that is still on the balloon list"
            );
        }
    }
}

impl Backend for Model {
    fn read_target(&mut self) -> u32 {
        self.num_pages
    }
    fn write_actual(&mut self, actual: u32) {
        self.actual = actual;
        self.actual_writes.push(actual);
    }
    fn available_pages(&mut self) -> u64 {
        self.available_override.unwrap_or(self.free.len() as u64)
    }
    fn managed_pages(&mut self) -> u64 {
        self.total
    }
    fn alloc_pages(&mut self, max: u64) -> u64 {
        assert!(
            self.staged_inflate.is_empty(),
            "allocating over a staged batch"
        );
        let mut got = 0;
        while got < max {
            if let Some(left) = self.alloc_left.as_mut() {
                if *left == 0 {
                    break;
                }
                *left -= 1;
            }
            let Some(page) = self.free.pop_first() else {
                break;
            };
            self.staged_inflate.push(page);
            got += 1;
        }
        got
    }
    fn staged_inflate_pfns(&self, f: &mut dyn FnMut(u64)) {
        self.staged_inflate.iter().for_each(|pfn| f(*pfn));
    }
    fn commit_inflate(&mut self) {
        self.balloon.append(&mut self.staged_inflate);
        self.balloon_blocks.append(&mut self.staged_inflate_blocks);
    }
    fn abort_inflate(&mut self) {
        for page in std::mem::take(&mut self.staged_inflate) {
            self.free_checked(page);
        }
        for first in std::mem::take(&mut self.staged_inflate_blocks) {
            for page in self.block_range(first) {
                self.free_checked(page);
            }
        }
    }
    fn alloc_blocks(&mut self, max: u64) -> u64 {
        assert!(
            self.staged_inflate.is_empty() && self.staged_inflate_blocks.is_empty(),
            "allocating over a staged batch"
        );
        let per = self.block_pages();
        let max = self.blocks_per_call.map_or(max, |most| max.min(most));
        let mut got = 0;
        let mut candidate = self
            .free
            .first()
            .map_or(0, |first| first.div_ceil(per) * per);
        let last = self.free.last().copied().unwrap_or(0);
        while got < max && candidate + per <= last + 1 {
            if let Some(left) = self.block_alloc_left {
                if left == 0 {
                    break;
                }
            }
            let range = self.block_range(candidate);
            if range.clone().all(|page| self.free.contains(&page)) {
                for page in range {
                    self.free.remove(&page);
                }
                self.staged_inflate_blocks.push(candidate);
                if let Some(left) = self.block_alloc_left.as_mut() {
                    *left -= 1;
                }
                got += 1;
            }
            candidate += per;
        }
        got
    }
    fn staged_inflate_blocks(&self, f: &mut dyn FnMut(u64)) {
        self.staged_inflate_blocks
            .iter()
            .for_each(|first| f(*first));
    }
    fn dequeue_blocks(&mut self, max: u64) -> u64 {
        move_up_to(
            &mut self.balloon_blocks,
            &mut self.staged_deflate_blocks,
            max,
        )
    }
    fn staged_deflate_blocks(&self, f: &mut dyn FnMut(u64)) {
        self.staged_deflate_blocks
            .iter()
            .for_each(|first| f(*first));
    }
    fn dequeue_pages(&mut self, max: u64) -> u64 {
        move_up_to(&mut self.balloon, &mut self.staged_deflate, max)
    }
    fn balloon_is_empty(&mut self) -> bool {
        self.balloon.is_empty() && self.isolated.is_empty() && self.balloon_blocks.is_empty()
    }
    fn staged_deflate_pfns(&self, f: &mut dyn FnMut(u64)) {
        self.staged_deflate.iter().for_each(|pfn| f(*pfn));
    }
    fn commit_deflate(&mut self) {
        for page in std::mem::take(&mut self.staged_deflate) {
            self.free_checked(page);
        }
        for first in std::mem::take(&mut self.staged_deflate_blocks) {
            for page in self.block_range(first) {
                self.free_checked(page);
            }
        }
    }
    fn abort_deflate(&mut self) {
        self.balloon.append(&mut self.staged_deflate);
        self.balloon_blocks.append(&mut self.staged_deflate_blocks);
    }
    fn tell_host(
        &mut self,
        queue: QueueRole,
        pfns: &[u32],
        per_buffer: usize,
    ) -> Result<(), HostError> {
        assert!(
            self.late.as_ref().is_none_or(|late| late.returned),
            "a buffer was sent while the host still holds a late one"
        );
        assert!(per_buffer > 0, "buffers of no PFN");
        self.check_shape(queue, pfns, per_buffer);
        self.after_reset = false;
        if let Some(target) = self.target_while_told.take() {
            self.num_pages = target;
        }
        let mode = match self.prompt_for.as_mut() {
            Some(left) if *left > 0 => {
                *left -= 1;
                HostMode::Prompt
            }
            _ => self.mode,
        };
        match mode {
            HostMode::Broken => return Err(HostError::Broken),
            HostMode::Refusing => return Err(HostError::Queue),
            HostMode::Prompt if !pfns.chunks(per_buffer).all(|b| self.vmm_returns(queue, b)) => {
                // Never handed back: to the driver, a dead host.
                return self.go_late(true, queue, pfns, per_buffer);
            }
            HostMode::Prompt => {
                for buffer in pfns.chunks(per_buffer) {
                    self.vmm_process(queue, buffer);
                }
            }
            HostMode::Slow | HostMode::Dead => {
                return self.go_late(mode == HostMode::Dead, queue, pfns, per_buffer);
            }
        }
        self.push_buffers(queue, pfns, per_buffer);
        Ok(())
    }
    fn host_returned(&mut self, queue: QueueRole) -> bool {
        let late = self
            .late
            .as_ref()
            .expect("asked for a late buffer that does not exist");
        assert_eq!(
            late.queue, queue,
            "asked the wrong queue for the late buffer"
        );
        if late.returned {
            self.late = None;
            true
        } else {
            false
        }
    }
    fn hold_migrated_page(&mut self) {
        self.hold_requested = true;
    }
    fn release_held_page(&mut self) {
        let page = self.held.pop().expect("released a page that was not held");
        self.free_checked(page);
    }
}

/// Moves up to `max` entries from the end of `from` to `to`; returns how
/// many it moved.
fn move_up_to(from: &mut Vec<u64>, to: &mut Vec<u64>, max: u64) -> u64 {
    let mut moved = 0;
    while moved < max {
        let Some(entry) = from.pop() else {
            break;
        };
        to.push(entry);
        moved += 1;
    }
    moved
}
