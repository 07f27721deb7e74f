// SPDX-License-Identifier: GPL-2.0

//! The balloon driver: binds the virtio balloon device and moves pages
//! between the guest and the host as the host's target changes.
//!
//! Safe Rust only: the policy is `balloon_logic::engine`, the device and
//! the pages are reached through [`crate::virtio`] and [`crate::mm`].

use core::sync::atomic::{AtomicBool, Ordering};

use balloon_logic::config;
use balloon_logic::engine::{Backend, Engine, HostError, Step};
use balloon_logic::features::{self, queue_layout, Features, QueueRole};
use balloon_logic::pfn::{PageGeometry, PFNS_PER_BUFFER};
use balloon_logic::target::reserve_pages;
use kernel::prelude::*;
use kernel::sync::Mutex;
use kernel::{c_str, new_mutex};

use crate::mm::{self, BalloonDevInfo, Page, PageList};
use crate::virtio::{
    self, DelayedWork, Device, DeviceHandle, LinearBuffer, SendError, Virtqueues, WaitQueue,
};
use crate::{impl_has_balloon_dev_info, impl_has_delayed_work};

/// Index of each queue role in the device's queue list, as found at start.
struct QueueIndex {
    inflate: usize,
    deflate: usize,
}

/// What the balloon lock protects.
struct State {
    /// The policy and the balloon's size; `None` while the device is down.
    engine: Option<Engine>,
    /// The device's queues; `None` while the device is down.
    queues: Option<Virtqueues>,
    /// Where each queue role sits.
    index: QueueIndex,
    /// PFN array sent to the host, in the linear map.
    buffer: LinearBuffer,
    /// Pages allocated for the inflate in flight.
    staged_inflate: Pin<KBox<PageList>>,
    /// Pages out of the balloon for the deflate in flight.
    staged_deflate: Pin<KBox<PageList>>,
}

/// The per-device driver state.
#[pin_data]
pub(crate) struct Balloon {
    dev: DeviceHandle,
    features: Features,
    geometry: PageGeometry,
    #[pin]
    state: Mutex<State>,
    #[pin]
    acked: WaitQueue,
    #[pin]
    update_work: DelayedWork<Balloon>,
    #[pin]
    pages: BalloonDevInfo<Balloon>,
    /// Set while the device is going down: config changes are ignored.
    stop_update: AtomicBool,
}

impl_has_delayed_work!(Balloon, update_work, Balloon::update);
impl_has_balloon_dev_info!(Balloon, pages, Balloon::migrate);

/// The engine's view of the device and the pages, for one locked section.
struct Host<'a> {
    dev: &'a Device,
    queues: &'a mut Virtqueues,
    index: &'a QueueIndex,
    acked: &'a WaitQueue,
    balloon: &'a BalloonDevInfo<Balloon>,
    staged_inflate: Pin<&'a mut PageList>,
    staged_deflate: Pin<&'a mut PageList>,
    timeout: kernel::time::Jiffies,
}

impl Backend for Host<'_> {
    type Page = Page;

    fn read_target(&mut self) -> u32 {
        self.dev.read_config_le32(config::NUM_PAGES)
    }

    fn write_actual(&mut self, actual: u32) {
        self.dev.write_config_le32(config::ACTUAL, actual);
    }

    fn available_pages(&mut self) -> u64 {
        mm::available_pages()
    }

    fn alloc_page(&mut self) -> Option<Page> {
        Page::alloc()
    }

    fn page_pfn(&self, page: &Page) -> u64 {
        page.pfn()
    }

    fn free_page(&mut self, page: Page) {
        drop(page);
    }

    fn stage_inflate(&mut self, page: Page) {
        self.staged_inflate.as_mut().push(page);
    }

    fn commit_inflate(&mut self) {
        self.balloon.enqueue_list(self.staged_inflate.as_mut());
    }

    fn abort_inflate(&mut self) {
        self.staged_inflate.as_mut().clear();
    }

    fn dequeue_page(&mut self) -> Option<u64> {
        let page = self.balloon.dequeue()?;
        let pfn = page.pfn();
        self.staged_deflate.as_mut().push(page);
        Some(pfn)
    }

    fn commit_deflate(&mut self) {
        self.staged_deflate.as_mut().clear();
    }

    fn abort_deflate(&mut self) {
        self.balloon.enqueue_list(self.staged_deflate.as_mut());
    }

    fn tell_host(&mut self, queue: QueueRole, pfns: &[u32]) -> Result<(), HostError> {
        let index = match queue {
            QueueRole::Inflate => self.index.inflate,
            QueueRole::Deflate => self.index.deflate,
            _ => return Err(HostError::Queue),
        };
        let mut vq = self.queues.get_mut(index).ok_or(HostError::Queue)?;
        vq.send_and_wait(pfns, self.acked, self.timeout)
            .map_err(|err| match err {
                SendError::Queue(_) => HostError::Queue,
                SendError::Timeout => HostError::Timeout,
            })
    }
}

