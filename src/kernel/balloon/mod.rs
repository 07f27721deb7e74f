// SPDX-License-Identifier: GPL-2.0

//! The balloon driver: binds the virtio balloon device and moves pages
//! between the guest and the host as the host's target changes, reports
//! memory statistics, gives pages back on OOM and reports free pages.
//!
//! The policy is `balloon_logic`, the device and the pages are reached
//! through [`crate::virtio`] and [`crate::mm`]. The `unsafe` here is this
//! state's promises to those layers: the `unsafe impl`s of their owner
//! traits, and two buffers over memory the queue's token does not own (a
//! free page hint, a free page report), each with the SAFETY comment that
//! says where it keeps them.

use balloon_logic::engine::{
    Backend as _,
    single_pages_after_blocks,
    Engine,
    Step, //
};
use balloon_logic::features::{
    self,
    Features, //
};
use balloon_logic::format::{
    pick_format,
    BufferFormat,
    FormatChoice,
    Transport, //
};
use balloon_logic::hint;
use balloon_logic::pfn::{
    PageGeometry,
    PFNS_PER_BUFFER, //
};
use balloon_logic::target::reserve_pages;
use kernel::debugfs::Scope;
use kernel::device::{
    Bound,
    Core, //
};
use kernel::prelude::*;
use kernel::sync::atomic::{
    Acquire,
    Atomic,
    Full,
    Relaxed,
    Release, //
};
use kernel::sync::barrier::smp_mb;
use kernel::sync::{
    Mutex,
    SpinLock,
    SpinLockIrq, //
};
use kernel::{
    new_mutex,
    new_spinlock,
    new_spinlock_irq, //
};

use crate::impl_embeds;
use crate::mm::{
    self,
    BalloonDevInfo,
    BulkPages,
    Embedded,
    HeldPage,
    MigratingPage,
    MigrationHandler,
    OomHandler,
    OomRegistration,
    PageList,
    ReportedPages,
    ReportingHandler,
    RegistrationOwner,
    ReportingRegistration,
    ShrinkerRegistration, //
};
use config::{
    Actual,
    NumPages,
    PoisonVal, //
};
use crate::virtio::{
    self,
    BoundDevice,
    Device,
    Virtqueue,
    Virtqueues, //
};
use crate::wait_queue::WaitQueue;
use crate::workqueue::{
    WorkOwner,
    WorkRef, //
};
use kernel::workqueue::{
    DelayedWork,
    HasDelayedWork,
    WorkItem, //
};
use kernel::{
    impl_has_delayed_work,
    new_delayed_work, //
};

mod config;
mod debugfs;
mod free_page_hint;
mod host;
mod pfn_queue;
mod queues;
mod stats_queue;

use debugfs::{
    DebugView,
    FeatureNames, //
};
use free_page_hint::{
    HintBlocks,
    HintState, //
};
use host::{
    buffers_in_flight,
    host_timeout,
    BlockList,
    DeviceBackend,
    Prealloc, //
};
use pfn_queue::PfnQueue;
use queues::QueueIndex;
use stats_queue::StatsState;

/// What the balloon lock protects: the balloon and its two queues, with
/// its page lists inline (pinned with the state, as their heads must be).
#[pin_data]
struct State {
    /// The policy and the balloon's size; `None` while the device is down.
    engine: Option<Engine>,
    inflate_queue: Option<PfnQueue>,
    deflate_queue: Option<PfnQueue>,
    /// The device's queue set, holding the handles not taken out.
    queues: Option<Virtqueues>,
    /// PFN arrays the engine fills (the queues copy them into arrays of
    /// their own, kmalloc memory as DMA needs).
    pfns: KVVec<u32>,
    /// Pages allocated for the inflate in flight.
    #[pin]
    staged_inflate: PageList,
    /// Pages out of the balloon for the deflate in flight.
    #[pin]
    staged_deflate: PageList,
    /// The balloon's whole 2 MiB blocks (`buffer_format` full).
    #[pin]
    blocks: BlockList,
    /// Blocks allocated for the inflate in flight.
    #[pin]
    staged_inflate_blocks: BlockList,
    /// Blocks out of the balloon for the deflate in flight.
    #[pin]
    staged_deflate_blocks: BlockList,
    /// Scratch space for freeing deflated pages in batches.
    bulk: BulkPages,
    /// The old page of a migration, kept from the allocator until the host
    /// acknowledges its deflate.
    held: Option<HeldPage>,
}

