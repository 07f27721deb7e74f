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
use crate::pfn::{
    PageGeometry,
    PfnBatch, //
};
use crate::target::{
    inflate_budget,
    Direction,
    Target, //
};

/// Why telling the host failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// The buffer could not be queued (queue full, out of memory, broken device).
    Queue,
    /// The host did not hand the buffer back in time; it may still own it.
    Timeout,
}

/// What the engine needs from the guest and the device.
///
/// The backend keeps the pages the engine is working on in two staging
/// areas (one for an inflate, one for a deflate) until the host has
/// acknowledged the buffer that names them.
pub trait Backend {
    /// Reads `num_pages`, the host's target, from the config space.
    fn read_target(&mut self) -> u32;
    /// Writes `actual`, the balloon's size, to the config space.
    fn write_actual(&mut self, actual: u32);
    /// Guest pages the guest could give without trouble (MemAvailable).
    fn available_pages(&mut self) -> u64;
    /// Allocates up to `max` guest pages for the balloon into the inflate
    /// staging area, without retrying or warning, and returns how many it
    /// got (fewer when the guest is short of memory).
    fn alloc_pages(&mut self, max: u64) -> u64;
    /// Calls `f` with the frame number of every page staged for inflate.
    fn staged_inflate_pfns(&self, f: &mut dyn FnMut(u64));
    /// The host has the staged pages: move them into the balloon.
    fn commit_inflate(&mut self);
    /// The host never got the staged pages: free them.
    fn abort_inflate(&mut self);
    /// Takes up to `max` guest pages out of the balloon into the deflate
    /// staging area and returns how many it took (fewer when pages are
    /// isolated for migration).
    fn dequeue_pages(&mut self, max: u64) -> u64;
    /// Calls `f` with the frame number of every page staged for deflate.
    fn staged_deflate_pfns(&self, f: &mut dyn FnMut(u64));
    /// The host was told about the staged pages: give them back to the guest.
    fn commit_deflate(&mut self);
    /// The host was not told: put the staged pages back into the balloon.
    fn abort_deflate(&mut self);
    /// Sends `pfns` on `queue` and waits until the host hands the buffer back.
    fn tell_host(&mut self, queue: QueueRole, pfns: &[u32]) -> Result<(), HostError>;
}

/// How long to wait for pages isolated by a running migration.
pub const ISOLATED_RETRY_MS: u32 = 10;

/// What one [`Engine::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The balloon is at the target.
    Reached,
    /// A batch went through; call again.
    Progress,
    /// Nothing could be done now; try again after this many milliseconds.
    Backoff(u32),
    /// The device stopped answering; no more updates until it is reset.
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
}

/// The balloon's state and the policy that moves it.
pub struct Engine {
    geometry: PageGeometry,
    little_endian: bool,
    limit: u64,
    reserve: u64,
    pages: u64,
    backoff: Backoff,
    stalled: bool,
    counters: Counters,
    last_clamped: bool,
    held_target: Option<u32>,
    last_target: u32,
}

impl Engine {
    /// A new, empty balloon.
    ///
    /// `limit` is the most the balloon may ever hold (guest RAM in balloon
    /// pages); `reserve` the guest pages it never inflates into.
    pub fn new(geometry: PageGeometry, little_endian: bool, limit: u64, reserve: u64) -> Self {
        Self {
            geometry,
            little_endian,
            limit,
            reserve,
            pages: 0,
            backoff: Backoff::new(),
            stalled: false,
            counters: Counters::default(),
            last_clamped: false,
            held_target: None,
            last_target: 0,
        }
    }

