// SPDX-License-Identifier: GPL-2.0

//! The balloon driver: binds the virtio balloon device and moves pages
//! between the guest and the host as the host's target changes, reports
//! memory statistics, gives pages back on OOM and reports free pages.
//!
//! Safe Rust only: the policy is `balloon_logic`, the device and the pages
//! are reached through [`crate::virtio`] and [`crate::mm`].

use core::fmt;
use core::sync::atomic::{
    AtomicBool,
    Ordering, //
};

use balloon_logic::config;
use balloon_logic::engine::{
    Backend,
    Counters,
    Engine,
    HostError,
    Step, //
};
use balloon_logic::features::{
    self,
    queue_layout,
    Features,
    QueueRole, //
};
use balloon_logic::hint::{
    self,
    HintAction, //
};
use balloon_logic::pfn::{
    PageGeometry,
    PFNS_PER_BUFFER, //
};
use balloon_logic::stats;
use balloon_logic::target::reserve_pages;
use kernel::debugfs::{
    Dir,
    Scope, //
};
use kernel::prelude::*;
use kernel::sync::atomic::{
    Atomic,
    Relaxed, //
};
use kernel::sync::{
    Mutex,
    SpinLockIrq, //
};
use kernel::time::Jiffies;
use kernel::{
    new_mutex,
    new_spinlock_irq, //
};

use crate::mm::{
    self,
    BalloonDevInfo,
    BulkAlloc,
    HeldPage,
    MigratingPage,
    OomNotifier,
    Page,
    PageList,
    PageReporting,
    ReportedPages,
    Shrinker,
    HINT_BLOCK_ORDER, //
};
use crate::virtio::{
    self,
    DelayedWork,
    Device,
    DeviceHandle,
    SendError,
    QueueSpec,
    Virtqueue,
    Virtqueues,
    WaitQueue, //
};
use crate::{
    impl_has_balloon_dev_info,
    impl_has_delayed_work,
    impl_has_oom_notifier,
    impl_has_page_reporting,
    impl_has_shrinker, //
};

/// The device's queues for the negotiated features: their names, in the
/// order the device numbers them, and where each role sits.
#[derive(Clone, Copy)]
struct QueueIndex {
    specs: [QueueSpec; features::MAX_QUEUES],
    count: usize,
    inflate: usize,
    deflate: usize,
    stats: Option<usize>,
    free_page: Option<usize>,
    reporting: Option<usize>,
}

impl QueueIndex {
    fn new(features: Features) -> Self {
        let (layout, count) = queue_layout(features);
        let mut index = Self {
            specs: [queue_spec(QueueRole::Inflate); features::MAX_QUEUES],
            count,
            inflate: 0,
            deflate: 1,
            stats: None,
            free_page: None,
            reporting: None,
        };
        for (i, role) in layout.iter().take(count).enumerate() {
            let Some(role) = *role else { continue };
            index.specs[i] = queue_spec(role);
            match role {
                QueueRole::Inflate => index.inflate = i,
                QueueRole::Deflate => index.deflate = i,
                QueueRole::Stats => index.stats = Some(i),
                QueueRole::Reporting => index.reporting = Some(i),
                QueueRole::FreePage => index.free_page = Some(i),
            }
        }
        index
    }

    /// The queues to find.
    fn specs(&self) -> &[QueueSpec] {
        &self.specs[..self.count]
    }
}

/// What the balloon lock protects: the balloon and its two queues.
struct State {
    /// The policy and the balloon's size; `None` while the device is down.
    engine: Option<Engine>,
    inflate_queue: Option<Virtqueue>,
    deflate_queue: Option<Virtqueue>,
    /// The device's queue set, holding the handles not taken out.
    queues: Option<Virtqueues>,
    /// PFN array sent to the host (kmalloc memory, as DMA needs).
    pfns: KVec<u32>,
    /// Pages allocated for the inflate in flight.
    staged_inflate: Pin<KBox<PageList>>,
    /// Pages out of the balloon for the deflate in flight.
    staged_deflate: Pin<KBox<PageList>>,
    /// Scratch space for freeing deflated pages in batches.
    bulk: BulkAlloc,
    /// The old page of a migration, kept from the allocator until the host
    /// acknowledges its deflate.
    held: Option<HeldPage>,
}

/// Pages allocated for the next inflate before the balloon lock is taken,
/// so that direct reclaim never runs under it (the OOM notifier waits for
/// that lock). Only the update work uses it.
struct Prealloc {
    pages: Pin<KBox<PageList>>,
    bulk: BulkAlloc,
}

impl Prealloc {
    /// Allocates up to `count` balloon pages: many per call while memory is
    /// plentiful; near the watermarks the bulk allocator stops and single
    /// allocations (with light reclaim, like the C driver's) take over.
    fn fill(&mut self, count: u64) {
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        let mut got = self.bulk.alloc_into(self.pages.as_mut(), count);
        while got < count {
            let Some(page) = Page::alloc() else { break };
            self.pages.as_mut().push(page);
            got += 1;
        }
    }
}

/// The stats queue; it owns the buffer the host holds between requests.
struct StatsState {
    queue: Option<Virtqueue>,
}