impl State {
    /// An empty balloon with the PFN array `pfns` and `bulk` for freeing in
    /// batches (allocated by [`State::buffers`]).
    fn new((pfns, bulk): (KVVec<u32>, BulkPages)) -> impl PinInit<Self> {
        pin_init!(Self {
            engine: None,
            inflate_queue: None,
            deflate_queue: None,
            queues: None,
            pfns,
            staged_inflate <- PageList::new(),
            staged_deflate <- PageList::new(),
            blocks <- PageList::new(),
            staged_inflate_blocks <- PageList::new(),
            staged_deflate_blocks <- PageList::new(),
            bulk,
            held: None,
        })
    }

    /// The state's allocations: room for `in_flight` buffers of PFNs, and
    /// the bulk allocator's scratch space.
    fn buffers(in_flight: usize) -> Result<(KVVec<u32>, BulkPages)> {
        let len = PFNS_PER_BUFFER * in_flight;
        let mut pfns = KVVec::with_capacity(len, GFP_KERNEL)?;
        pfns.resize(len, 0, GFP_KERNEL)?;
        Ok((pfns, BulkPages::new(PFNS_PER_BUFFER)?))
    }
}

/// The per-device driver state.
///
/// # Invariants
///
/// `dev` is used only by the state's own methods, which run from the bus
/// callbacks and from the work items, notifiers, shrinker and queues it
/// sets up; `teardown` (unbind, freeze, a failed start) ends all of these
/// before it returns.
#[pin_data]
pub(crate) struct Balloon {
    /// First, so that it is dropped first: nothing of mm calls into the
    /// state once the fields below start going.
    #[pin]
    registrations: Mutex<Registrations>,
    dev: BoundDevice,
    features: Features,
    /// How inflate and deflate buffers are laid out for this host.
    format: BufferFormat,
    /// Inflate or deflate buffers sent at once.
    in_flight: usize,
    geometry: PageGeometry,
    index: QueueIndex,
    #[pin]
    state: Mutex<State>,
    #[pin]
    stats: Mutex<StatsState>,
    #[pin]
    reporting_queue: Mutex<Option<Virtqueue<()>>>,
    #[pin]
    hint: Mutex<HintState>,
    #[pin]
    hint_blocks: SpinLock<HintBlocks>,
    #[pin]
    acked: WaitQueue,
    #[pin]
    update_work: DelayedWork<Balloon, UPDATE>,
    #[pin]
    stats_work: DelayedWork<Balloon, STATS>,
    #[pin]
    hint_work: DelayedWork<Balloon, HINT>,
    #[pin]
    pages: BalloonDevInfo<Balloon>,
    /// Whether new work may be queued, and the wakeup events in progress.
    /// Interrupts queue work under it.
    #[pin]
    events: SpinLockIrq<Events>,
    /// The engine waits for a late inflate or deflate buffer: its return
    /// queues the update work.
    waiting_for_host: Atomic<bool>,
    /// The device was reset by teardown: a page report still waiting for
    /// it has its pages back (the device dropped the buffer).
    device_was_reset: Atomic<bool>,
    /// The config changed since the hint work last read the command id.
    hint_config_changed: Atomic<bool>,
    /// Pages for the next inflate, allocated outside the balloon lock.
    #[pin]
    prealloc: Mutex<Prealloc>,
    view: Pin<KBox<Scope<DebugView>>>,
}