impl Balloon {
    /// Runs `f` with the engine, the PFN buffer and a backend over the
    /// device, under the balloon lock; `None` while the device is down.
    fn with_engine<R>(
        &self,
        state: &mut State,
        f: impl FnOnce(&mut Engine, &mut Host<'_>, &mut [u32]) -> R,
    ) -> Option<R> {
        let State {
            engine,
            queues,
            index,
            buffer,
            staged_inflate,
            staged_deflate,
        } = state;
        let engine = engine.as_mut()?;
        let queues = queues.as_mut()?;
        let timeout =
            kernel::time::msecs_to_jiffies(crate::module_parameters::host_timeout_ms.value());
        let mut host = Host {
            dev: self.dev.get(),
            queues,
            index,
            acked: &self.acked,
            balloon: &self.pages,
            staged_inflate: staged_inflate.as_mut(),
            staged_deflate: staged_deflate.as_mut(),
            timeout,
        };
        Some(f(engine, &mut host, buffer.as_mut_slice()))
    }

    /// The work item: one batch towards the target, then re-queue.
    fn update(&self) {
        if self.stop_update.load(Ordering::Acquire) {
            return;
        }
        let step = {
            let mut state = self.state.lock();
            self.with_engine(&mut state, |engine, host, buffer| engine.step(host, buffer))
        };
        match step {
            Some(Step::Progress) => self.update_work.queue(0),
            Some(Step::Backoff(delay_ms)) => self.update_work.queue(delay_ms),
            Some(Step::Reached) | Some(Step::Stalled) | None => {}
        }
    }

    /// Compaction moved a ballooned page: tell the host.
    fn migrate(&self, new_pfn: u64, old_pfn: u64) -> Result {
        // Never wait for the lock: the inflate path may itself be in
        // compaction, waiting for this migration. The core retries later.
        let mut state = self.state.try_lock().ok_or(EAGAIN)?;
        self.with_engine(&mut state, |engine, host, buffer| {
            engine.migrate(host, buffer, new_pfn, old_pfn)
        })
        .ok_or(EAGAIN)?
        .map_err(|_| EAGAIN)
    }

    /// Empties the balloon and takes the device down (remove and freeze).
    fn teardown(&self, dev: &Device) {
        self.stop_update.store(true, Ordering::Release);
        self.update_work.cancel_sync();
        let mut told_host = false;
        loop {
            let mut state = self.state.lock();
            let step = self.with_engine(&mut state, |engine, host, buffer| {
                engine.drain_step(host, buffer)
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
        dev.reset();
        loop {
            let mut state = self.state.lock();
            // After the reset the host holds no buffer and no page: whatever
            // is left (after a stall) goes back to the guest untold.
            let done = self
                .with_engine(&mut state, |engine, host, _| engine.forget_all(host))
                .unwrap_or(true);
            if done {
                let counters = state.engine.as_ref().map(|e| e.counters());
                state.engine = None;
                if let Some(queues) = state.queues.take() {
                    dev.del_vqs(queues);
                }
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
            drop(state);
            kernel::time::delay::fsleep(kernel::time::Delta::from_millis(10));
        }
    }
}

/// The queue names, by role.
fn queue_name(role: QueueRole) -> &'static CStr {
    match role {
        QueueRole::Inflate => c_str!("inflate"),
        QueueRole::Deflate => c_str!("deflate"),
        QueueRole::Stats => c_str!("stats"),
        QueueRole::FreePage => c_str!("free_page_vq"),
        QueueRole::Reporting => c_str!("reporting_vq"),
    }
}

impl virtio::Driver for Balloon {
    const NAME: &'static CStr = c_str!("virtio_balloon_rs");
    const DEVICE_ID: u32 = features::DEVICE_ID;
    const FEATURE_TABLE: &'static [u32] = features::DRIVER_FEATURE_BITS;

    fn validate(dev: &Device) -> Result {
        // The host gets guest-physical frame numbers, not DMA addresses: an
        // IOMMU between them would make them meaningless.
        dev.clear_feature(Features::ACCESS_PLATFORM.bits().trailing_zeros());
        Ok(())
    }

    fn probe(dev: &Device, handle: DeviceHandle) -> Result<Pin<KBox<Self>>> {
        let features = Features::from_bits_truncate(dev.features());
        let geometry = PageGeometry::new(mm::PAGE_SHIFT).map_err(|_| {
            dev_err!(dev.as_dev(), "unsupported page size\n");
            EINVAL
        })?;
        let state = State {
            engine: None,
            queues: None,
            index: QueueIndex {
                inflate: 0,
                deflate: 1,
            },
            buffer: LinearBuffer::new(PFNS_PER_BUFFER)?,
            staged_inflate: KBox::pin_init(PageList::new(), GFP_KERNEL)?,
            staged_deflate: KBox::pin_init(PageList::new(), GFP_KERNEL)?,
        };
        KBox::pin_init(
            try_pin_init!(Self {
                dev: handle,
                features,
                geometry,
                state <- new_mutex!(state),
                acked <- WaitQueue::new(),
                update_work <- DelayedWork::new(),
                pages <- BalloonDevInfo::new(!features.contains(Features::DEFLATE_ON_OOM)),
                stop_update: AtomicBool::new(true),
            }),
            GFP_KERNEL,
        )
    }

    fn start(&self, dev: &Device) -> Result {
        let (layout, count) = queue_layout(self.features);
        let mut names = [c_str!(""); features::MAX_QUEUES];
        let mut index = QueueIndex {
            inflate: 0,
            deflate: 1,
        };
        for (i, role) in layout.iter().take(count).enumerate() {
            let Some(role) = *role else { continue };
            names[i] = queue_name(role);
            match role {
                QueueRole::Inflate => index.inflate = i,
                QueueRole::Deflate => index.deflate = i,
                _ => {}
            }
        }
        let queues = dev.find_vqs::<Self>(&names[..count])?;
        let per_page = u64::from(self.geometry.balloon_pages_per_page());
        let limit = mm::total_ram_pages().saturating_mul(per_page);
        let page_size = 1u64 << mm::PAGE_SHIFT;
        let reserve = reserve_pages(0, crate::module_parameters::reserve_kb.value(), page_size);
        {
            let mut state = self.state.lock();
            state.engine = Some(Engine::new(
                self.geometry,
                self.features.pfns_little_endian(),
                limit,
                reserve,
            ));
            state.queues = Some(queues);
            state.index = index;
        }
        dev.ready();
        dev.write_config_le32(config::ACTUAL, 0);
        let target = dev.read_config_le32(config::NUM_PAGES);
        dev_info!(
            dev.as_dev(),
            "bound: features {:#x} ({:?}), {} queues, target {} KiB, reserve {} KiB\n",
            self.features.bits(),
            DisplayFeatures(self.features),
            count,
            u64::from(target) * 4,
            reserve * (page_size / 1024)
        );
        self.stop_update.store(false, Ordering::Release);
        // Honour a target set before the driver was loaded.
        self.update_work.run_now();
        Ok(())
    }

    fn queue_done(&self, _queue_index: u32) {
        self.acked.wake_up();
    }

    fn config_changed(&self, _dev: &Device) {
        if !self.stop_update.load(Ordering::Acquire) {
            self.update_work.run_now();
        }
    }

    fn remove(&self, dev: &Device) {
        self.teardown(dev);
    }
}

/// The negotiated feature names, for the probe line.
struct DisplayFeatures(Features);

impl core::fmt::Debug for DisplayFeatures {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
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
