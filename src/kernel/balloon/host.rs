// SPDX-License-Identifier: GPL-2.0

//! The engine's backend over the device and the pages, for one locked
//! section, and the pages allocated for an inflate before the lock.

use balloon_logic::engine::{
    Backend,
    HostError,
    MAX_IN_FLIGHT, //
};
use balloon_logic::features::QueueRole;
use balloon_logic::pfn::PFNS_PER_BUFFER;
use kernel::device::Bound;
use kernel::prelude::*;
use kernel::time::delay::fsleep;
use kernel::time::{
    Delta,
    Instant,
    Jiffies,
    Monotonic, //
};

use super::Balloon;
use crate::mm::{
    self,
    BalloonDevInfo,
    BulkPages,
    Embedded,
    HeldPage,
    MigratingPage,
    Pages,
    PageList,
    HUGE_BLOCK_ORDER, //
};
use super::config::{
    Actual,
    NumPages, //
};
use super::pfn_queue::{
    PfnQueue,
    SendError, //
};
use crate::virtio::Device;
use crate::wait_queue::WaitQueue;

/// Pages allocated for the next inflate before the balloon lock is taken,
/// so that direct reclaim never runs under it (the OOM notifier waits for
/// that lock). Only the update work uses it.
#[pin_data]
pub(super) struct Prealloc {
    #[pin]
    pub(super) pages: PageList,
    #[pin]
    pub(super) blocks: BlockList,
    pub(super) bulk: BulkPages,
}

/// How long [`Prealloc::fill_blocks`] keeps asking for a block by
/// compaction once a request failed.
const COMPACTION_PATIENCE_MS: i64 = 100;

/// Whole 2 MiB blocks (a host huge page each).
pub(super) type BlockList = PageList<HUGE_BLOCK_ORDER>;

impl Prealloc {
    /// Empty lists, and `bulk` for freeing in batches.
    pub(super) fn new(bulk: BulkPages) -> impl PinInit<Self> {
        pin_init!(Self {
            pages <- PageList::new(),
            blocks <- PageList::new(),
            bulk,
        })
    }

    /// Allocates up to `count` whole blocks: free ones first, without
    /// reclaim, retry or warning (as `vmw_balloon` takes its 2 MiB pages),
    /// then by compacting for them. Returns how many it got and how many of
    /// them took compaction. Fewer than `count` means no more could be
    /// made for now; the engine takes single pages only when none came
    /// (`balloon_logic::engine::single_pages_after_blocks`).
    ///
    /// The kernel skips compaction for a while after it failed elsewhere
    /// (kcompactd defers it, counting the requests that come meanwhile), so
    /// a failed request is asked again, a millisecond apart, until requests
    /// have failed for [`COMPACTION_PATIENCE_MS`] in a row.
    pub(super) fn fill_blocks(self: Pin<&mut Self>, count: u64) -> (u64, u64) {
        let mut blocks = self.project().blocks;
        let (mut got, mut compacted) = (0, 0);
        let mut failing_since = None;
        while got < count {
            let block = match Pages::alloc_free_block() {
                Some(block) => block,
                None => match Pages::alloc_compacted_block() {
                    Some(block) => {
                        compacted += 1;
                        failing_since = None;
                        block
                    }
                    None if !Pages::<HUGE_BLOCK_ORDER>::compactable() => break,
                    None => {
                        let since = *failing_since.get_or_insert_with(Instant::<Monotonic>::now);
                        if since.elapsed().as_millis() >= COMPACTION_PATIENCE_MS {
                            break;
                        }
                        fsleep(Delta::from_millis(1));
                        continue;
                    }
                },
            };
            blocks.as_mut().push(block);
            got += 1;
        }
        (got, compacted)
    }

    /// Frees what the step did not take.
    pub(super) fn clear(self: Pin<&mut Self>) {
        let this = self.project();
        this.pages.clear();
        this.blocks.clear();
    }