/// The work items: the size work, the stats work, the hint work.
const UPDATE: u64 = 0;
const STATS: u64 = 1;
const HINT: u64 = 2;

impl_has_delayed_work! {
    impl HasDelayedWork<Self, UPDATE> for Balloon { self.update_work }
    impl HasDelayedWork<Self, STATS> for Balloon { self.stats_work }
    impl HasDelayedWork<Self, HINT> for Balloon { self.hint_work }
}
// What `MigrationHandler` (`unsafe impl` below) relies on: a `Balloon` is
// only made in place, pinned, by the bus adapter, and `pages` holds pages
// only between the first inflate and `teardown`, which empties it.
impl_embeds!(Balloon {
    pages: BalloonDevInfo<Balloon>,
});

// SAFETY: the state's registrations live in its `registrations` field
// only; `quiesce` and `teardown`, which unbind and a failed start run
// before the state goes, drop them, and that field is the state's first,
// so dropped before the rest of it in any case.
unsafe impl RegistrationOwner for Balloon {}

/// The balloon's registrations with mm, each in place while it is `Some`:
/// made by `bring_up`, dropped by `quiesce` (the OOM notifier, the
/// shrinker) and `teardown` (page reporting, once the device is reset).
#[derive(Default)]
struct Registrations {
    oom: Option<Pin<KBox<OomRegistration<Balloon>>>>,
    reporting: Option<Pin<KBox<ReportingRegistration<Balloon>>>>,
    hint_shrinker: Option<Pin<KBox<ShrinkerRegistration<Balloon>>>>,
}

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

impl Balloon {
    /// What probe needs of the device: config access, and a page size the
    /// balloon supports.
    fn check(dev: &Device<Core<'_>>) -> Result<PageGeometry> {
        if !dev.has_config_access() {
            dev_err!(dev, "probe failure: config access disabled\n");
            return Err(EINVAL);
        }
        PageGeometry::new(mm::PAGE_SHIFT).map_err(|_| {
            dev_err!(dev, "unsupported page size\n");
            EINVAL
        })
    }

    /// The buffer format of the `buffer_format` parameter, for this host.
    fn buffer_format(dev: &Device<Core<'_>>) -> BufferFormat {
        let value = crate::module_parameters::buffer_format.value();
        let choice = FormatChoice::from_param(value).unwrap_or_else(|_| {
            dev_warn!(
                dev,
                "buffer_format={} unknown (0 auto, 1 compat, 2 full): using auto\n",
                value
            );
            FormatChoice::Auto
        });
        let transport = match dev.transport() {
            virtio::Transport::Pci {
                subsystem_vendor,
                subsystem_device,
            } => Transport::Pci {
                subsystem_vendor,
                subsystem_device,
            },
            virtio::Transport::Mmio { vendor } => Transport::Mmio { vendor },
            virtio::Transport::Other => Transport::Other,
        };
        pick_format(choice, transport)
    }

    /// The device, bound to this driver.
    fn device(&self) -> &Device<Bound> {
        self.dev.get()
    }

