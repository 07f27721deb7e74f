// SPDX-License-Identifier: GPL-2.0

//! A model of guest memory, of the kernel's balloon and migration core, and
//! of the host side of the balloon device, with hosts that are slow, dead,
//! broken or refuse buffers. It checks every buffer the driver sends and
//! every page the driver frees.

#![allow(dead_code)]

use std::collections::BTreeSet;

use balloon_logic::engine::{Backend, HostError};
use balloon_logic::features::QueueRole;
use balloon_logic::pfn::{PageGeometry, PFNS_PER_BUFFER};

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
    /// Balloon pages isolated by the migration core.
    pub isolated: Vec<u64>,
    /// Old pages of migrations the driver holds away from the allocator.
    pub held: Vec<u64>,
    /// Set by `hold_migrated_page` during a migration callback.
    hold_requested: bool,
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
            isolated: Vec::new(),
            held: Vec::new(),
            hold_requested: false,
            host_ballooned: BTreeSet::new(),
            num_pages: 0,
            actual: 0,
            actual_writes: Vec::new(),
            buffers: Vec::new(),
            alloc_left: None,
            available_override: None,
            mode: HostMode::Prompt,
            prompt_for: None,
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
        for page in self
            .free
            .iter()
            .chain(&self.staged_inflate)
            .chain(&self.staged_deflate)
            .chain(&self.balloon)
            .chain(&self.isolated)
            .chain(&self.held)
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
        let (queue, pfns) = (late.queue, late.pfns.clone());
        self.process(queue, &pfns);
    }

    /// The device is reset: the host forgets every buffer and page.
    pub fn reset(&mut self) {
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

    fn check_shape(&self, queue: QueueRole, pfns: &[u32]) {
        assert!(!pfns.is_empty(), "empty buffer sent");
        assert!(
            pfns.len() <= PFNS_PER_BUFFER,
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
        // Inflated pages are the driver's (staged, or a migration's new page
        // now in the balloon's hands); deflated ones are out of the balloon.
        let on_list: BTreeSet<u64> = match queue {
            QueueRole::Deflate => self.balloon.iter().copied().collect(),
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
    }
    fn abort_inflate(&mut self) {
        for page in std::mem::take(&mut self.staged_inflate) {
            self.free_checked(page);
        }
    }
    fn dequeue_pages(&mut self, max: u64) -> u64 {
        let mut taken = 0;
        while taken < max {
            let Some(page) = self.balloon.pop() else {
                break;
            };
            self.staged_deflate.push(page);
            taken += 1;
        }
        taken
    }
    fn balloon_is_empty(&mut self) -> bool {
        self.balloon.is_empty() && self.isolated.is_empty()
    }
    fn staged_deflate_pfns(&self, f: &mut dyn FnMut(u64)) {
        self.staged_deflate.iter().for_each(|pfn| f(*pfn));
    }
    fn commit_deflate(&mut self) {
        for page in std::mem::take(&mut self.staged_deflate) {
            self.free_checked(page);
        }
    }
    fn abort_deflate(&mut self) {
        self.balloon.append(&mut self.staged_deflate);
    }
    fn tell_host(&mut self, queue: QueueRole, pfns: &[u32]) -> Result<(), HostError> {
        assert!(
            self.late.as_ref().is_none_or(|late| late.returned),
            "a buffer was sent while the host still holds a late one"
        );
        self.check_shape(queue, pfns);
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
            HostMode::Prompt => self.process(queue, pfns),
            HostMode::Slow | HostMode::Dead => {
                self.late_buffers += 1;
                self.late = Some(LateBuffer {
                    dead: mode == HostMode::Dead,
                    serial: self.late_buffers,
                    queue,
                    pfns: pfns.to_vec(),
                    pages: self.pages_of(pfns),
                    returned: false,
                });
                self.buffers.push((queue, pfns.len()));
                return Err(HostError::Timeout);
            }
        }
        self.buffers.push((queue, pfns.len()));
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