    /// Allocates up to `count` balloon pages: many per call while memory is
    /// plentiful; near the watermarks the bulk allocator stops and single
    /// allocations (with light reclaim, like the C driver's) take over.
    pub(super) fn fill(self: Pin<&mut Self>, count: u64) {
        let this = self.project();
        let mut pages = this.pages;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        let mut got = 0;
        while got < count {
            let asked = (count - got).min(PFNS_PER_BUFFER);
            let bulk = this.bulk.alloc_into(pages.as_mut(), asked);
            got += bulk;
            if bulk < asked {
                break;
            }
        }
        while got < count {
            let Some(page) = Pages::alloc() else { break };
            pages.as_mut().push(page);
            got += 1;
        }
    }
}

/// The engine's view of the device and the pages, for one locked section.
pub(super) struct DeviceBackend<'a> {
    pub(super) dev: &'a Device<Bound>,
    pub(super) inflate_queue: &'a mut PfnQueue,
    pub(super) deflate_queue: &'a mut PfnQueue,
    pub(super) acked: &'a WaitQueue,
    pub(super) balloon: Embedded<'a, Balloon, BalloonDevInfo<Balloon>>,
    pub(super) staged_inflate: Pin<&'a mut PageList>,
    pub(super) staged_deflate: Pin<&'a mut PageList>,
    /// The balloon's whole blocks, off the balloon core's list (unmovable).
    pub(super) blocks: Pin<&'a mut BlockList>,
    pub(super) staged_inflate_blocks: Pin<&'a mut BlockList>,
    pub(super) staged_deflate_blocks: Pin<&'a mut BlockList>,
    pub(super) bulk: &'a mut BulkPages,
    /// Pages and blocks allocated for this step, outside the lock.
    pub(super) prealloc: Option<Pin<&'a mut Prealloc>>,
    pub(super) held: &'a mut Option<HeldPage>,
    /// The migration in progress, in the migration callback.
    pub(super) migrating: Option<&'a MigratingPage<'a>>,
    pub(super) timeout: Jiffies,
}