/// Free page hinting: the queue, the command id buffers the host reads,
/// and the blocks hinted so far.
struct HintState {
    queue: Option<Virtqueue>,
    /// Id of the round last started (the guest's byte order).
    active: u32,
    blocks: Pin<KBox<PageList<HINT_BLOCK_ORDER>>>,
}

/// Figures for the guest-side view in debugfs.
struct DebugView {
    features: Features,
    target_pages: Atomic<u64>,
    actual_pages: Atomic<u64>,
    inflated_pages: Atomic<u64>,
    deflated_pages: Atomic<u64>,
    alloc_failures: Atomic<u64>,
    backoff_ms: Atomic<u64>,
    migrated_pages: Atomic<u64>,
    oom_deflated_pages: Atomic<u64>,
    reserve_pages: Atomic<u64>,
    stats_updates: Atomic<u64>,
    free_page_reports: Atomic<u64>,
    hint_rounds: Atomic<u64>,
    hinted_blocks: Atomic<u64>,
    hint_blocks_held: Atomic<u64>,
    host_stalled: Atomic<u64>,
    late_buffers: Atomic<u64>,
    /// Balloon (4 KiB) pages per guest page, to show the reserve in them.
    balloon_pages_per_page: u64,
}

impl DebugView {
    fn new(features: Features, geometry: PageGeometry) -> Self {
        Self {
            features,
            late_buffers: Atomic::new(0),
            balloon_pages_per_page: u64::from(geometry.balloon_pages_per_page()),
            target_pages: Atomic::new(0),
            actual_pages: Atomic::new(0),
            inflated_pages: Atomic::new(0),
            deflated_pages: Atomic::new(0),
            alloc_failures: Atomic::new(0),
            backoff_ms: Atomic::new(0),
            migrated_pages: Atomic::new(0),
            oom_deflated_pages: Atomic::new(0),
            reserve_pages: Atomic::new(0),
            stats_updates: Atomic::new(0),
            free_page_reports: Atomic::new(0),
            hint_rounds: Atomic::new(0),
            hinted_blocks: Atomic::new(0),
            hint_blocks_held: Atomic::new(0),
            host_stalled: Atomic::new(0),
        }
    }

    /// Publishes the engine's figures.
    fn update(&self, engine: &Engine) {
        let Counters {
            inflated,
            deflated,
            alloc_failures,
            migrated,
            oom_deflated,
            late_buffers,
            ..
        } = engine.counters();
        self.late_buffers.store(late_buffers, Relaxed);
        self.target_pages
            .store(u64::from(engine.last_target()), Relaxed);
        self.actual_pages.store(engine.pages(), Relaxed);
        self.inflated_pages.store(inflated, Relaxed);
        self.deflated_pages.store(deflated, Relaxed);
        self.alloc_failures.store(alloc_failures, Relaxed);
        self.backoff_ms
            .store(u64::from(engine.backoff_ms()), Relaxed);
        self.migrated_pages.store(migrated, Relaxed);
        self.oom_deflated_pages.store(oom_deflated, Relaxed);
        self.reserve_pages
            .store(engine.reserve() * self.balloon_pages_per_page, Relaxed);
        self.host_stalled
            .store(u64::from(engine.is_stalled()), Relaxed);
    }
}

fn write_features(view: &DebugView, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(
        f,
        "{:#x} {:?}",
        view.features.bits(),
        DisplayFeatures(view.features)
    )
}

fn write_status(view: &DebugView, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let kib = |value: &Atomic<u64>| value.load(Relaxed) * 4;
    writeln!(f, "features:          {:?}", DisplayFeatures(view.features))?;
    writeln!(f, "target:            {} KiB", kib(&view.target_pages))?;
    writeln!(f, "actual:            {} KiB", kib(&view.actual_pages))?;
    writeln!(f, "inflated:          {} KiB", kib(&view.inflated_pages))?;
    writeln!(f, "deflated:          {} KiB", kib(&view.deflated_pages))?;
    writeln!(f, "migrated:          {} KiB", kib(&view.migrated_pages))?;
    writeln!(
        f,
        "oom_deflated:      {} KiB",
        kib(&view.oom_deflated_pages)
    )?;
    writeln!(f, "reserve:           {} KiB", kib(&view.reserve_pages))?;
    writeln!(
        f,
        "alloc_failures:    {}",
        view.alloc_failures.load(Relaxed)
    )?;
    writeln!(f, "backoff_ms:        {}", view.backoff_ms.load(Relaxed))?;
    writeln!(f, "stats_updates:     {}", view.stats_updates.load(Relaxed))?;
    writeln!(
        f,
        "free_page_reports: {}",
        view.free_page_reports.load(Relaxed)
    )?;
    writeln!(f, "hint_rounds:       {}", view.hint_rounds.load(Relaxed))?;
    writeln!(f, "hinted_blocks:     {}", view.hinted_blocks.load(Relaxed))?;
    writeln!(
        f,
        "hint_blocks_held:  {}",
        view.hint_blocks_held.load(Relaxed)
    )?;
    writeln!(f, "host_stalled:      {}", view.host_stalled.load(Relaxed))?;
    writeln!(f, "late_buffers:      {}", view.late_buffers.load(Relaxed))
}

