// SPDX-License-Identifier: GPL-2.0

//! The inflate/deflate engine: moves the balloon towards the host's target
//! one buffer at a time, over a [`Backend`] that owns the pages and the
//! virtqueues.
//!
//! In the module the backend is real guest pages on the kernel's balloon
//! list and the device's virtqueues; in the host tests it is a device model
//! that checks every buffer.

use crate::backoff::Backoff;
use crate::features::QueueRole;
use crate::format::{
    BufferFormat,
    PFNS_PER_BLOCK, //
};
use crate::pfn::{
    PageGeometry,
    PfnBatch,
    PFNS_PER_BUFFER, //
};
use crate::target::{
    inflate_budget,
    Direction,
    Target, //
};

/// Why telling the host failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// The buffer could not be queued now (queue full, out of memory); the
    /// host never saw it.
    Queue,
    /// The device is broken (surprise removal, a fatal transport error):
    /// no buffer will ever be queued again; the host never saw this one.
    Broken,
    /// The host did not hand the buffer back in time; it may still read it.
    Timeout,
}

/// What the engine needs from the guest and the device.
///
/// The backend keeps the pages the engine is working on in two staging
/// areas (one for an inflate, one for a deflate) until the host has
/// acknowledged the buffer that names them.
///
/// A staging area holds guest pages and, when the buffer format allows
/// them ([`BufferFormat::whole_blocks`]), blocks: naturally aligned runs of
/// 2 MiB (512 balloon pages) that stay one unit from allocation to release.
/// The block methods have defaults for a backend without blocks, whose
/// staging areas then only ever hold single pages.
pub trait Backend {
    /// Reads `num_pages`, the host's target, from the config space.
    fn read_target(&mut self) -> u32;
    /// Writes `actual`, the balloon's size, to the config space.
    fn write_actual(&mut self, actual: u32);
    /// Guest pages the guest could give without trouble (MemAvailable).
    fn available_pages(&mut self) -> u64;
    /// Guest pages of RAM the kernel manages now (`totalram_pages`); grows
    /// with memory hot-plug.
    fn managed_pages(&mut self) -> u64;
    /// Allocates up to `max` guest pages for the balloon into the inflate
    /// staging area, without retrying or warning, and returns how many it
    /// got (fewer when the guest is short of memory).
    fn alloc_pages(&mut self, max: u64) -> u64;
    /// Calls `f` with the frame number of every page staged for inflate
    /// (the pages of staged blocks excepted).
    fn staged_inflate_pfns(&self, f: &mut dyn FnMut(u64));
    /// The host has the staged pages and blocks: move them into the
    /// balloon.
    fn commit_inflate(&mut self);
    /// The host never got the staged pages and blocks (or was reset): free
    /// them.
    fn abort_inflate(&mut self);
    /// Allocates up to `max` blocks for the balloon into the inflate
    /// staging area and returns how many it got.
    ///
    /// A block is 2 MiB of guest memory aligned to 2 MiB (512 balloon
    /// pages; `512 / balloon_pages_per_page` guest pages), allocated as one
    /// unit without reclaim, retry or warning: the caller falls back to
    /// single pages when none is free. The default has no blocks.
    fn alloc_blocks(&mut self, max: u64) -> u64 {
        let _ = max;
        0
    }
    /// Calls `f` with the first guest frame number of every block staged
    /// for inflate.
    fn staged_inflate_blocks(&self, f: &mut dyn FnMut(u64)) {
        let _ = f;
    }
    /// Takes up to `max` single guest pages (never pages of a block) out of
    /// the balloon into the deflate staging area and returns how many it
    /// took (fewer when pages are isolated for migration).
    fn dequeue_pages(&mut self, max: u64) -> u64;
    /// Whether the balloon holds no page and no block at all, isolated
    /// pages included.
    fn balloon_is_empty(&mut self) -> bool;
    /// Calls `f` with the frame number of every page staged for deflate
    /// (the pages of staged blocks excepted).
    fn staged_deflate_pfns(&self, f: &mut dyn FnMut(u64));
    /// The host was told about the staged pages and blocks: give them back
    /// to the guest, each block whole.
    fn commit_deflate(&mut self);
    /// The host was not told: put the staged pages and blocks back into
    /// the balloon.
    fn abort_deflate(&mut self);
    /// Takes up to `max` whole blocks out of the balloon into the deflate
    /// staging area and returns how many it took. Blocks are never
    /// isolated for migration. The default has no blocks.
    fn dequeue_blocks(&mut self, max: u64) -> u64 {
        let _ = max;
        0
    }
    /// Calls `f` with the first guest frame number of every block staged
    /// for deflate.
    fn staged_deflate_blocks(&self, f: &mut dyn FnMut(u64)) {
        let _ = f;
    }
    /// Sends `pfns` on `queue` in buffers of at most `per_buffer` PFNs each
    /// (in order, one notification for all of them) and waits until the
    /// host hands every one back. A block's PFNs never span two of them.
    fn tell_host(
        &mut self,
        queue: QueueRole,
        pfns: &[u32],
        per_buffer: usize,
    ) -> Result<(), HostError>;
    /// Whether the buffer a [`HostError::Timeout`] left with the host on
    /// `queue` has come back since (never waits).
    fn host_returned(&mut self, queue: QueueRole) -> bool;
    /// Keeps the old page of the migration in progress away from the
    /// allocator (the migration core would free it when the migration
    /// succeeds) until [`Backend::release_held_page`].
    fn hold_migrated_page(&mut self);
    /// Gives the page [`Backend::hold_migrated_page`] kept back to the guest.
    fn release_held_page(&mut self);
}