    /// Balloon pages in the balloon (what `actual` says).
    pub fn pages(&self) -> u64 {
        self.pages
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

    /// Whether the device stopped answering.
    pub fn is_stalled(&self) -> bool {
        self.stalled
    }

    fn actual(&self) -> u32 {
        // `pages` never exceeds `limit`, itself clamped to what `num_pages`
        // (a u32) can ask for; saturate anyway rather than wrap.
        u32::try_from(self.pages).unwrap_or(u32::MAX)
    }

    /// Moves the balloon one buffer towards the target and reports `actual`.
    pub fn step<B: Backend>(&mut self, backend: &mut B, buffer: &mut [u32]) -> Step {
        if self.stalled {
            return Step::Stalled;
        }
        let num_pages = backend.read_target();
        self.last_target = num_pages;
        let target = Target::from_config(num_pages, self.geometry, self.limit);
        if target.clamped && !self.last_clamped {
            self.counters.clamped_targets += 1;
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

    fn inflate<B: Backend>(&mut self, backend: &mut B, buffer: &mut [u32], wanted: u64) -> Step {
        let capacity = self.geometry.guest_pages(buffer.len() as u64);
        let budget = inflate_budget(
            self.geometry.guest_pages(wanted),
            capacity,
            backend.available_pages(),
            self.reserve,
        );
        let want = self.geometry.guest_pages(wanted).min(capacity);
        let got = if budget > 0 {
            backend.alloc_pages(budget)
        } else {
            0
        };
        let short = got < want;
        let mut sent = 0;
        if got > 0 {
            let batch = match self.fill_batch(buffer, |f| backend.staged_inflate_pfns(f)) {
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
            match backend.tell_host(QueueRole::Inflate, batch.as_slice()) {
                Ok(()) => {
                    backend.commit_inflate();
                    self.pages += sent;
                    self.counters.inflated += sent;
                }
                Err(err) => return self.host_failed(err, backend, QueueRole::Inflate),
            }
        }
        if short {
            self.counters.alloc_failures += 1;
            let delay = self.backoff.fail();
            if self.backoff.should_log() {
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

    /// Fills `buffer` with the PFNs of the pages `staged` walks; fails with
    /// the count of pages the device's 32-bit PFNs cannot name.
    fn fill_batch<'b>(
        &self,
        buffer: &'b mut [u32],
        staged: impl FnOnce(&mut dyn FnMut(u64)),
    ) -> Result<PfnBatch<'b>, u32> {
        let mut batch = PfnBatch::new(buffer, self.geometry, self.little_endian);
        let mut unnamed = 0u32;
        staged(&mut |pfn| {
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

    fn deflate<B: Backend>(&mut self, backend: &mut B, buffer: &mut [u32], wanted: u64) -> Step {
        let capacity = self.geometry.guest_pages(buffer.len() as u64);
        if backend.dequeue_pages(self.geometry.guest_pages(wanted).min(capacity)) == 0 {
            // Every page left is isolated for migration right now; the
            // migration puts it back (or swaps it) shortly.
            return Step::Backoff(ISOLATED_RETRY_MS);
        }
        let batch = match self.fill_batch(buffer, |f| backend.staged_deflate_pfns(f)) {
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
        match backend.tell_host(QueueRole::Deflate, batch.as_slice()) {
            Ok(()) => {
                backend.commit_deflate();
                self.pages -= sent;
                self.counters.deflated += sent;
                self.backoff.succeed();
                Step::Progress
            }
            Err(err) => self.host_failed(err, backend, QueueRole::Deflate),
        }
    }

    fn host_failed<B: Backend>(
        &mut self,
        err: HostError,
        backend: &mut B,
        queue: QueueRole,
    ) -> Step {
        match err {
            HostError::Queue => {
                // The host never saw the buffer: undo and retry later.
                match queue {
                    QueueRole::Deflate => backend.abort_deflate(),
                    _ => backend.abort_inflate(),
                }
                let delay = self.backoff.fail();
                if self.backoff.should_log() {
                    log::warn!(
                        "cannot queue a {:?} buffer; retrying in {} ms\n",
                        queue,
                        delay
                    );
                }
                Step::Backoff(delay)
            }
            HostError::Timeout => {
                // The host may still read the buffer and the staged pages:
                // keep both untouched until the device is reset.
                log::error!(
                    "host did not return the {:?} buffer; balloon updates stop until the device is reset\n",
                    queue
                );
                self.stalled = true;
                Step::Stalled
            }
        }
    }

    /// Gives up to `max` balloon pages back to the guest because it is out
    /// of memory (`DEFLATE_ON_OOM`), telling the host first, and returns how
    /// many went back.
    ///
    /// The balloon then stays below the host's target until the host sets
    /// a new one: re-inflating at once would only cause the next OOM.
    pub fn oom_deflate<B: Backend>(
        &mut self,
        backend: &mut B,
        buffer: &mut [u32],
        max: u64,
    ) -> u64 {
        if self.stalled || self.pages == 0 {
            return 0;
        }
        let before = self.pages;
        let _ = self.deflate(backend, buffer, max.min(self.pages));
        let freed = before - self.pages;
        if freed > 0 {
            self.held_target = Some(backend.read_target());
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
    /// isolated for migration, and [`Step::Stalled`] when the host stopped
    /// answering: then the caller resets the device and calls
    /// [`Engine::forget_all`].
    pub fn drain_step<B: Backend>(&mut self, backend: &mut B, buffer: &mut [u32]) -> Step {
        if self.stalled {
            return Step::Stalled;
        }
        if self.pages == 0 {
            backend.write_actual(0);
            return Step::Reached;
        }
        let step = self.deflate(backend, buffer, self.pages);
        backend.write_actual(self.actual());
        step
    }

    /// After a device reset, gives every page back without telling the host.
    ///
    /// Returns `false` while some pages are isolated for migration; call
    /// again after a short sleep without holding the balloon lock.
    pub fn forget_all<B: Backend>(&mut self, backend: &mut B) -> bool {
        let per_page = u64::from(self.geometry.balloon_pages_per_page());
        backend.abort_inflate();
        backend.commit_deflate();
        while self.pages > 0 {
            let got = backend.dequeue_pages(self.geometry.guest_pages(self.pages)) * per_page;
            if got == 0 {
                return false;
            }
            backend.commit_deflate();
            self.pages = self.pages.saturating_sub(got);
            self.counters.deflated += got;
        }
        self.stalled = false;
        true
    }

    /// Tells the host that the guest page `new_pfn` replaces `old_pfn` in
    /// the balloon (page migration by compaction): inflate the new page,
    /// then deflate the old one, as the C driver does.
    pub fn migrate<B: Backend>(
        &mut self,
        backend: &mut B,
        buffer: &mut [u32],
        new_pfn: u64,
        old_pfn: u64,
    ) -> Result<(), HostError> {
        if self.stalled {
            return Err(HostError::Queue);
        }
        for (queue, pfn) in [(QueueRole::Inflate, new_pfn), (QueueRole::Deflate, old_pfn)] {
            let mut batch = PfnBatch::new(buffer, self.geometry, self.little_endian);
            batch.push_page(pfn).map_err(|_| HostError::Queue)?;
            if let Err(err) = backend.tell_host(queue, batch.as_slice()) {
                if err == HostError::Timeout {
                    log::error!(
                        "host did not return the {:?} buffer of a migration; balloon updates stop until the device is reset\n",
                        queue
                    );
                    self.stalled = true;
                }
                return Err(err);
            }
        }
        self.counters.migrated += 1;
        Ok(())
    }
}