impl Backend for DeviceBackend<'_> {
    fn read_target(&mut self) -> u32 {
        // Every balloon device has `num_pages`.
        self.dev.read_config::<NumPages>().unwrap_or(0)
    }

    fn write_actual(&mut self, actual: u32) {
        // Every balloon device has `actual`: this cannot fail.
        let _ = self.dev.write_config::<Actual>(actual);
    }

    fn available_pages(&mut self) -> u64 {
        // The pages allocated for this step already lowered the figure;
        // they are the step's to take, so they count as available, or the
        // step would take fewer than it allocated and back off short of
        // the reserve floor.
        let preallocated = self.prealloc.as_ref().map_or(0, |p| {
            p.pages.len() as u64 + ((p.blocks.len() as u64) << HUGE_BLOCK_ORDER)
        });
        mm::available_pages().saturating_add(preallocated)
    }

    fn managed_pages(&mut self) -> u64 {
        mm::total_ram_pages()
    }

    fn alloc_pages(&mut self, max: u64) -> u64 {
        // The pages were allocated before the lock was taken.
        let prealloc = self.prealloc.as_mut().map(|p| p.as_mut().project().pages);
        stage(self.staged_inflate.as_mut(), prealloc, max)
    }

    fn alloc_blocks(&mut self, max: u64) -> u64 {
        // The blocks too.
        let prealloc = self.prealloc.as_mut().map(|p| p.as_mut().project().blocks);
        stage(self.staged_inflate_blocks.as_mut(), prealloc, max)
    }

    fn staged_inflate_blocks(&self, f: &mut dyn FnMut(u64)) {
        self.staged_inflate_blocks.for_each_pfn(f);
    }

    fn dequeue_blocks(&mut self, max: u64) -> u64 {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        self.balloon.dequeue_blocks(
            self.blocks.as_mut(),
            self.staged_deflate_blocks.as_mut(),
            max,
        ) as u64
    }

    fn staged_deflate_blocks(&self, f: &mut dyn FnMut(u64)) {
        self.staged_deflate_blocks.for_each_pfn(f);
    }

    fn staged_inflate_pfns(&self, f: &mut dyn FnMut(u64)) {
        self.staged_inflate.for_each_pfn(f);
    }

    fn commit_inflate(&mut self) {
        self.balloon.enqueue_list(self.staged_inflate.as_mut());
        self.balloon
            .enqueue_blocks(self.staged_inflate_blocks.as_mut(), self.blocks.as_mut());
    }

    fn abort_inflate(&mut self) {
        self.staged_inflate.as_mut().clear();
        self.staged_inflate_blocks.as_mut().clear();
    }

    fn dequeue_pages(&mut self, max: u64) -> u64 {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        self.balloon.dequeue_list(self.staged_deflate.as_mut(), max) as u64
    }

    fn balloon_is_empty(&mut self) -> bool {
        self.balloon.is_empty() && self.blocks.len() == 0
    }

    fn staged_deflate_pfns(&self, f: &mut dyn FnMut(u64)) {
        self.staged_deflate.for_each_pfn(f);
    }

    fn commit_deflate(&mut self) {
        self.bulk.free_list(self.staged_deflate.as_mut());
        self.staged_deflate_blocks.as_mut().clear();
    }

    fn abort_deflate(&mut self) {
        self.balloon.enqueue_list(self.staged_deflate.as_mut());
        self.balloon
            .enqueue_blocks(self.staged_deflate_blocks.as_mut(), self.blocks.as_mut());
    }

    fn tell_host(
        &mut self,
        queue: QueueRole,
        pfns: &[u32],
        per_buffer: usize,
    ) -> Result<(), HostError> {
        let vq = match queue {
            QueueRole::Inflate => &mut *self.inflate_queue,
            QueueRole::Deflate => &mut *self.deflate_queue,
            _ => return Err(HostError::Queue),
        };
        vq.send_all_and_wait(pfns, per_buffer, self.acked, self.timeout)
            .map_err(|err| match err {
                SendError::Queue(_) => HostError::Queue,
                SendError::Broken => HostError::Broken,
                SendError::Timeout => HostError::Timeout,
            })
    }

    fn host_returned(&mut self, queue: QueueRole) -> bool {
        match queue {
            QueueRole::Inflate => self.inflate_queue.all_returned(),
            QueueRole::Deflate => self.deflate_queue.all_returned(),
            _ => false,
        }
    }

    fn hold_migrated_page(&mut self) {
        if let Some(migrating) = self.migrating {
            *self.held = Some(migrating.hold());
        }
    }

    fn release_held_page(&mut self) {
        *self.held = None;
    }
}

/// Moves up to `max` preallocated pages or blocks onto `staged`; none
/// outside the update work, which alone preallocates.
fn stage<const ORDER: u32>(
    staged: Pin<&mut PageList<ORDER>>,
    prealloc: Option<Pin<&mut PageList<ORDER>>>,
    max: u64,
) -> u64 {
    let Some(prealloc) = prealloc else {
        return 0;
    };
    staged.take_from(prealloc, usize::try_from(max).unwrap_or(usize::MAX)) as u64
}

/// Inflate or deflate buffers sent at once (`buffers_in_flight`, 1 to
/// [`MAX_IN_FLIGHT`]).
pub(super) fn buffers_in_flight() -> usize {
    (crate::module_parameters::buffers_in_flight.value() as usize).clamp(1, MAX_IN_FLIGHT)
}

/// How long to wait for the host to return a buffer (`host_timeout_ms`,
/// at least 100 ms: a zero would declare every host dead at once).
pub(super) fn host_timeout() -> Jiffies {
    kernel::time::msecs_to_jiffies(crate::module_parameters::host_timeout_ms.value().max(100))
}