    /// Runs `f` with the engine, the PFN buffer and a backend over the
    /// device, under the balloon lock; `None` while the device is down.
    ///
    /// `prealloc` holds the pages and blocks allocated for this step;
    /// `migrating` is the migration in progress, in the migration callback.
    fn with_engine<R>(
        &self,
        state: Pin<&mut State>,
        prealloc: Option<Pin<&mut Prealloc>>,
        migrating: Option<&MigratingPage<'_>>,
        f: impl FnOnce(&mut Engine, &mut DeviceBackend<'_>, &mut [u32]) -> R,
    ) -> Option<R> {
        let state = state.project();
        let (engine, pfns) = (state.engine, state.pfns);
        let engine = engine.as_mut()?;
        let mut host = DeviceBackend {
            dev: self.device(),
            inflate_queue: state.inflate_queue.as_mut()?,
            deflate_queue: state.deflate_queue.as_mut()?,
            acked: &self.acked,
            balloon: Embedded::of(self),
            staged_inflate: state.staged_inflate,
            staged_deflate: state.staged_deflate,
            blocks: state.blocks,
            staged_inflate_blocks: state.staged_inflate_blocks,
            staged_deflate_blocks: state.staged_deflate_blocks,
            bulk: state.bulk,
            prealloc,
            held: state.held,
            migrating,
            timeout: host_timeout(),
        };
        let result = f(engine, &mut host, pfns);
        self.view.update(engine);
        let late = engine.late();
        // Set before looking at the queue once more, with a full barrier:
        // a buffer that came back after `f` gave up waiting, but before the
        // flag was set, found it clear and queued nothing. Either its
        // interrupt sees the flag, or this sees the buffer.
        self.waiting_for_host.xchg(late.is_some(), Full);
        if let Some(late) = late {
            if host.host_returned(late.queue()) {
                self.queue_unless_stopped::<UPDATE>(WAKE_ADJUST);
            }
        }
        Some(result)
    }

    /// Queues `work` unless the device is going down, keeping the system
    /// awake for it when `wake` names a reason; the check and the queueing
    /// happen under one lock, so that once [`Balloon::quiesce`] has taken
    /// it, nothing new is queued (callable from interrupts).
    fn queue_unless_stopped<const ID: u64>(&self, wake: u32)
    where
        Self: WorkItem<ID, Pointer = WorkRef<Self>> + HasDelayedWork<Self, ID>,
    {
        let mut events = self.events.lock();
        if events.stopped {
            return;
        }
        if wake != 0 {
            events.wakeup |= wake;
            if !events.awake {
                events.awake = true;
                self.device().stay_awake();
            }
        }
        self.run_work_now::<ID>();
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
            self.device().relax();
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
        // Whole 2 MiB blocks first (buffer_format full), then single pages
        // for the rest.
        let wanted = {
            let mut state = self.state.lock();
            self.with_engine(state.as_mut(), None, None, |engine, host, pfns| {
                // A late buffer that came back finishes its step first, so
                // that this step allocates for itself.
                engine.resume(host, pfns);
                let pages = engine.pages_to_allocate(host);
                (
                    pages,
                    engine.blocks_to_allocate(pages),
                    engine.guest_pages_per_block(),
                )
            })
        };
        let mut prealloc = self.prealloc.lock();
        if let Some((pages, blocks, per_block)) = wanted.filter(|(pages, ..)| *pages > 0) {
            let (got, compacted) = prealloc.as_mut().fill_blocks(blocks);
            self.view.blocks_compacted.fetch_add(compacted, Relaxed);
            prealloc
                .as_mut()
                .fill(single_pages_after_blocks(pages, per_block, blocks, got));
        }
        let step = {
            let mut state = self.state.lock();
            self.with_engine(
                state.as_mut(),
                Some(prealloc.as_mut()),
                None,
                |engine, host, pfns| engine.step(host, pfns),
            )
        };
        // What the step did not take (the target moved meanwhile) goes back.
        prealloc.as_mut().clear();
        drop(prealloc);
        match step {
            Some(Step::Progress) => {
                self.queue_work::<UPDATE>(0);
                return;
            }
            // No progress to wait for: the system may sleep meanwhile.
            Some(Step::Backoff(delay_ms)) => self.queue_work::<UPDATE>(delay_ms),
            // A late buffer coming back queues the work again.
            Some(Step::Reached) | Some(Step::Stalled) | None => {}
        }
        self.work_finished();
    }

    /// Sets the device up: queues, poison value, stats, notifiers.
    fn bring_up(&self, dev: &Device<Core<'_>>) -> Result {
        let index = self.index;
        // Allocated before the queues exist: nothing to undo if this fails.
        let inflate_arrays = PfnQueue::arrays(self.in_flight)?;
        let deflate_arrays = PfnQueue::arrays(self.in_flight)?;
        let stats_buffer = KBox::init(pin_init::init_zeroed(), GFP_KERNEL)?;
        let mut queues = dev.find_vqs::<Self>(index.specs())?;
        let inflate_queue = queues
            .take(index.inflate)
            .map(|queue| PfnQueue::new(queue, inflate_arrays));
        let deflate_queue = queues
            .take(index.deflate)
            .map(|queue| PfnQueue::new(queue, deflate_arrays));
        let stats_queue = index.stats.and_then(|i| queues.take(i));
        let reporting_queue = index.reporting.and_then(|i| queues.take(i));
        let hint_queue = index.free_page.and_then(|i| queues.take(i));
        let reporting_capacity = reporting_queue.as_ref().map(Virtqueue::size);
        let hint_capacity = hint_queue.as_ref().map(Virtqueue::size);
        self.device_was_reset.store(false, Release);
        // Every handle goes where teardown looks for it before anything
        // else can fail: teardown puts them all back and deletes the
        // queues, and with them their interrupt handlers.
        {
            let mut stats = self.stats.lock();
            stats.queue = stats_queue;
            stats.buffer = Some(stats_buffer);
        }
        *self.reporting_queue.lock() = reporting_queue;
        {
            let mut hint = self.hint.lock();
            hint.active = hint::CMD_ID_STOP;
            hint.queue = hint_queue;
        }

        let page_size = 1u64 << mm::PAGE_SHIFT;
        let reserve = reserve_pages(crate::module_parameters::reserve_kb.value(), page_size);
        {
            let mut state = self.state.lock();
            // Without deflate-on-OOM, inflated pages leave the managed RAM.
            let mut engine = Engine::new(
                self.geometry,
                self.features.little_endian(),
                !self.features.contains(Features::DEFLATE_ON_OOM),
                reserve,
            );
            // A fresh engine holds no block: every format is accepted.
            let _ = engine.set_format(self.format);
            engine.set_in_flight(self.in_flight);
            self.view.update(&engine);
            let state = state.as_mut().project();
            *state.engine = Some(engine);
            *state.inflate_queue = inflate_queue;
            *state.deflate_queue = deflate_queue;
            *state.queues = Some(queues);
        }
        // The ring needs a descriptor for the command id besides hints.
        if hint_capacity.is_some_and(|size| size < 2) {
            dev_err!(dev, "free page hint queue too small\n");
            return Err(ENOSPC);
        }

        dev.set_wakeup_capable();
        if self.features.contains(Features::PAGE_POISON) {
            let poison = features::poison_value(mm::zeroes_free_pages());
            dev.write_config::<PoisonVal>(poison)?;
        }
        dev.ready();
        dev.write_config::<Actual>(0)?;

        {
            // Prime the stats queue: the host returns this buffer when it
            // wants fresh figures.
            let mut guard = self.stats.lock();
            let StatsState { queue, buffer } = &mut *guard;
            if let (Some(queue), Some(mut first)) = (queue.as_mut(), buffer.take()) {
                self.fill_stats(&mut first);
                if let Err((err, first)) = queue.add_outbuf(first) {
                    *buffer = Some(first);
                    return Err(err);
                }
                queue.kick();
            }
        }
        {
            let mut registrations = self.registrations.lock();
            if self.features.contains(Features::DEFLATE_ON_OOM) {
                let oom = OomRegistration::new(self, ());
                registrations.oom = Some(KBox::pin_init(oom, GFP_KERNEL)?);
            }
            if let Some(capacity) = reporting_capacity {
                let reporting = ReportingRegistration::new(self, capacity);
                registrations.reporting = Some(KBox::pin_init(reporting, GFP_KERNEL)?);
            }
            if self.features.contains(Features::FREE_PAGE_HINT) {
                let shrinker = ShrinkerRegistration::new(self, c"virtio-balloon-rs");
                registrations.hint_shrinker = Some(KBox::pin_init(shrinker, GFP_KERNEL)?);
            }
        }

        let target = dev.read_config::<NumPages>().unwrap_or(0);
        dev_info!(
            dev,
            "bound: features {:#x} ({:?}), {} queues, {:?} buffers of {} pages ({} at once), target {} KiB, reserve {} KiB\n",
            self.features.bits(),
            FeatureNames(self.features),
            index.count,
            self.format,
            self.format.pfns_per_buffer(),
            self.in_flight,
            u64::from(target) * 4,
            reserve * (page_size / 1024)
        );
        self.events.lock().stopped = false;
        // Honour a target set before the driver was loaded, and a stats
        // request the host made while the callbacks still ignored it.
        self.queue_unless_stopped::<UPDATE>(WAKE_ADJUST);
        self.queue_unless_stopped::<STATS>(0);
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
        {
            let mut registrations = self.registrations.lock();
            registrations.oom = None;
            registrations.hint_shrinker = None;
        }
        self.cancel_work_sync::<UPDATE>();
        self.cancel_work_sync::<STATS>();
        self.cancel_work_sync::<HINT>();
        // A cancelled work item never picked up its wakeup event.
        let mut events = self.events.lock();
        events.wakeup = 0;
        if core::mem::take(&mut events.awake) {
            self.device().relax();
        }
    }

    /// Stops everything, empties the balloon and takes the device down
    /// (remove, freeze, and a failed start).
    fn teardown(&self, dev: &Device<Core<'_>>) {
        self.quiesce();

        let mut told_host = false;
        loop {
            let mut state = self.state.lock();
            let step = self.with_engine(state.as_mut(), None, None, |engine, host, pfns| {
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
        // From here on nothing is sent to the device: a migration fails
        // (the core keeps its page), a page report returns its pages.
        if let Some(engine) = self.state.lock().as_mut().project().engine.as_mut() {
            engine.device_reset();
        }
        let reset = dev.reset();
        self.device_was_reset.store(true, Release);
        self.acked.wake_up();
        // A report the host never returned ends with the reset; only then
        // can page reporting stop.
        self.registrations.lock().reporting = None;
        loop {
            let mut state = self.state.lock();
            // After the reset the host holds no buffer and no page: whatever
            // is left (after a stall) goes back to the guest untold.
            let done = self
                .with_engine(state.as_mut(), None, None, |engine, host, _| {
                    engine.forget_all(host)
                })
                .unwrap_or(true);
            if !done {
                drop(state);
                kernel::time::delay::fsleep(kernel::time::Delta::from_millis(10));
                continue;
            }
            let state = state.as_mut().project();
            let counters = state.engine.take().map(|engine| engine.counters());
            if let Some(mut queues) = state.queues.take() {
                // Each queue goes back with what the device held on it,
                // which the reset made the guest's again.
                let index = self.index;
                if let Some(queue) = state.inflate_queue.take() {
                    queues.put_back(index.inflate, queue.into_queue(), &reset);
                }
                if let Some(queue) = state.deflate_queue.take() {
                    queues.put_back(index.deflate, queue.into_queue(), &reset);
                }
                if let (Some(i), Some(queue)) = (index.stats, self.stats.lock().queue.take()) {
                    queues.put_back(i, queue, &reset);
                }
                if let (Some(i), Some(queue)) = (index.reporting, self.reporting_queue.lock().take()) {
                    queues.put_back(i, queue, &reset);
                }
                if let (Some(i), Some(queue)) = (index.free_page, self.hint.lock().queue.take()) {
                    queues.put_back(i, queue, &reset);
                }
                dev.del_vqs(queues, reset);
            }
            // Hinted blocks may be reused at any time; the device is reset.
            self.hint_blocks.lock().as_mut().release(usize::MAX);
            self.view.hint_blocks_held.store(0, Relaxed);
            if let Some(c) = counters {
                dev_info!(
                    dev,
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

/// Compaction moved a ballooned page: tell the host.
// SAFETY: as said at `impl_embeds!` above.
unsafe impl MigrationHandler for Balloon {
    fn migrate(&self, pages: &MigratingPage<'_>) -> Result {
        // Never wait for the lock: its holder may be waiting for the host,
        // and compaction has other pages to move. The core retries later.
        let mut state = self.state.try_lock().ok_or(EAGAIN)?;
        self.with_engine(state.as_mut(), None, Some(pages), |engine, host, pfns| {
            engine.migrate(host, pfns, pages.new_pfn, pages.old_pfn)
        })
        .ok_or(EAGAIN)?
        .map_err(|_| EAGAIN)
    }
}

/// The guest is out of memory (`DEFLATE_ON_OOM`): give back one buffer of
/// pages, so the OOM killer need not run while the balloon has any.
impl OomHandler for Balloon {
    fn out_of_memory(&self) -> u64 {
        let mut state = self.state.lock();
        let freed = self
            .with_engine(state.as_mut(), None, None, |engine, host, pfns| {
                engine.oom_deflate(host, pfns, PFNS_PER_BUFFER as u64)
            })
            .unwrap_or(0);
        self.geometry.guest_pages(freed)
    }
}

/// The page reporting core has free pages for the host to discard.
impl ReportingHandler for Balloon {
    fn report(&self, pages: &ReportedPages<'_>) -> Result {
        let mut guard = self.reporting_queue.lock();
        let queue = Option::as_mut(&mut *guard).ok_or(ENODEV)?;
        let reset = || self.device_was_reset.load(Acquire);
        if reset() {
            return Err(ENODEV);
        }
        let (sg, nents) = pages.raw();
        // SAFETY: the page reporting core's scatterlist and the pages it
        // names stay valid, and unused by the core, until this callback
        // returns, which it does only once the device handed the buffer
        // back or was reset (below).
        unsafe { queue.add_inbuf_sg(sg, nents, ()) }.map_err(|(err, ())| err)?;
        queue.kick();
        // The device may discard the pages until it hands the buffer back,
        // and the core cannot take back pages still being reported: wait
        // as long as it takes, logging once, until the buffer comes back
        // or the driver's own reset ends the report (the device's status
        // word is not trusted for that); whoever resets wakes `acked`.
        let poll = kernel::time::msecs_to_jiffies(100);
        let warn_after = host_timeout();
        let mut waited: kernel::time::Jiffies = 0;
        while queue.wait_buf(&self.acked, poll).is_none() {
            if reset() {
                return Err(ENODEV);
            }
            let before = waited;
            waited = waited.saturating_add(poll);
            if before < warn_after && waited >= warn_after {
                dev_warn!(
                    self.device(),
                    "host has not returned a free page report yet; still waiting\n"
                );
            }
        }
        self.view.free_page_reports.fetch_add(1, Relaxed);
        Ok(())
    }
}

impl WorkItem<UPDATE> for Balloon {
    type Pointer = WorkRef<Self>;
    fn run(this: WorkRef<Self>) {
        this.update();
    }
}

impl WorkItem<STATS> for Balloon {
    type Pointer = WorkRef<Self>;
    fn run(this: WorkRef<Self>) {
        this.send_stats();
    }
}

impl WorkItem<HINT> for Balloon {
    type Pointer = WorkRef<Self>;
    fn run(this: WorkRef<Self>) {
        this.free_page_hint();
    }
}

// SAFETY: a `Balloon` is only made in place, pinned, by the bus adapter;
// `quiesce`, run by every teardown before the state is dropped, cancels the
// three work items.
unsafe impl WorkOwner for Balloon {}

crate::virtio_device_table!(BALLOON_IDS, [virtio::DeviceId::new(features::DEVICE_ID)]);

// SAFETY: the handle stays in `dev` (type invariant), and `teardown`, run
// by unbind and by a failed start, stops the work items, unregisters the
// OOM notifier, the shrinker and page reporting, and deletes the queues
// before it returns: nothing uses the handle after that.
unsafe impl virtio::Driver for Balloon {
    type Data = Self;
    const ID_TABLE: virtio::IdTable = &BALLOON_IDS;
    const FEATURE_TABLE: &'static [u32] = features::DRIVER_FEATURE_BITS;

    fn validate(dev: &Device<Core<'_>>) -> Result {
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

    fn probe<'a>(dev: &'a Device<Core<'_>>, handle: BoundDevice) -> impl PinInit<Self, Error> + 'a {
        let features = Features::from_bits_truncate(dev.features());
        let geometry = Self::check(dev);
        let format = Self::buffer_format(dev);
        let in_flight = buffers_in_flight();
        try_pin_init!(Self {
            registrations <- new_mutex!(Registrations::default()),
            geometry: geometry?,
            dev: handle,
            features,
            format,
            in_flight,
            index: QueueIndex::new(*features),
            state <- new_mutex!(State::new(State::buffers(*in_flight)?)),
            stats <- new_mutex!(StatsState {
                queue: None,
                buffer: None
            }),
            reporting_queue <- new_mutex!(None),
            hint <- new_mutex!(HintState::new()),
            hint_blocks <- new_spinlock!(HintBlocks::new()),
            acked <- crate::new_wait_queue!("virtio_balloon_rs::acked"),
            update_work <- new_delayed_work!("virtio_balloon_rs::update"),
            stats_work <- new_delayed_work!("virtio_balloon_rs::stats"),
            hint_work <- new_delayed_work!("virtio_balloon_rs::hint"),
            pages <- BalloonDevInfo::new(!features.contains(Features::DEFLATE_ON_OOM)),
            events <- new_spinlock_irq!(Events {
                stopped: true,
                wakeup: 0,
                awake: false,
            }),
            waiting_for_host: Atomic::new(false),
            device_was_reset: Atomic::new(false),
            hint_config_changed: Atomic::new(false),
            prealloc <- new_mutex!(Prealloc::new(BulkPages::new(PFNS_PER_BUFFER)?)),
            view: KBox::pin_init(
                debugfs::directory(
                    crate::debugfs_root().ok_or(ENOENT)?,
                    dev.get().as_ref().name(),
                    *features,
                    *geometry,
                ),
                GFP_KERNEL,
            )?,
        })
    }

    fn start(dev: &Device<Core<'_>>, this: Pin<&Self>) -> Result {
        this.bring_up(dev).inspect_err(|err| {
            dev_err!(dev, "cannot start: {:?}\n", err);
            this.teardown(dev);
        })
    }

    fn queue_done(_dev: &Device<Bound>, this: Pin<&Self>, queue_index: u32) {
        // Stats buffers come back when the host wants figures; every other
        // queue's completion wakes whoever waits for its buffer.
        if this.index.stats == Some(queue_index as usize) {
            this.queue_unless_stopped::<STATS>(WAKE_STATS);
        } else {
            this.acked.wake_up();
            // A late buffer came back: the update work finishes its step.
            // The barrier pairs with the one in `with_engine`: the buffer
            // is in the used ring before the flag is read.
            let index = queue_index as usize;
            smp_mb(Full);
            if (index == this.index.inflate || index == this.index.deflate)
                && this.waiting_for_host.load(Relaxed)
            {
                this.queue_unless_stopped::<UPDATE>(WAKE_ADJUST);
            }
        }
    }

    fn config_changed(_dev: &Device<Bound>, this: Pin<&Self>) {
        this.queue_unless_stopped::<UPDATE>(WAKE_ADJUST);
        if this.features.contains(Features::FREE_PAGE_HINT) {
            this.hint_config_changed();
            this.queue_unless_stopped::<HINT>(0);
        }
    }

    fn unbind(dev: &Device<Core<'_>>, this: Pin<&Self>) {
        this.teardown(dev);
    }

    fn shutdown(dev: &Device<Core<'_>>, this: Pin<&Self>) {
        // The machine is going down: no need to give pages back, only to
        // stop touching the device, as the C driver does.
        this.quiesce();
        dev.shutdown();
        this.registrations.lock().reporting = None;
    }
}