/// Most buffers [`Engine::set_in_flight`] sends at once.
pub const MAX_IN_FLIGHT: usize = 16;

/// How long to wait for pages isolated by a running migration.
pub const ISOLATED_RETRY_MS: u32 = 10;

/// Consecutive queueing failures after which a drain stops trying to tell
/// the host (the device is then reset and the pages reclaimed untold).
pub const DRAIN_QUEUE_ATTEMPTS: u32 = 4;

/// What one [`Engine::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The balloon is at the target.
    Reached,
    /// A batch went through; call again.
    Progress,
    /// Nothing could be done now; try again after this many milliseconds.
    Backoff(u32),
    /// The host holds a late buffer (call again when it comes back) or the
    /// device is broken (no more updates until it is reset).
    Stalled,
}

/// Counters the driver exposes to the guest (debugfs) and the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Balloon pages inflated since load.
    pub inflated: u64,
    /// Balloon pages deflated since load.
    pub deflated: u64,
    /// Inflate attempts that ended without a page (allocation failure or reserve).
    pub alloc_failures: u64,
    /// Targets above the guest's RAM that were clamped.
    pub clamped_targets: u64,
    /// Balloon pages moved by compaction (host told of both pages).
    pub migrated: u64,
    /// Balloon pages given back to the guest on OOM (`DEFLATE_ON_OOM`).
    pub oom_deflated: u64,
    /// OOM notifications that found pages to give back.
    pub oom_events: u64,
    /// Buffers the host handed back after the deadline.
    pub late_buffers: u64,
    /// Buffers the device did not take (queue full, out of memory).
    pub queue_failures: u64,
    /// 2 MiB blocks inflated since load (their pages count in `inflated`).
    pub blocks_inflated: u64,
    /// 2 MiB blocks deflated since load (their pages count in `deflated`).
    pub blocks_deflated: u64,
    /// Inflate batches that wanted blocks and got fewer, the rest taken as
    /// single pages.
    pub block_fallbacks: u64,
}

/// A buffer the host did not hand back in time: the pages it names stay
/// out of the allocator, and the PFN array stays unchanged, until it comes
/// back or the device is reset.
///
/// The counts are balloon pages, those of blocks included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Late {
    /// An inflate naming this many balloon pages (the staged inflate pages).
    Inflate(u64),
    /// A deflate naming this many balloon pages (the staged deflate pages).
    Deflate(u64),
    /// A migration's inflate of the new page; the old page is held and
    /// still needs its deflate.
    MigrationInflate,
    /// A migration's deflate of the held old page.
    MigrationDeflate,
}

impl Late {
    /// The queue the late buffer is on.
    pub fn queue(self) -> QueueRole {
        match self {
            Late::Inflate(_) | Late::MigrationInflate => QueueRole::Inflate,
            Late::Deflate(_) | Late::MigrationDeflate => QueueRole::Deflate,
        }
    }
}

/// How many of `pages` to take as single pages after `got` of `wanted`
/// whole blocks of `per_block` pages came: the rest once no block comes at
/// all, but none while some still do, so that the next step asks for
/// blocks again (compaction makes them a few at a time) instead of
/// scattering single pages over host huge pages.
pub fn single_pages_after_blocks(pages: u64, per_block: u64, wanted: u64, got: u64) -> u64 {
    if got > 0 && got < wanted {
        0
    } else {
        pages.saturating_sub(got * per_block)
    }
}

/// The balloon's state and the policy that moves it.
pub struct Engine {
    geometry: PageGeometry,
    format: BufferFormat,
    /// Buffers sent at once per step ([`Engine::set_in_flight`]).
    in_flight: usize,
    little_endian: bool,
    /// Whether ballooned pages leave `totalram_pages` (no `DEFLATE_ON_OOM`).
    ram_excludes_balloon: bool,
    reserve: u64,
    /// Balloon pages the host was told of and not told back (what `actual`
    /// says): the balloon list and the deflate staging area.
    pages: u64,
    /// Blocks among `pages` (each of [`PFNS_PER_BLOCK`] balloon pages).
    blocks: u64,
    /// Blocks named by the late buffer.
    late_blocks: u64,
    backoff: Backoff,
    /// The buffer the host holds past the deadline, if any.
    late: Option<Late>,
    /// The frame of an old migrated page kept from the allocator until the
    /// host acknowledges its deflate.
    held_page: Option<u64>,
    /// The device refused a buffer for good, or was reset.
    broken: bool,
    /// Queueing failures in a row during a drain (earlier back-offs, of
    /// allocations say, do not count towards giving up).
    drain_refusals: u32,
    counters: Counters,
    last_clamped: bool,
    held_target: Option<u32>,
    /// The target the balloon last reached: while the host's target is
    /// another, the engine is moving towards it.
    rest_target: Option<u32>,
    last_target: u32,
}