/// The per-device driver state.
#[pin_data]
pub(crate) struct Balloon {
    dev: DeviceHandle,
    features: Features,
    geometry: PageGeometry,
    index: QueueIndex,
    #[pin]
    state: Mutex<State>,
    #[pin]
    stats: Mutex<StatsState>,
    #[pin]
    reporting_queue: Mutex<Option<Virtqueue>>,
    #[pin]
    hint: Mutex<HintState>,
    #[pin]
    acked: WaitQueue,
    #[pin]
    update_work: DelayedWork<Balloon, 0>,
    #[pin]
    stats_work: DelayedWork<Balloon, 1>,
    #[pin]
    hint_work: DelayedWork<Balloon, 2>,
    #[pin]
    hint_shrinker: Shrinker<Balloon>,
    #[pin]
    pages: BalloonDevInfo<Balloon>,
    #[pin]
    oom: OomNotifier<Balloon>,
    #[pin]
    reporting: PageReporting<Balloon>,
    /// Whether new work may be queued, and the wakeup events in progress.
    /// Interrupts queue work under it.
    #[pin]
    events: SpinLockIrq<Events>,
    /// The engine waits for a late inflate or deflate buffer: its return
    /// queues the update work.
    waiting_for_host: AtomicBool,
    /// Pages for the next inflate, allocated outside the balloon lock.
    #[pin]
    prealloc: Mutex<Prealloc>,
    view: Pin<KBox<Scope<DebugView>>>,
}

impl_has_delayed_work!(Balloon, update_work, 0, Balloon::update);
impl_has_delayed_work!(Balloon, stats_work, 1, Balloon::send_stats);
impl_has_delayed_work!(Balloon, hint_work, 2, Balloon::free_page_hint);
impl_has_shrinker!(
    Balloon,
    hint_shrinker,
    Balloon::hint_pages_held,
    Balloon::release_hint_pages
);
impl_has_balloon_dev_info!(Balloon, pages, Balloon::migrate);
impl_has_oom_notifier!(Balloon, oom, Balloon::out_of_memory);
impl_has_page_reporting!(Balloon, reporting, Balloon::report_free_pages);

/// A balloon size adjustment keeps the system awake (`pm_stay_awake`).
const WAKE_ADJUST: u32 = 1 << 0;
/// So does a stats request.
const WAKE_STATS: u32 = 1 << 1;

/// What interrupts may start, under an irq-safe lock: the C driver's
/// `stop_update` and wakeup event state.
struct Events {
    /// Set while the device is down or going down: no new work is queued.
    stopped: bool,
    /// `WAKE_*` reasons queued and not yet picked up by their work.
    wakeup: u32,
    /// The device holds the system awake.
    awake: bool,
}

/// The engine's view of the device and the pages, for one locked section.
struct Host<'a> {
    dev: &'a Device,
    inflate_queue: &'a mut Virtqueue,
    deflate_queue: &'a mut Virtqueue,
    acked: &'a WaitQueue,
    balloon: &'a BalloonDevInfo<Balloon>,
    staged_inflate: Pin<&'a mut PageList>,
    staged_deflate: Pin<&'a mut PageList>,
    bulk: &'a mut BulkAlloc,
    /// Pages allocated for this step, outside the lock.
    prealloc: Option<Pin<&'a mut PageList>>,
    held: &'a mut Option<HeldPage>,
    /// The migration in progress, in the migration callback.
    migrating: Option<&'a MigratingPage<'a>>,
    timeout: Jiffies,
}