impl Engine {
    /// A new, empty balloon sending buffers in [`BufferFormat::Compat`]
    /// (see [`Engine::set_format`]).
    ///
    /// `ram_excludes_balloon` says whether inflated pages leave the RAM the
    /// backend's [`Backend::managed_pages`] counts; `reserve` is the guest
    /// pages the balloon never inflates into.
    pub fn new(
        geometry: PageGeometry,
        little_endian: bool,
        ram_excludes_balloon: bool,
        reserve: u64,
    ) -> Self {
        Self {
            geometry,
            format: BufferFormat::default(),
            in_flight: 1,
            little_endian,
            ram_excludes_balloon,
            reserve,
            pages: 0,
            blocks: 0,
            late_blocks: 0,
            backoff: Backoff::new(),
            late: None,
            held_page: None,
            broken: false,
            drain_refusals: 0,
            counters: Counters::default(),
            last_clamped: false,
            held_target: None,
            rest_target: None,
            last_target: 0,
        }
    }

    /// Balloon pages in the balloon (what `actual` says).
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// 2 MiB blocks in the balloon (their pages count in [`Engine::pages`]).
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The format buffers are sent in.
    pub fn format(&self) -> BufferFormat {
        self.format
    }

    /// Sends up to `buffers` buffers at once per step (clamped to
    /// 1..=[`MAX_IN_FLIGHT`]): the host may work on one while the guest
    /// fills the next. The PFN array given to [`Engine::step`] must hold
    /// that many buffers' worth for it to take effect.
    pub fn set_in_flight(&mut self, buffers: usize) {
        self.in_flight = buffers.clamp(1, MAX_IN_FLIGHT);
    }

    /// Buffers sent at once per step.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Sends the next buffers in `format`.
    ///
    /// Fails, changing nothing, when the balloon holds blocks that `format`
    /// could not carry back whole (a block's PFNs never span two buffers):
    /// choose the format before the first step, or once the balloon is
    /// empty.
    pub fn set_format(&mut self, format: BufferFormat) -> Result<(), BufferFormat> {
        if self.blocks > 0 && format.pfns_per_buffer() < PFNS_PER_BLOCK {
            return Err(self.format);
        }
        self.format = format;
        Ok(())
    }

    /// Guest pages in one 2 MiB block, or 0 when guest pages are 2 MiB or
    /// larger (a block would be one page: there is nothing to keep whole).
    fn block_guest_pages(&self) -> u64 {
        match self.geometry.block_order() {
            0 => 0,
            order => 1 << order,
        }
    }

    /// Guest pages in one block the format lets the engine inflate, or 0
    /// when it inflates single pages only.
    pub fn guest_pages_per_block(&self) -> u64 {
        if self.format.whole_blocks() {
            self.block_guest_pages()
        } else {
            0
        }
    }

    /// The part of the caller's PFN array one buffer may use.
    fn buffer_room(&self, buffer_len: usize) -> usize {
        (self.format.pfns_per_buffer() * self.in_flight).min(buffer_len)
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The current back-off delay in milliseconds (0 when not backing off).
    pub fn backoff_ms(&self) -> u32 {
        self.backoff.delay_ms()
    }

    /// The host's last target (`num_pages`) the engine read.
    pub fn last_target(&self) -> u32 {
        self.last_target
    }

    /// The reserve floor, in guest pages.
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Whether updates stopped: a buffer is late or the device is broken.
    pub fn is_stalled(&self) -> bool {
        self.late.is_some() || self.broken
    }

    /// The buffer the host holds past its deadline, if any.
    pub fn late(&self) -> Option<Late> {
        self.late
    }

    /// Balloon pages the late buffer names (0 without one): neither in the
    /// balloon nor the guest's until it comes back or the device is reset.
    pub fn late_pages(&self) -> u64 {
        match self.late {
            Some(Late::Inflate(pages) | Late::Deflate(pages)) => pages,
            Some(Late::MigrationInflate | Late::MigrationDeflate) => {
                u64::from(self.geometry.balloon_pages_per_page())
            }
            None => 0,
        }
    }

    fn actual(&self) -> u32 {
        // `pages` never exceeds the RAM limit, itself clamped to what
        // `num_pages` (a u32) can ask for; saturate anyway rather than wrap.
        u32::try_from(self.pages).unwrap_or(u32::MAX)
    }

    /// The most the balloon may hold now, in balloon pages: the guest's RAM,
    /// which memory hot-plug may have grown since load.
    fn limit<B: Backend>(&self, backend: &mut B) -> u64 {
        let per_page = u64::from(self.geometry.balloon_pages_per_page());
        let managed = backend.managed_pages().saturating_mul(per_page);
        if self.ram_excludes_balloon {
            managed.saturating_add(self.pages)
        } else {
            managed
        }
    }

    /// Brings the engine up to date with the host: finishes the step of a
    /// late buffer that came back, then tells the host of a held page.
    /// Returns `Some(step)` when nothing else may be done now.
    fn catch_up<B: Backend>(&mut self, backend: &mut B, buffer: &mut [u32]) -> Option<Step> {
        if self.broken {
            return Some(Step::Stalled);
        }
        if let Some(late) = self.late {
            if !backend.host_returned(late.queue()) {
                return Some(Step::Stalled);
            }
            self.late = None;
            self.counters.late_buffers += 1;
            match late {
                Late::Inflate(sent) => {
                    backend.commit_inflate();
                    let blocks = core::mem::take(&mut self.late_blocks);
                    self.inflated(sent, blocks);
                }
                Late::Deflate(sent) => {
                    backend.commit_deflate();
                    let blocks = core::mem::take(&mut self.late_blocks);
                    self.deflated(sent, blocks);
                }
                // The old page's deflate follows below.
                Late::MigrationInflate => self.counters.migrated += 1,
                Late::MigrationDeflate => {
                    self.held_page = None;
                    backend.release_held_page();
                }
            }
            log::info!(
                "host returned the late {:?} buffer; balloon updates resume\n",
                late.queue()
            );
            backend.write_actual(self.actual());
        }
        let pfn = self.held_page?;
        let mut batch = PfnBatch::new(buffer, self.geometry, self.little_endian);
        if batch.push_page(pfn).is_err() {
            // It was ballooned, so it had a device PFN; never taken.
            self.held_page = None;
            backend.release_held_page();
            return None;
        }
        match backend.tell_host(
            QueueRole::Deflate,
            batch.as_slice(),
            self.format.pfns_per_buffer(),
        ) {
            Ok(()) => {
                self.held_page = None;
                backend.release_held_page();
                None
            }
            Err(HostError::Timeout) => Some(self.went_late(Late::MigrationDeflate)),
            Err(HostError::Broken) => Some(self.went_broken(QueueRole::Deflate)),
            Err(HostError::Queue) => {
                self.counters.queue_failures += 1;
                Some(Step::Backoff(self.backoff.fail()))
            }
        }
    }

    /// Brings the engine up to date with the host before the caller
    /// allocates for the next step ([`Engine::pages_to_allocate`]): finishes
    /// the step of a late buffer that came back and tells the host of a
    /// held page. Without it, the allocation for a step that follows a late
    /// buffer would see the engine stalled, allocate nothing, and the step
    /// would count a false allocation failure.
    pub fn resume<B: Backend>(&mut self, backend: &mut B, buffer: &mut [u32]) {
        let _ = self.catch_up(backend, buffer);
    }

    /// The device was reset (or is about to be, under the caller's lock):
    /// nothing more is sent to it; [`Engine::forget_all`] takes the pages
    /// back. A migration meanwhile fails at once instead of sending to the
    /// reset device and waiting for an answer that cannot come.
    pub fn device_reset(&mut self) {
        self.broken = true;
    }

    /// Moves the balloon one buffer towards the target and reports `actual`.
    pub fn step<B: Backend>(&mut self, backend: &mut B, buffer: &mut [u32]) -> Step {
        if let Some(step) = self.catch_up(backend, buffer) {
            return step;
        }
        let num_pages = backend.read_target();
        self.last_target = num_pages;
        let limit = self.limit(backend);
        let target = Target::from_config(num_pages, self.geometry, limit);
        // Rate-limited by the running total: a host switching between an
        // absurd target and a valid one must not flood the log.
        if target.clamped && !self.last_clamped {
            self.counters.clamped_targets += 1;
        }
        if target.clamped && !self.last_clamped && self.counters.clamped_targets.is_power_of_two() {
            log::info!(
                "host asks for a {} KiB balloon, more than the guest's RAM; aiming for {} KiB\n",
                u64::from(num_pages) * 4,
                target.pages * 4
            );
        }
        self.last_clamped = target.clamped;
        if self.held_target.is_some_and(|held| held != num_pages) {
            self.held_target = None;
        }
        let step = match target.direction(self.pages) {
            Direction::Reached => {
                self.backoff.succeed();
                self.rest_target = Some(num_pages);
                return Step::Reached;
            }
            Direction::Inflate(_) if self.held_target.is_some() => {
                // Pages went back to the guest on OOM: take them again only
                // when the host asks anew.
                return Step::Reached;
            }
            Direction::Inflate(wanted) => self.inflate(backend, buffer, wanted),
            Direction::Deflate(wanted) => self.deflate(backend, buffer, wanted),
        };
        backend.write_actual(self.actual());
        step
    }

    /// How many guest pages the next [`Engine::step`] would allocate, so
    /// that the caller can allocate them before taking its lock; the pages
    /// of the blocks in [`Engine::blocks_to_allocate`] included.
    ///
    /// With blocks, the caller first allocates up to `blocks_to_allocate`
    /// blocks, then `pages_to_allocate - got_blocks * guest_pages_per_block`
    /// single pages: the step takes the blocks it gets from
    /// [`Backend::alloc_blocks`] and the rest as single pages.
    pub fn pages_to_allocate<B: Backend>(&mut self, backend: &mut B) -> u64 {
        if self.is_stalled() || self.held_page.is_some() {
            return 0;
        }
        let num_pages = backend.read_target();
        if self.held_target.is_some_and(|held| held == num_pages) {
            return 0;
        }
        let limit = self.limit(backend);
        match Target::from_config(num_pages, self.geometry, limit).direction(self.pages) {
            Direction::Inflate(wanted) => inflate_budget(
                self.geometry.guest_pages(wanted),
                self.geometry
                    .guest_pages(self.buffer_room(PFNS_PER_BUFFER * MAX_IN_FLIGHT) as u64),
                backend.available_pages(),
                self.reserve,
            ),
            _ => 0,
        }
    }

    /// How many whole 2 MiB blocks the next [`Engine::step`] would try to
    /// allocate out of the `pages` [`Engine::pages_to_allocate`] returned
    /// (0 unless the format inflates blocks).
    pub fn blocks_to_allocate(&self, pages: u64) -> u64 {
        pages.checked_div(self.guest_pages_per_block()).unwrap_or(0)
    }

    /// Counts an inflate the host acknowledged.
    fn inflated(&mut self, pages: u64, blocks: u64) {
        self.pages += pages;
        self.blocks += blocks;
        self.counters.inflated += pages;
        self.counters.blocks_inflated += blocks;
    }

    /// Counts a deflate the host acknowledged (or a reset made moot).
    fn deflated(&mut self, pages: u64, blocks: u64) {
        self.pages = self.pages.saturating_sub(pages);
        self.blocks = self.blocks.saturating_sub(blocks);
        self.counters.deflated += pages;
        self.counters.blocks_deflated += blocks;
    }

    fn inflate<B: Backend>(&mut self, backend: &mut B, buffer: &mut [u32], wanted: u64) -> Step {
        let room = self.buffer_room(buffer.len());
        let buffer = &mut buffer[..room];
        let capacity = self.geometry.guest_pages(buffer.len() as u64);
        let budget = inflate_budget(
            self.geometry.guest_pages(wanted),
            capacity,
            backend.available_pages(),
            self.reserve,
        );
        let want = self.geometry.guest_pages(wanted).min(capacity);
        // Whole blocks first, each filling one host huge page; whatever
        // they do not cover is taken as single pages.
        let per_block = self.guest_pages_per_block();
        let blocks_wanted = budget.checked_div(per_block).unwrap_or(0);
        let blocks = if blocks_wanted > 0 {
            let got = backend.alloc_blocks(blocks_wanted).min(blocks_wanted);
            if got == 0 {
                self.counters.block_fallbacks += 1;
                // Rate-limited by the running total.
                if self.counters.block_fallbacks.is_power_of_two() {
                    log::info!(
                        "no 2 MiB block left, even after compacting ({} of {} wanted): ballooning single pages instead ({} times so far)\n",
                        got,
                        blocks_wanted,
                        self.counters.block_fallbacks
                    );
                }
            }
            got
        } else {
            0
        };
        let single = single_pages_after_blocks(budget, per_block, blocks_wanted, blocks);
        // While compaction still makes blocks, the next step asks for more
        // instead of taking single pages: a short step is no failure.
        let want = if blocks < blocks_wanted && single == 0 {
            blocks * per_block
        } else {
            want
        };
        let got = blocks * per_block
            + if single > 0 {
                backend.alloc_pages(single)
            } else {
                0
            };
        let short = got < want;
        let mut sent = 0;
        if got > 0 {
            let batch = match self.fill_batch(
                buffer,
                |f| backend.staged_inflate_blocks(f),
                |f| backend.staged_inflate_pfns(f),
            ) {
                Ok(batch) => batch,
                Err(unnamed) => {
                    // A page the 32-bit PFN cannot name cannot be ballooned.
                    log::warn!(
                        "{} pages beyond the device's 32-bit PFNs; not ballooned\n",
                        unnamed
                    );
                    backend.abort_inflate();
                    self.counters.alloc_failures += 1;
                    return Step::Backoff(self.backoff.fail());
                }
            };
            sent = batch.len() as u64;
            match backend.tell_host(
                QueueRole::Inflate,
                batch.as_slice(),
                self.format.pfns_per_buffer(),
            ) {
                Ok(()) => {
                    backend.commit_inflate();
                    self.inflated(sent, blocks);
                }
                Err(err) => {
                    return self.host_failed(err, backend, QueueRole::Inflate, sent, blocks)
                }
            }
        }
        if short {
            self.counters.alloc_failures += 1;
            let delay = self.backoff.fail();
            // Rate-limited by the running total, so that short batches
            // between successful ones do not log every time.
            if self.counters.alloc_failures.is_power_of_two() {
                log::info!(
                    "out of puff: balloon at {} KiB, {} KiB short of the target; retrying in {} ms\n",
                    self.pages * 4,
                    (wanted - sent) * 4,
                    delay
                );
            }
            return Step::Backoff(delay);
        }
        self.backoff.succeed();
        Step::Progress
    }

    /// Fills `buffer` with the PFNs of every page of the blocks `blocks`
    /// walks (each block's pages in order, one after the other, as QEMU
    /// needs them to free the host huge page), then of the pages `pages`
    /// walks; fails with the count of pages the device's 32-bit PFNs cannot
    /// name or the buffer has no room for.
    fn fill_batch<'b>(
        &self,
        buffer: &'b mut [u32],
        blocks: impl FnOnce(&mut dyn FnMut(u64)),
        pages: impl FnOnce(&mut dyn FnMut(u64)),
    ) -> Result<PfnBatch<'b>, u64> {
        let mut batch = PfnBatch::new(buffer, self.geometry, self.little_endian);
        let mut unnamed = 0u64;
        let per_block = self.block_guest_pages();
        blocks(&mut |first| {
            for pfn in first..first + per_block {
                if batch.push_page(pfn).is_err() {
                    unnamed += 1;
                }
            }
        });
        pages(&mut |pfn| {
            if batch.push_page(pfn).is_err() {
                unnamed += 1;
            }
        });
        if unnamed == 0 {
            Ok(batch)
        } else {
            Err(unnamed)
        }
    }

    /// Stages up to `want` guest pages for a deflate of at most `room`
    /// guest pages: single pages first, then whole blocks (a block goes
    /// back whole, so the last one may take the balloon past `want`, never
    /// past `room`). Returns the guest pages and the blocks staged.
    fn stage_deflate<B: Backend>(&self, backend: &mut B, want: u64, room: u64) -> (u64, u64) {
        let single = backend.dequeue_pages(want.min(room));
        let per_block = self.block_guest_pages();
        if single >= want || per_block == 0 || self.blocks == 0 {
            return (single, 0);
        }
        let blocks_wanted = (want - single)
            .div_ceil(per_block)
            .min((room - single) / per_block);
        let blocks = if blocks_wanted > 0 {
            backend.dequeue_blocks(blocks_wanted).min(blocks_wanted)
        } else {
            0
        };
        (single + blocks * per_block, blocks)
    }

    fn deflate<B: Backend>(&mut self, backend: &mut B, buffer: &mut [u32], wanted: u64) -> Step {
        let room = self.buffer_room(buffer.len());
        let buffer = &mut buffer[..room];
        let capacity = self.geometry.guest_pages(buffer.len() as u64);
        let want = self.geometry.guest_pages(wanted).min(capacity);
        let (staged, blocks) = self.stage_deflate(backend, want, capacity);
        if staged == 0 {
            // Every page left is isolated for migration right now; the
            // migration puts it back (or swaps it) shortly.
            return Step::Backoff(ISOLATED_RETRY_MS);
        }
        let batch = match self.fill_batch(
            buffer,
            |f| backend.staged_deflate_blocks(f),
            |f| backend.staged_deflate_pfns(f),
        ) {
            Ok(batch) => batch,
            Err(unnamed) => {
                // Unreachable: the staged pages fit the buffer and each had
                // a device PFN when it was inflated.
                log::error!("{} balloon pages without a device PFN\n", unnamed);
                backend.abort_deflate();
                return Step::Backoff(ISOLATED_RETRY_MS);
            }
        };
        let sent = batch.len() as u64;
        match backend.tell_host(
            QueueRole::Deflate,
            batch.as_slice(),
            self.format.pfns_per_buffer(),
        ) {
            Ok(()) => {
                backend.commit_deflate();
                self.deflated(sent, blocks);
                self.backoff.succeed();
                Step::Progress
            }
            Err(err) => self.host_failed(err, backend, QueueRole::Deflate, sent, blocks),
        }
    }

    /// The host holds a buffer past its deadline: stop until it comes back.
    fn went_late(&mut self, late: Late) -> Step {
        log::error!(
            "host did not return the {:?} buffer in time; balloon updates wait for it (or a device reset)\n",
            late.queue()
        );
        self.late = Some(late);
        Step::Stalled
    }

    /// The device will take no more buffers: stop until it is reset.
    fn went_broken(&mut self, queue: QueueRole) -> Step {
        if !self.broken {
            log::error!(
                "the device refused a {:?} buffer for good (broken); balloon updates stop until it is reset\n",
                queue
            );
        }
        self.broken = true;
        Step::Stalled
    }

    fn host_failed<B: Backend>(
        &mut self,
        err: HostError,
        backend: &mut B,
        queue: QueueRole,
        sent: u64,
        blocks: u64,
    ) -> Step {
        let undo = |backend: &mut B| match queue {
            QueueRole::Deflate => backend.abort_deflate(),
            _ => backend.abort_inflate(),
        };
        match err {
            HostError::Queue => {
                // The host never saw the buffer: undo and retry later.
                undo(backend);
                let delay = self.backoff.fail();
                self.counters.queue_failures += 1;
                if self.counters.queue_failures.is_power_of_two() {
                    log::warn!(
                        "cannot queue a {:?} buffer; retrying in {} ms\n",
                        queue,
                        delay
                    );
                }
                Step::Backoff(delay)
            }
            HostError::Broken => {
                undo(backend);
                self.went_broken(queue)
            }
            HostError::Timeout => {
                // The host may still read the buffer and the staged pages:
                // keep both untouched until it returns or the device resets.
                let late = match queue {
                    QueueRole::Deflate => Late::Deflate(sent),
                    _ => Late::Inflate(sent),
                };
                self.late_blocks = blocks;
                self.went_late(late)
            }
        }
    }

    /// Gives up to `max` balloon pages back to the guest because it is out
    /// of memory (`DEFLATE_ON_OOM`), telling the host first, and returns how
    /// many went back.
    ///
    /// If the balloon was at rest on the host's target, it then stays
    /// below it until the host sets a new one: re-inflating at once would
    /// only cause the next OOM. On the way to a newer target it carries on.
    pub fn oom_deflate<B: Backend>(
        &mut self,
        backend: &mut B,
        buffer: &mut [u32],
        max: u64,
    ) -> u64 {
        if self.catch_up(backend, buffer).is_some() || self.pages == 0 {
            return 0;
        }
        // The target this deflate goes below: one the host sets while the
        // deflate waits for it is new, and is followed.
        let target = backend.read_target();
        let before = self.pages;
        // A buffer of the format may hold less than `max` (compat: 256
        // PFNs): send as many as `max` takes.
        while self.pages > 0 && before - self.pages < max {
            let left = max - (before - self.pages);
            if self.deflate(backend, buffer, left.min(self.pages)) != Step::Progress {
                break;
            }
        }
        let freed = before - self.pages;
        if freed > 0 {
            // At rest on the target, the balloon stays below it until the
            // host asks anew. On the way to a target the host set since,
            // it carries on once the guest has its pages (as the C
            // driver's update work does): that target is the host's
            // newest request, not the one the guest could not afford.
            if self.rest_target == Some(target) {
                self.held_target = Some(target);
            }
            self.counters.oom_deflated += freed;
            self.counters.oom_events += 1;
            backend.write_actual(self.actual());
            if self.counters.oom_events.is_power_of_two() {
                log::info!(
                    "guest out of memory: gave back {} KiB ({} KiB on {} OOM events so far), balloon now {} KiB\n",
                    freed * 4,
                    self.counters.oom_deflated * 4,
                    self.counters.oom_events,
                    self.pages * 4
                );
            }
        }
        freed
    }

    /// Moves the balloon one buffer towards empty, for removal or suspend.
    ///
    /// Returns [`Step::Reached`] once empty (after writing `actual = 0`),
    /// [`Step::Progress`] after a batch, [`Step::Backoff`] while pages are
    /// isolated for migration or a buffer could not be queued, and
    /// [`Step::Stalled`] when the host stopped answering or cannot be told
    /// (the device is broken, or queueing failed
    /// [`DRAIN_QUEUE_ATTEMPTS`] times in a row): then the caller resets the
    /// device and calls [`Engine::forget_all`].
    pub fn drain_step<B: Backend>(&mut self, backend: &mut B, buffer: &mut [u32]) -> Step {
        let refusals = self.counters.queue_failures;
        let step = match self.catch_up(backend, buffer) {
            Some(step) => step,
            None if self.pages == 0 => {
                backend.write_actual(0);
                Step::Reached
            }
            None => {
                let step = self.deflate(backend, buffer, self.pages);
                backend.write_actual(self.actual());
                step
            }
        };
        let refused = self.counters.queue_failures != refusals;
        self.drain_outcome(step, refused)
    }

    /// A drain gives up telling the host after repeated queueing failures
    /// in a row (`refused`: this step's buffer was refused).
    fn drain_outcome(&mut self, step: Step, refused: bool) -> Step {
        if refused {
            self.drain_refusals += 1;
        } else if step != Step::Backoff(ISOLATED_RETRY_MS) {
            self.drain_refusals = 0;
        }
        match step {
            Step::Backoff(_) if self.drain_refusals >= DRAIN_QUEUE_ATTEMPTS => {
                log::error!(
                    "cannot queue buffers to empty the balloon; reclaiming the pages after a reset\n"
                );
                self.broken = true;
                Step::Stalled
            }
            other => other,
        }
    }

    /// After a device reset, gives every page back without telling the host.
    ///
    /// The reset made the host drop every buffer, so whatever a late buffer
    /// named is the guest's again. Returns `false` while some pages are
    /// isolated for migration; call again after a short sleep without
    /// holding the balloon lock.
    pub fn forget_all<B: Backend>(&mut self, backend: &mut B) -> bool {
        let per_page = u64::from(self.geometry.balloon_pages_per_page());
        let late_blocks = core::mem::take(&mut self.late_blocks);
        match self.late.take() {
            Some(Late::Deflate(sent)) => {
                backend.commit_deflate();
                self.deflated(sent, late_blocks);
            }
            Some(Late::Inflate(_)) => backend.abort_inflate(),
            Some(Late::MigrationInflate) | Some(Late::MigrationDeflate) | None => {}
        }
        if self.held_page.take().is_some() {
            backend.release_held_page();
        }
        let batch = self.geometry.guest_pages(PFNS_PER_BUFFER as u64);
        let block_pages = self.block_guest_pages() * per_page;
        let blocks_per_batch = (PFNS_PER_BUFFER / PFNS_PER_BLOCK) as u64;
        while self.pages > 0 {
            let got = backend.dequeue_pages(batch);
            let blocks = if got == 0 {
                backend.dequeue_blocks(blocks_per_batch)
            } else {
                0
            };
            if got == 0 && blocks == 0 {
                if !backend.balloon_is_empty() {
                    // Isolated for migration: back shortly.
                    return false;
                }
                log::error!(
                    "balloon empty but {} pages still counted; count reset\n",
                    self.pages
                );
                self.pages = 0;
                self.blocks = 0;
                break;
            }
            backend.commit_deflate();
            self.deflated(got * per_page + blocks * block_pages, blocks);
        }
        // Pages the count missed would be left on a list about to be freed.
        loop {
            let stray = backend.dequeue_pages(batch);
            let blocks = backend.dequeue_blocks(blocks_per_batch);
            if stray == 0 && blocks == 0 {
                break;
            }
            log::error!(
                "{} balloon pages and {} blocks were not counted; freed\n",
                stray,
                blocks
            );
            backend.commit_deflate();
        }
        self.blocks = 0;
        self.broken = false;
        true
    }

    /// Tells the host that the guest page `new_pfn` replaces `old_pfn` in
    /// the balloon (page migration by compaction): inflate the new page,
    /// then deflate the old one, as the C driver does.
    ///
    /// `Ok` means the new page takes the old one's place. When the host is
    /// late with either buffer the migration still succeeds (the host may
    /// discard the new page at any time, so it must stay in the balloon),
    /// and the old page is held away from the allocator until the host
    /// acknowledges its deflate or the device is reset. An error means the
    /// host never saw the new page, and the core keeps the old one.
    pub fn migrate<B: Backend>(
        &mut self,
        backend: &mut B,
        buffer: &mut [u32],
        new_pfn: u64,
        old_pfn: u64,
    ) -> Result<(), HostError> {
        if let Some(step) = self.catch_up(backend, buffer) {
            return Err(if step == Step::Stalled && self.late.is_some() {
                HostError::Timeout
            } else {
                HostError::Queue
            });
        }
        let mut batch = PfnBatch::new(buffer, self.geometry, self.little_endian);
        batch.push_page(new_pfn).map_err(|_| HostError::Queue)?;
        match backend.tell_host(
            QueueRole::Inflate,
            batch.as_slice(),
            self.format.pfns_per_buffer(),
        ) {
            Ok(()) => {}
            Err(HostError::Timeout) => {
                backend.hold_migrated_page();
                self.held_page = Some(old_pfn);
                self.went_late(Late::MigrationInflate);
                return Ok(());
            }
            Err(err) => {
                if err == HostError::Broken {
                    self.went_broken(QueueRole::Inflate);
                }
                return Err(err);
            }
        }
        // The host has the new page: from here the migration succeeds, and
        // the old page stays held until the host hears of its deflate.
        let mut batch = PfnBatch::new(buffer, self.geometry, self.little_endian);
        let told = batch
            .push_page(old_pfn)
            .map_err(|_| HostError::Queue)
            .and_then(|()| {
                backend.tell_host(
                    QueueRole::Deflate,
                    batch.as_slice(),
                    self.format.pfns_per_buffer(),
                )
            });
        match told {
            Ok(()) => self.counters.migrated += 1,
            Err(err) => {
                backend.hold_migrated_page();
                self.held_page = Some(old_pfn);
                self.counters.migrated += 1;
                match err {
                    HostError::Timeout => {
                        self.went_late(Late::MigrationDeflate);
                    }
                    HostError::Broken => {
                        self.went_broken(QueueRole::Deflate);
                    }
                    // Told again by the next step.
                    HostError::Queue => {}
                }
            }
        }
        Ok(())
    }
}