impl Backend for Host<'_> {
    fn read_target(&mut self) -> u32 {
        self.dev.read_config_le32(config::NUM_PAGES)
    }

    fn write_actual(&mut self, actual: u32) {
        self.dev.write_config_le32(config::ACTUAL, actual);
    }

    fn available_pages(&mut self) -> u64 {
        mm::available_pages()
    }

    fn managed_pages(&mut self) -> u64 {
        mm::total_ram_pages()
    }

    fn alloc_pages(&mut self, max: u64) -> u64 {
        // The pages were allocated before the lock was taken.
        let Some(prealloc) = self.prealloc.as_mut() else {
            return 0;
        };
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        self.staged_inflate
            .as_mut()
            .take_from(prealloc.as_mut(), max) as u64
    }

    fn staged_inflate_pfns(&self, f: &mut dyn FnMut(u64)) {
        self.staged_inflate.for_each_pfn(f);
    }

    fn commit_inflate(&mut self) {
        self.balloon.enqueue_list(self.staged_inflate.as_mut());
    }

    fn abort_inflate(&mut self) {
        self.staged_inflate.as_mut().clear();
    }

    fn dequeue_pages(&mut self, max: u64) -> u64 {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        self.balloon.dequeue_list(self.staged_deflate.as_mut(), max) as u64
    }

    fn balloon_is_empty(&mut self) -> bool {
        self.balloon.is_empty()
    }

    fn staged_deflate_pfns(&self, f: &mut dyn FnMut(u64)) {
        self.staged_deflate.for_each_pfn(f);
    }

    fn commit_deflate(&mut self) {
        self.bulk.free_list(self.staged_deflate.as_mut());
    }

    fn abort_deflate(&mut self) {
        self.balloon.enqueue_list(self.staged_deflate.as_mut());
    }

    fn tell_host(&mut self, queue: QueueRole, pfns: &[u32]) -> Result<(), HostError> {
        let vq = match queue {
            QueueRole::Inflate => &mut *self.inflate_queue,
            QueueRole::Deflate => &mut *self.deflate_queue,
            _ => return Err(HostError::Queue),
        };
        vq.send_and_wait(pfns, self.acked, self.timeout)
            .map_err(|err| match err {
                SendError::Queue(_) => HostError::Queue,
                SendError::Broken => HostError::Broken,
                SendError::Timeout => HostError::Timeout,
            })
    }

    fn host_returned(&mut self, queue: QueueRole) -> bool {
        match queue {
            QueueRole::Inflate => self.inflate_queue.get_buf(),
            QueueRole::Deflate => self.deflate_queue.get_buf(),
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

/// How long to wait for the host to return a buffer (`host_timeout_ms`,
/// at least 100 ms: a zero would declare every host dead at once).
fn host_timeout() -> Jiffies {
    kernel::time::msecs_to_jiffies(crate::module_parameters::host_timeout_ms.value().max(100))
}

impl Balloon {
    /// Runs `f` with the engine, the PFN buffer and a backend over the
    /// device, under the balloon lock; `None` while the device is down.
    ///
    /// `prealloc` holds the pages allocated for this step; `migrating` is
    /// the migration in progress, in the migration callback.
    fn with_engine<R>(
        &self,
        state: &mut State,
        prealloc: Option<Pin<&mut PageList>>,
        migrating: Option<&MigratingPage<'_>>,
        f: impl FnOnce(&mut Engine, &mut Host<'_>, &mut [u32]) -> R,
    ) -> Option<R> {
        let State {
            engine,
            inflate_queue,
            deflate_queue,
            pfns,
            staged_inflate,
            staged_deflate,
            bulk,
            held,
            ..
        } = state;
        let engine = engine.as_mut()?;
        let mut host = Host {
            dev: self.dev.get(),
            inflate_queue: inflate_queue.as_mut()?,
            deflate_queue: deflate_queue.as_mut()?,
            acked: &self.acked,
            balloon: &self.pages,
            staged_inflate: staged_inflate.as_mut(),
            staged_deflate: staged_deflate.as_mut(),
            bulk,
            prealloc,
            held,
            migrating,
            timeout: host_timeout(),
        };
        let result = f(engine, &mut host, pfns);
        self.view.update(engine);
        self.waiting_for_host
            .store(engine.late().is_some(), Ordering::Release);
        Some(result)
    }

    /// Queues `work` unless the device is going down, keeping the system
    /// awake for it when `wake` names a reason; the check and the queueing
    /// happen under one lock, so that once [`Balloon::quiesce`] has taken
    /// it, nothing new is queued (callable from interrupts).
    fn queue_unless_stopped<const ID: u64>(&self, work: &DelayedWork<Balloon, ID>, wake: u32)
    where
        Balloon: virtio::HasDelayedWork<ID>,
    {
        let mut events = self.events.lock();
        if events.stopped {
            return;
        }
        if wake != 0 {
            events.wakeup |= wake;
            if !events.awake {
                events.awake = true;
                self.dev.get().stay_awake();
            }
        }
        work.run_now();
    }

    /// A work item started on behalf of `wake`; false if the device is
    /// going down.
    fn work_started(&self, wake: u32) -> bool {
        let mut events = self.events.lock();
        events.wakeup &= !wake;
        !events.stopped
    }

    /// A work item is done: let the system sleep if nothing else is pending.
    fn work_finished(&self) {
        let mut events = self.events.lock();
        if events.wakeup == 0 && events.awake {
            events.awake = false;
            self.dev.get().relax();
        }
    }

    fn stopped(&self) -> bool {
        self.events.lock().stopped
    }

    /// The size work: one batch towards the target, then re-queue while
    /// it makes progress (the system stays awake until then).
    fn update(&self) {
        if !self.work_started(WAKE_ADJUST) {
            self.work_finished();
            return;
        }
        // Allocate outside the balloon lock: direct reclaim may take long,
        // and the OOM notifier waits for that lock.
        let wanted = {
            let mut state = self.state.lock();
            self.with_engine(&mut state, None, None, |engine, host, _| {
                engine.pages_to_allocate(host)
            })
        };
        let mut prealloc = self.prealloc.lock();
        if let Some(count) = wanted.filter(|count| *count > 0) {
            prealloc.fill(count);
        }
        let step = {
            let mut state = self.state.lock();
            self.with_engine(
                &mut state,
                Some(prealloc.pages.as_mut()),
                None,
                |engine, host, pfns| engine.step(host, pfns),
            )
        };
        // What the step did not take (the target moved meanwhile) goes back.
        prealloc.pages.as_mut().clear();
        drop(prealloc);
        match step {
            Some(Step::Progress) => {
                self.update_work.queue(0);
                return;
            }
            // No progress to wait for: the system may sleep meanwhile.
            Some(Step::Backoff(delay_ms)) => self.update_work.queue(delay_ms),
            // A late buffer coming back queues the work again.
            Some(Step::Reached) | Some(Step::Stalled) | None => {}
        }
        self.work_finished();
    }

    /// Fills the stats buffer with fresh figures.
    fn fill_stats(&self, buffer: &mut [u8; stats::BUFFER_SIZE]) -> usize {
        let little_endian = self.features.pfns_little_endian();
        mm::memory_snapshot().encode(mm::PAGE_SHIFT, little_endian, buffer)
    }

    /// The stats work: the host returned the stats buffer to ask for fresh
    /// figures; refill it and hand it back.
    fn send_stats(&self) {
        if self.work_started(WAKE_STATS) {
            self.refill_stats();
        }
        self.work_finished();
    }

    /// Hands the host a fresh stats buffer if it gave the last one back.
    fn refill_stats(&self) {
        let mut guard = self.stats.lock();
        let Some(queue) = guard.queue.as_mut() else {
            return;
        };
        if !queue.get_buf() {
            return;
        }
        let mut buffer = [0u8; stats::BUFFER_SIZE];
        let len = self.fill_stats(&mut buffer);
        if let Err(err) = queue.send(&buffer[..len]) {
            dev_warn!(
                self.dev.get().as_dev(),
                "cannot queue the stats buffer: {:?}\n",
                err
            );
            return;
        }
        queue.kick();
        self.view.stats_updates.fetch_add(1, Relaxed);
    }

    /// Compaction moved a ballooned page: tell the host.
    fn migrate(&self, pages: &MigratingPage<'_>) -> Result {
        // Never wait for the lock: its holder may be waiting for the host,
        // and compaction has other pages to move. The core retries later.
        let mut state = self.state.try_lock().ok_or(EAGAIN)?;
        self.with_engine(&mut state, None, Some(pages), |engine, host, pfns| {
            engine.migrate(host, pfns, pages.new_pfn, pages.old_pfn)
        })
        .ok_or(EAGAIN)?
        .map_err(|_| EAGAIN)
    }

    /// The guest is out of memory (`DEFLATE_ON_OOM`): give back one buffer
    /// of pages, so the OOM killer need not run while the balloon has any.
    fn out_of_memory(&self) -> u64 {
        let mut state = self.state.lock();
        let freed = self
            .with_engine(&mut state, None, None, |engine, host, pfns| {
                engine.oom_deflate(host, pfns, PFNS_PER_BUFFER as u64)
            })
            .unwrap_or(0);
        self.geometry.guest_pages(freed)
    }

    /// The page reporting core has free pages for the host to discard.
    fn report_free_pages(&self, pages: &ReportedPages<'_>) -> Result {
        let mut guard = self.reporting_queue.lock();
        let queue = Option::as_mut(&mut *guard).ok_or(ENODEV)?;
        queue.report_and_wait(pages, &self.acked, host_timeout())?;
        self.view.free_page_reports.fetch_add(1, Relaxed);
        Ok(())
    }

    /// The hint work: the host wrote a command id; start a round, or take
    /// the hinted blocks back when it is done.
    fn free_page_hint(&self) {
        if self.stopped() {
            return;
        }
        let dev = self.dev.get();
        let received = dev.read_config_le32(config::FREE_PAGE_HINT_CMD_ID);
        let mut guard = self.hint.lock();
        let HintState {
            queue,
            active,
            blocks,
        } = &mut *guard;
        let Some(queue) = queue.as_mut() else { return };
        let little_endian = self.features.pfns_little_endian();
        match hint::on_cmd_id(received, *active) {
            HintAction::Nothing => {}
            HintAction::ReturnAll => {
                let held = blocks.len();
                blocks.as_mut().clear();
                self.view.hint_blocks_held.store(0, Relaxed);
                if held > 0 {
                    dev_dbg!(dev.as_dev(), "free page hints done: {} blocks back\n", held);
                }
            }
            HintAction::Start(id) => {
                self.view.hint_rounds.fetch_add(1, Relaxed);
                queue.drain_used();
                *active = id;
                let start = hint::cmd_id_to_device(id, little_endian);
                if let Err(err) = queue.send(&start.to_ne_bytes()) {
                    dev_err!(dev.as_dev(), "cannot send the hint start id: {:?}\n", err);
                    return;
                }
                queue.kick();
                let sent = self.send_hints(dev, queue, blocks.as_mut(), id);
                queue.drain_used();
                let stop = hint::cmd_id_to_device(hint::CMD_ID_STOP, little_endian);
                match queue.send(&stop.to_ne_bytes()) {
                    Ok(()) => queue.kick(),
                    Err(err) => dev_err!(dev.as_dev(), "cannot send the hint stop id: {:?}\n", err),
                }
                dev_dbg!(
                    dev.as_dev(),
                    "free page hint round {}: {} blocks\n",
                    id,
                    sent
                );
            }
        }
    }

    /// Hints free blocks until the guest has none left or the host moves
    /// to another command id; returns the blocks sent.
    fn send_hints(
        &self,
        dev: &Device,
        queue: &mut Virtqueue,
        mut blocks: Pin<&mut PageList<HINT_BLOCK_ORDER>>,
        id: u32,
    ) -> u64 {
        let mut sent = 0;
        let poll = kernel::time::msecs_to_jiffies(10);

        while !self.stopped()
            && hint::round_continues(dev.read_config_le32(config::FREE_PAGE_HINT_CMD_ID), id)
        {
            queue.drain_used();
            // One descriptor stays free for the stop id.
            if queue.num_free() <= 1 {
                queue.wait_used(&self.acked, poll);
                continue;
            }
            let Some(block) = Page::<HINT_BLOCK_ORDER>::alloc_free_block() else {
                break;
            };
            if let Err(err) = queue.add_hint(&block) {
                dev_warn!(dev.as_dev(), "cannot hint a free block: {:?}\n", err);
                break;
            }
            queue.kick();
            blocks.as_mut().push(block);
            sent += 1;
            self.view.hinted_blocks.fetch_add(1, Relaxed);
            self.view
                .hint_blocks_held
                .store(blocks.len() as u64, Relaxed);
        }
        sent
    }

    /// Pages held as free page hints, for the shrinker.
    fn hint_pages_held(&self) -> u64 {
        self.view.hint_blocks_held.load(Relaxed) << HINT_BLOCK_ORDER
    }

    /// Memory pressure: give hinted blocks back early (hints are advisory).
    fn release_hint_pages(&self, pages: u64) -> u64 {
        // Never wait: a hint round may be allocating right now.
        let Some(mut guard) = self.hint.try_lock() else {
            return 0;
        };
        let wanted = pages.div_ceil(1 << HINT_BLOCK_ORDER);
        let freed = guard
            .blocks
            .as_mut()
            .release(usize::try_from(wanted).unwrap_or(usize::MAX));
        self.view
            .hint_blocks_held
            .store(guard.blocks.len() as u64, Relaxed);
        (freed as u64) << HINT_BLOCK_ORDER
    }

    /// Sets the device up: queues, poison value, stats, notifiers.
    fn bring_up(&self, dev: &Device) -> Result {
        let index = self.index;
        let mut queues = dev.find_vqs::<Self>(index.specs())?;
        let inflate_queue = queues.take(index.inflate);
        let deflate_queue = queues.take(index.deflate);
        let stats_queue = index.stats.and_then(|i| queues.take(i));
        let reporting_queue = index.reporting.and_then(|i| queues.take(i));
        let hint_queue = index.free_page.and_then(|i| queues.take(i));
        let reporting_capacity = reporting_queue.as_ref().map(Virtqueue::size);

        let page_size = 1u64 << mm::PAGE_SHIFT;
        let reserve = reserve_pages(crate::module_parameters::reserve_kb.value(), page_size);
        {
            let mut state = self.state.lock();
            // Without deflate-on-OOM, inflated pages leave the managed RAM.
            let engine = Engine::new(
                self.geometry,
                self.features.pfns_little_endian(),
                !self.features.contains(Features::DEFLATE_ON_OOM),
                reserve,
            );
            self.view.update(&engine);
            state.engine = Some(engine);
            state.inflate_queue = inflate_queue;
            state.deflate_queue = deflate_queue;
            state.queues = Some(queues);
        }
        *self.reporting_queue.lock() = reporting_queue;
        if let Some(queue) = hint_queue {
            // The ring needs a descriptor for the command id besides hints.
            if queue.size() < 2 {
                dev_err!(dev.as_dev(), "free page hint queue too small\n");
                self.hint.lock().queue = Some(queue);
                return Err(ENOSPC);
            }
            let mut hint = self.hint.lock();
            hint.active = hint::CMD_ID_STOP;
            hint.queue = Some(queue);
        }

        dev.set_wakeup_capable();
        if self.features.contains(Features::PAGE_POISON) {
            let poison = features::poison_value(mm::zeroes_free_pages());
            dev.write_config_le32(config::POISON_VAL, poison);
        }
        dev.ready();
        dev.write_config_le32(config::ACTUAL, 0);

        if let Some(queue) = stats_queue {
            // Prime the stats queue: the host returns this buffer when it
            // wants fresh figures.
            let mut stats = self.stats.lock();
            let mut buffer = [0u8; stats::BUFFER_SIZE];
            let len = self.fill_stats(&mut buffer);
            let queue = stats.queue.insert(queue);
            queue.send(&buffer[..len])?;
            queue.kick();
        }
        if self.features.contains(Features::DEFLATE_ON_OOM) {
            self.oom.register()?;
        }
        if let Some(capacity) = reporting_capacity {
            self.reporting.register(capacity)?;
        }
        if self.features.contains(Features::FREE_PAGE_HINT) {
            self.hint_shrinker.register(c"virtio-balloon-rs")?;
        }

        let target = dev.read_config_le32(config::NUM_PAGES);
        dev_info!(
            dev.as_dev(),
            "bound: features {:#x} ({:?}), {} queues, target {} KiB, reserve {} KiB\n",
            self.features.bits(),
            DisplayFeatures(self.features),
            index.count,
            u64::from(target) * 4,
            reserve * (page_size / 1024)
        );
        self.events.lock().stopped = false;
        // Honour a target set before the driver was loaded, and a stats
        // request the host made while the callbacks still ignored it.
        self.queue_unless_stopped(&self.update_work, WAKE_ADJUST);
        self.queue_unless_stopped(&self.stats_work, 0);
        Ok(())
    }

    /// Stops every activity but page reporting (a report may wait for the
    /// host until the device is reset): no new work, the OOM notifier and
    /// the shrinker gone, work items finished. The device keeps working for
    /// the caller.
    fn quiesce(&self) {
        // Once this is set under the lock, no interrupt queues work again,
        // so the cancellations below are final.
        self.events.lock().stopped = true;
        self.oom.unregister();
        self.hint_shrinker.unregister();
        self.update_work.cancel_sync();
        self.stats_work.cancel_sync();
        self.hint_work.cancel_sync();
        // A cancelled work item never picked up its wakeup event.
        let mut events = self.events.lock();
        events.wakeup = 0;
        if core::mem::take(&mut events.awake) {
            self.dev.get().relax();
        }
    }

    /// Stops everything, empties the balloon and takes the device down
    /// (remove, freeze, and a failed start).
    fn teardown(&self, dev: &Device) {
        self.quiesce();

        let mut told_host = false;
        loop {
            let mut state = self.state.lock();
            let step = self.with_engine(&mut state, None, None, |engine, host, pfns| {
                engine.drain_step(host, pfns)
            });
            match step {
                Some(Step::Progress) => continue,
                Some(Step::Backoff(delay_ms)) => {
                    drop(state);
                    kernel::time::delay::fsleep(kernel::time::Delta::from_millis(delay_ms.into()));
                }
                Some(Step::Reached) => {
                    told_host = true;
                    break;
                }
                Some(Step::Stalled) | None => break,
            }
        }
        let reset = dev.reset();
        // A report the host never returned ends with the reset; only then
        // can page reporting stop.
        self.reporting.unregister();
        loop {
            let mut state = self.state.lock();
            // After the reset the host holds no buffer and no page: whatever
            // is left (after a stall) goes back to the guest untold.
            let done = self
                .with_engine(&mut state, None, None, |engine, host, _| {
                    engine.forget_all(host)
                })
                .unwrap_or(true);
            if !done {
                drop(state);
                kernel::time::delay::fsleep(kernel::time::Delta::from_millis(10));
                continue;
            }
            let counters = state.engine.take().map(|engine| engine.counters());
            if let Some(mut queues) = state.queues.take() {
                let index = self.index;
                let taken = [
                    (Some(index.inflate), state.inflate_queue.take()),
                    (Some(index.deflate), state.deflate_queue.take()),
                    (index.stats, self.stats.lock().queue.take()),
                    (index.reporting, self.reporting_queue.lock().take()),
                    (index.free_page, self.hint.lock().queue.take()),
                ];
                for (slot, queue) in taken {
                    if let (Some(slot), Some(queue)) = (slot, queue) {
                        queues.put_back(slot, queue);
                    }
                }
                dev.del_vqs(queues, reset);
            }
            // Hinted blocks may be reused at any time; the device is reset.
            let mut hint = self.hint.lock();
            hint.blocks.as_mut().clear();
            self.view.hint_blocks_held.store(0, Relaxed);
            drop(hint);
            if let Some(c) = counters {
                dev_info!(
                    dev.as_dev(),
                    "balloon empty{}: inflated {} KiB and deflated {} KiB in all\n",
                    if told_host {
                        ""
                    } else {
                        " (host not answering: pages reclaimed after reset)"
                    },
                    c.inflated * 4,
                    c.deflated * 4
                );
            }
            return;
        }
    }
}

/// Each queue's name and the device-readable buffers it owns, by role.
fn queue_spec(role: QueueRole) -> QueueSpec {
    let (name, out_buffers, out_buffer_size) = match role {
        // One PFN array in flight at a time.
        QueueRole::Inflate => (c"inflate", 1, PFNS_PER_BUFFER * 4),
        QueueRole::Deflate => (c"deflate", 1, PFNS_PER_BUFFER * 4),
        // The host keeps the stats buffer until it wants fresh figures.
        QueueRole::Stats => (c"stats", 1, stats::BUFFER_SIZE),
        // A round's start and stop ids, with room for ids the host has not
        // handed back yet.
        QueueRole::FreePage => (c"free_page_vq", 4, 4),
        // Reports are the page reporting core's scatterlists.
        QueueRole::Reporting => (c"reporting_vq", 0, 0),
    };
    QueueSpec {
        name,
        out_buffers,
        out_buffer_size,
    }
}

impl virtio::Driver for Balloon {
    const NAME: &'static CStr = c"virtio_balloon_rs";
    const DEVICE_ID: u32 = features::DEVICE_ID;
    const FEATURE_TABLE: &'static [u32] = features::DRIVER_FEATURE_BITS;
    /// The debugfs directory every device's own directory goes in.
    type Shared = Dir;

    fn validate(dev: &Device) -> Result {
        let offered = Features::from_bits_truncate(dev.features());
        let clear = features::to_clear(offered, mm::poisons_free_pages());
        for (_, bit) in clear.iter_names() {
            dev.clear_feature(bit.bits().trailing_zeros());
        }
        // Reporting adds buffers with GFP_NOWAIT: no indirect descriptors,
        // which would need an allocation.
        dev.clear_feature(features::RING_INDIRECT_DESC_BIT);
        Ok(())
    }

    fn probe(dev: &Device, handle: DeviceHandle, root: &Dir) -> Result<Pin<KBox<Self>>> {
        if !dev.has_config_access() {
            dev_err!(dev.as_dev(), "probe failure: config access disabled\n");
            return Err(EINVAL);
        }
        let features = Features::from_bits_truncate(dev.features());
        let geometry = PageGeometry::new(mm::PAGE_SHIFT).map_err(|_| {
            dev_err!(dev.as_dev(), "unsupported page size\n");
            EINVAL
        })?;
        let index = QueueIndex::new(features);
        let mut pfns = KVec::with_capacity(PFNS_PER_BUFFER, GFP_KERNEL)?;
        pfns.resize(PFNS_PER_BUFFER, 0, GFP_KERNEL)?;
        let state = State {
            engine: None,
            inflate_queue: None,
            deflate_queue: None,
            queues: None,
            pfns,
            staged_inflate: KBox::pin_init(PageList::new(), GFP_KERNEL)?,
            staged_deflate: KBox::pin_init(PageList::new(), GFP_KERNEL)?,
            bulk: BulkAlloc::new(PFNS_PER_BUFFER)?,
            held: None,
        };
        let prealloc = Prealloc {
            pages: KBox::pin_init(PageList::new(), GFP_KERNEL)?,
            bulk: BulkAlloc::new(PFNS_PER_BUFFER)?,
        };
        let stats = StatsState { queue: None };
        let hint = HintState {
            queue: None,
            active: hint::CMD_ID_STOP,
            blocks: KBox::pin_init(PageList::new(), GFP_KERNEL)?,
        };
        let view = KBox::pin_init(
            root.scope(
                DebugView::new(features, geometry),
                dev.as_dev().name(),
                |view, dir| {
                    dir.read_callback_file(c"status", view, &write_status);
                    dir.read_callback_file(c"features", view, &write_features);
                    dir.read_only_file(c"target_pages", &view.target_pages);
                    dir.read_only_file(c"actual_pages", &view.actual_pages);
                    dir.read_only_file(c"inflated_pages", &view.inflated_pages);
                    dir.read_only_file(c"deflated_pages", &view.deflated_pages);
                    dir.read_only_file(c"migrated_pages", &view.migrated_pages);
                    dir.read_only_file(c"oom_deflated_pages", &view.oom_deflated_pages);
                    dir.read_only_file(c"reserve_pages", &view.reserve_pages);
                    dir.read_only_file(c"alloc_failures", &view.alloc_failures);
                    dir.read_only_file(c"backoff_ms", &view.backoff_ms);
                    dir.read_only_file(c"stats_updates", &view.stats_updates);
                    dir.read_only_file(c"free_page_reports", &view.free_page_reports);
                    dir.read_only_file(c"hint_rounds", &view.hint_rounds);
                    dir.read_only_file(c"hinted_blocks", &view.hinted_blocks);
                    dir.read_only_file(c"hint_blocks_held", &view.hint_blocks_held);
                    dir.read_only_file(c"host_stalled", &view.host_stalled);
                    dir.read_only_file(c"late_buffers", &view.late_buffers);
                },
            ),
            GFP_KERNEL,
        )?;
        KBox::pin_init(
            try_pin_init!(Self {
                dev: handle,
                features,
                geometry,
                index,
                state <- new_mutex!(state),
                stats <- new_mutex!(stats),
                reporting_queue <- new_mutex!(None),
                hint <- new_mutex!(hint),
                acked <- WaitQueue::new(),
                update_work <- DelayedWork::new(),
                stats_work <- DelayedWork::new(),
                hint_work <- DelayedWork::new(),
                hint_shrinker <- Shrinker::new(),
                pages <- BalloonDevInfo::new(!features.contains(Features::DEFLATE_ON_OOM)),
                oom <- OomNotifier::new(),
                reporting <- PageReporting::new(),
                events <- new_spinlock_irq!(Events {
                    stopped: true,
                    wakeup: 0,
                    awake: false,
                }),
                waiting_for_host: AtomicBool::new(false),
                prealloc <- new_mutex!(prealloc),
                view,
            }),
            GFP_KERNEL,
        )
    }

    fn start(&self, dev: &Device) -> Result {
        self.bring_up(dev).inspect_err(|err| {
            dev_err!(dev.as_dev(), "cannot start: {:?}\n", err);
            self.teardown(dev);
        })
    }

    fn queue_done(&self, queue_index: u32) {
        // Stats buffers come back when the host wants figures; every other
        // queue's completion wakes whoever waits for its buffer.
        if self.index.stats == Some(queue_index as usize) {
            self.queue_unless_stopped(&self.stats_work, WAKE_STATS);
        } else {
            self.acked.wake_up();
            // A late buffer came back: the update work finishes its step.
            let index = queue_index as usize;
            if (index == self.index.inflate || index == self.index.deflate)
                && self.waiting_for_host.load(Ordering::Acquire)
            {
                self.queue_unless_stopped(&self.update_work, WAKE_ADJUST);
            }
        }
    }

    fn config_changed(&self, _dev: &Device) {
        self.queue_unless_stopped(&self.update_work, WAKE_ADJUST);
        if self.features.contains(Features::FREE_PAGE_HINT) {
            self.queue_unless_stopped(&self.hint_work, 0);
        }
    }

    fn remove(&self, dev: &Device) {
        self.teardown(dev);
    }

    fn shutdown(&self, dev: &Device) {
        // The machine is going down: no need to give pages back, only to
        // stop touching the device, as the C driver does.
        self.quiesce();
        dev.shutdown();
        self.reporting.unregister();
    }
}

/// The negotiated feature names, for the probe line and debugfs.
struct DisplayFeatures(Features);

impl fmt::Debug for DisplayFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for name in features::describe(self.0) {
            if !first {
                f.write_str("|")?;
            }
            f.write_str(name)?;
            first = false;
        }
        Ok(())
    }
}
