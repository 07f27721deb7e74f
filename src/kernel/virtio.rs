// SPDX-License-Identifier: GPL-2.0

//! Safe abstractions over the C virtio driver API.
//!
//! Shaped so that it could become `kernel::virtio`: a [`Driver`] trait, a
//! [`Registration`] that registers it with the virtio bus, a [`Device`] for
//! feature bits, config space and status, [`Virtqueues`] found on it, and
//! the two kernel objects the driver sleeps and defers on ([`WaitQueue`],
//! [`DelayedWork`]). Every `unsafe` block of the module that touches virtio
//! lives here.

use core::marker::PhantomData;
use core::ptr::NonNull;

use kernel::error::to_result;
use kernel::prelude::*;
use kernel::time::Jiffies;
use kernel::types::Opaque;

use crate::bindings;

/// A virtio device as seen by the driver bound to it.
///
/// # Invariants
///
/// The wrapped `virtio_device` is valid for as long as a `&Device` exists:
/// references are only handed out inside the bus callbacks.
#[repr(transparent)]
pub(crate) struct Device(Opaque<bindings::virtio_device>);

impl Device {
    /// Wraps a pointer the virtio core passed to a callback.
    ///
    /// # Safety
    ///
    /// `ptr` must point to a valid `virtio_device` for the lifetime `'a`.
    unsafe fn from_raw<'a>(ptr: *mut bindings::virtio_device) -> &'a Self {
        // SAFETY: `Device` is `repr(transparent)` over the C struct and the
        // caller guarantees validity for `'a`.
        unsafe { &*ptr.cast::<Self>() }
    }

    fn as_raw(&self) -> *mut bindings::virtio_device {
        self.0.get()
    }

    /// The generic `struct device`, for `dev_*!` messages.
    pub(crate) fn as_dev(&self) -> &kernel::device::Device {
        // SAFETY: `dev` is embedded in a valid `virtio_device` (type
        // invariant) and lives as long as `self`; the two bindgen runs
        // describe the same C type.
        unsafe {
            let dev = core::ptr::addr_of_mut!((*self.as_raw()).dev);
            kernel::device::Device::from_raw(dev.cast())
        }
    }

    /// The lower 64 negotiated feature bits.
    pub(crate) fn features(&self) -> u64 {
        // SAFETY: `self` is a valid virtio device (type invariant).
        unsafe { bindings::vbrs_virtio_features(self.as_raw()) }
    }

    /// Whether the transport gives access to the config space.
    pub(crate) fn has_config_access(&self) -> bool {
        // SAFETY: `self` is a valid virtio device (type invariant).
        unsafe { bindings::vbrs_virtio_has_config_get(self.as_raw()) }
    }

    /// Withdraws a feature during [`Driver::validate`], before negotiation ends.
    pub(crate) fn clear_feature(&self, bit: u32) {
        // SAFETY: `self` is valid; clearing a bit before FEATURES_OK is what
        // the `validate` callback is for.
        unsafe { bindings::vbrs_virtio_clear_feature(self.as_raw(), bit) }
    }

    /// Reads a little-endian 32-bit config field at `offset`.
    pub(crate) fn read_config_le32(&self, offset: usize) -> u32 {
        // SAFETY: `self` is valid; the transport bounds-checks `offset`.
        unsafe { bindings::vbrs_virtio_cread_le32(self.as_raw(), offset as u32) }
    }

    /// Writes a little-endian 32-bit config field at `offset`, in one access.
    pub(crate) fn write_config_le32(&self, offset: usize, value: u32) {
        // SAFETY: `self` is valid; the transport bounds-checks `offset`.
        unsafe { bindings::vbrs_virtio_cwrite_le32(self.as_raw(), offset as u32, value) }
    }

    /// Lets the device hold a wakeup source of its own (user space enables
    /// it in `power/wakeup`), as the C driver does: the transport has its
    /// own, and wakeup sources do not nest.
    pub(crate) fn set_wakeup_capable(&self) {
        // SAFETY: `self` is valid.
        unsafe { bindings::vbrs_virtio_set_wakeup_capable(self.as_raw()) }
    }

    /// Keeps the system from suspending until [`Device::relax`] (a no-op
    /// unless the device's wakeup source is enabled); callable from
    /// interrupts.
    pub(crate) fn stay_awake(&self) {
        // SAFETY: `self` is valid.
        unsafe { bindings::vbrs_virtio_stay_awake(self.as_raw()) }
    }

    /// Ends what [`Device::stay_awake`] started.
    pub(crate) fn relax(&self) {
        // SAFETY: `self` is valid.
        unsafe { bindings::vbrs_virtio_relax(self.as_raw()) }
    }

    /// Sets DRIVER_OK: the device may use the queues from now on.
    pub(crate) fn ready(&self) {
        // SAFETY: `self` is valid; called once the queues are set up.
        unsafe { bindings::vbrs_virtio_device_ready(self.as_raw()) }
    }

    /// Stops the device at system shutdown: breaks the queues so nothing
    /// touches it any more, and resets it.
    pub(crate) fn shutdown(&self) {
        // SAFETY: `self` is valid.
        unsafe { bindings::virtio_device_shutdown(self.as_raw()) }
    }

    /// Resets the device: it forgets every buffer and stops interrupts.
    /// The token proves it to [`Device::del_vqs`].
    pub(crate) fn reset(&self) -> DeviceReset {
        // SAFETY: `self` is valid.
        unsafe { bindings::virtio_reset_device(self.as_raw()) };
        DeviceReset(())
    }

    /// Finds the queues of `specs`, in order, each with a completion
    /// callback that calls `T::queue_done` and the device-readable buffers
    /// it owns.
    pub(crate) fn find_vqs<T: Driver>(&self, specs: &[QueueSpec]) -> Result<Virtqueues> {
        let count = specs.len();
        if count > MAX_QUEUES {
            return Err(EINVAL);
        }
        // Allocate the buffers first: no queue exists yet if this fails.
        let mut out: [KVec<OutBuffer>; MAX_QUEUES] = Default::default();
        for (buffers, spec) in out.iter_mut().zip(specs) {
            for _ in 0..spec.out_buffers {
                let mut bytes = KVec::with_capacity(spec.out_buffer_size, GFP_KERNEL)?;
                bytes.resize(spec.out_buffer_size, 0, GFP_KERNEL)?;
                buffers.push(
                    OutBuffer {
                        bytes,
                        in_flight: false,
                    },
                    GFP_KERNEL,
                )?;
            }
        }
        let mut info: [bindings::virtqueue_info; MAX_QUEUES] = Default::default();
        for (slot, spec) in info.iter_mut().zip(specs) {
            slot.name = spec.name.as_char_ptr();
            slot.callback = Some(queue_callback::<T>);
        }
        let mut vqs = [core::ptr::null_mut(); MAX_QUEUES];
        // SAFETY: `self` is valid; `vqs` and `info` hold `count` entries and
        // outlive the call; the names are `'static`.
        to_result(unsafe {
            bindings::vbrs_virtio_find_vqs(
                self.as_raw(),
                count as u32,
                vqs.as_mut_ptr(),
                info.as_mut_ptr(),
            )
        })?;
        let mut queues = Virtqueues {
            slots: Default::default(),
            count,
        };
        for ((slot, vq), out) in queues.slots.iter_mut().zip(vqs).zip(out).take(count) {
            // INVARIANT: the core just created this queue; it lives until
            // `del_vqs`, which only deletes once every handle is back.
            *slot = NonNull::new(vq).map(|vq| Virtqueue { vq, out });
        }
        Ok(queues)
    }

    /// Deletes the queues, after the reset `_reset` proves.
    ///
    /// Every handle [`Virtqueues::take`] gave out must have been put back;
    /// if one is missing the queues are left alone (and logged), since
    /// deleting them would leave that handle dangling.
    pub(crate) fn del_vqs(&self, mut queues: Virtqueues, _reset: DeviceReset) {
        // `queues` (every handle) is consumed here; it is dropped at the end.
        if queues.slots.iter().take(queues.count).any(Option::is_none) {
            dev_err!(
                self.as_dev(),
                "not deleting virtqueues: a handle is still out\n"
            );
            return;
        }
        // The reset made the device drop every buffer: they are ours again.
        for queue in queues.slots.iter_mut().flatten() {
            queue.out.iter_mut().for_each(|buffer| buffer.in_flight = false);
        }
        // SAFETY: `self` is valid and every handle to the queues has been
        // consumed (checked above), so nothing uses them any more.
        unsafe { bindings::vbrs_virtio_del_vqs(self.as_raw()) }
    }
}

/// Proof that the device was reset: it holds no buffer any more.
pub(crate) struct DeviceReset(());

/// What to set up for one virtqueue.
#[derive(Clone, Copy)]
pub(crate) struct QueueSpec {
    /// The queue's name.
    pub(crate) name: &'static CStr,
    /// How many device-readable buffers the queue owns, for
    /// [`Virtqueue::send`].
    pub(crate) out_buffers: usize,
    /// The size of each, in bytes.
    pub(crate) out_buffer_size: usize,
}

/// A device-readable buffer a virtqueue owns, kmalloc memory.
struct OutBuffer {
    bytes: KVec<u8>,
    /// The device may read it: it was added and not yet handed back.
    in_flight: bool,
}

/// A handle to the bound device, kept in the driver's state so that work
/// items can reach the device.
///
/// # Invariants
///
/// Only created by the probe callback; valid until the driver state that
/// holds it is dropped at the end of remove.
pub(crate) struct DeviceHandle(NonNull<bindings::virtio_device>);

// SAFETY: the device may be used from any thread; the driver serialises
// what needs serialising.
unsafe impl Send for DeviceHandle {}
// SAFETY: same.
unsafe impl Sync for DeviceHandle {}

impl DeviceHandle {
    /// The device.
    pub(crate) fn get(&self) -> &Device {
        // SAFETY: valid while the driver state exists (type invariant).
        unsafe { Device::from_raw(self.0.as_ptr()) }
    }
}

/// Most queues a device may have through this layer.
pub(crate) const MAX_QUEUES: usize = 5;

/// The virtqueues of one device, handed back to [`Device::del_vqs`].
pub(crate) struct Virtqueues {
    slots: [Option<Virtqueue>; MAX_QUEUES],
    count: usize,
}

impl Virtqueues {
    /// Takes the handle of the queue at `index` out of the set.
    pub(crate) fn take(&mut self, index: usize) -> Option<Virtqueue> {
        self.slots.get_mut(index)?.take()
    }

    /// Puts a handle back at `index`.
    pub(crate) fn put_back(&mut self, index: usize, queue: Virtqueue) {
        if let Some(slot) = self.slots.get_mut(index) {
            *slot = Some(queue);
        }
    }
}

/// One virtqueue of a device, with the device-readable buffers it owns.
///
/// # Invariants
///
/// `vq` is a valid virtqueue until the handle is given back to
/// [`Device::del_vqs`] (through [`Virtqueues`]). The device only reads an
/// out buffer while it is marked in flight, and the token of buffer `i` on
/// the ring is `i + 1` (never a kernel address, so never the token of a
/// buffer added by [`Virtqueue::add_hint`] or [`Virtqueue::report_and_wait`]).
pub(crate) struct Virtqueue {
    vq: NonNull<bindings::virtqueue>,
    out: KVec<OutBuffer>,
}

impl Drop for Virtqueue {
    fn drop(&mut self) {
        // A buffer the device may still read must outlive it: leak it.
        for buffer in self.out.iter_mut().filter(|buffer| buffer.in_flight) {
            pr_warn!("virtqueue dropped while the device holds a buffer; leaking it\n");
            core::mem::forget(core::mem::take(&mut buffer.bytes));
        }
    }
}

// SAFETY: a virtqueue may be used from any thread as long as uses are
// serialised, which `&mut self` on every operation guarantees.
unsafe impl Send for Virtqueue {}

/// Why a buffer did not make the round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The queue did not take the buffer.
    Queue(Error),
    /// The queue is broken (the device is gone or failed): it will never
    /// take a buffer again.
    Broken,
    /// The device did not hand the buffer back in time; it may still use it.
    Timeout,
}

/// Whether `bytes` can go on a virtqueue: non-empty and in the linear map
/// (kmalloc or page memory, never vmalloc or module statics).
fn dma_able(bytes: &[u8]) -> bool {
    // SAFETY: only the address is inspected.
    !bytes.is_empty() && unsafe { bindings::vbrs_virt_addr_valid(bytes.as_ptr().cast()) }
}

impl Virtqueue {
    /// Copies `bytes` into a free buffer the queue owns and adds it for the
    /// device to read; [`Virtqueue::kick`] tells the device.
    ///
    /// The buffer stays the queue's, untouched, until the device hands it
    /// back ([`Virtqueue::get_buf`]) or is reset. Fails with `EBUSY` when
    /// every buffer is with the device, `EINVAL` when `bytes` is empty or
    /// larger than a buffer.
    pub(crate) fn send(&mut self, bytes: &[u8]) -> Result {
        let len = u32::try_from(bytes.len()).map_err(|_| EINVAL)?;
        let (index, buffer) = self
            .out
            .iter_mut()
            .enumerate()
            .find(|(_, buffer)| !buffer.in_flight)
            .ok_or(EBUSY)?;
        let slot = buffer.bytes.get_mut(..bytes.len()).ok_or(EINVAL)?;
        if bytes.is_empty() || !dma_able(slot) {
            return Err(EINVAL);
        }
        slot.copy_from_slice(bytes);
        let data = slot.as_mut_ptr().cast::<core::ffi::c_void>();
        let token = core::ptr::without_provenance_mut::<core::ffi::c_void>(index + 1);
        // SAFETY: the queue is valid and `&mut self` serialises its use; the
        // buffer is kmalloc memory (in the linear map, checked) owned by the
        // queue, which keeps it unchanged while it is in flight.
        to_result(unsafe {
            bindings::vbrs_virtqueue_add_outbuf(self.vq.as_ptr(), data, len, token)
        })?;
        // INVARIANT: the device may read it from now on.
        buffer.in_flight = true;
        Ok(())
    }

    /// The device handed back the buffer of `token`: if it is one of ours,
    /// it is free again.
    fn returned(&mut self, token: *mut core::ffi::c_void) {
        let index = token.addr().wrapping_sub(1);
        if let Some(buffer) = self.out.get_mut(index) {
            buffer.in_flight = false;
        }
    }

    /// Whether the queue is broken (surprise removal, transport failure).
    pub(crate) fn is_broken(&self) -> bool {
        // SAFETY: the queue is valid.
        unsafe { bindings::virtqueue_is_broken(self.vq.as_ptr()) }
    }

    /// Number of descriptors in the queue's ring.
    pub(crate) fn size(&self) -> u32 {
        // SAFETY: the queue is valid.
        unsafe { bindings::virtqueue_get_vring_size(self.vq.as_ptr()) }
    }

    /// Notifies the device of new buffers.
    pub(crate) fn kick(&mut self) {
        // SAFETY: the queue is valid.
        unsafe { bindings::virtqueue_kick(self.vq.as_ptr()) };
    }

    /// Takes back one buffer the device has used, if any.
    pub(crate) fn get_buf(&mut self) -> bool {
        let mut len = 0u32;
        // SAFETY: the queue is valid and `&mut self` serialises its use.
        let token = unsafe { bindings::virtqueue_get_buf(self.vq.as_ptr(), &mut len) };
        if token.is_null() {
            return false;
        }
        self.returned(token);
        true
    }

    /// Sleeps until the device returns a buffer (taking it back) or
    /// `timeout` passes.
    fn wait(&mut self, waiter: &WaitQueue, timeout: Jiffies) -> bool {
        // SAFETY: `waiter` is an initialised wait queue head and the queue is
        // valid; the helper only calls `virtqueue_get_buf` on it.
        let token = unsafe {
            bindings::vbrs_wait_for_buf(
                waiter.head.get(),
                self.vq.as_ptr(),
                isize::try_from(timeout).unwrap_or(isize::MAX),
            )
        };
        if token.is_null() {
            return false;
        }
        self.returned(token);
        true
    }

    /// Sends `words` to the device and sleeps until the device hands the
    /// buffer back (the completion callback wakes `waiter`) or `timeout`
    /// jiffies pass.
    ///
    /// On [`SendError::Timeout`] the queue keeps the buffer until the
    /// device hands it back ([`Virtqueue::get_buf`]) or is reset.
    pub(crate) fn send_and_wait(
        &mut self,
        words: &[u32],
        waiter: &WaitQueue,
        timeout: Jiffies,
    ) -> core::result::Result<(), SendError> {
        if let Err(err) = self.send(words.as_bytes()) {
            return Err(if self.is_broken() {
                SendError::Broken
            } else {
                SendError::Queue(err)
            });
        }
        self.kick();
        if self.wait(waiter, timeout) {
            Ok(())
        } else {
            Err(SendError::Timeout)
        }
    }

    /// Free descriptors in the ring.
    pub(crate) fn num_free(&self) -> u32 {
        // SAFETY: the queue is valid.
        unsafe { bindings::vbrs_virtqueue_num_free(self.vq.as_ptr()) }
    }

    /// Takes back every buffer the device has used.
    pub(crate) fn drain_used(&mut self) {
        while self.get_buf() {}
    }

    /// Sleeps until the device returns a buffer (taking it back) or
    /// `timeout` passes; returns whether a buffer came back.
    pub(crate) fn wait_used(&mut self, waiter: &WaitQueue, timeout: Jiffies) -> bool {
        self.wait(waiter, timeout)
    }

    /// Hands a block of free pages to the device as a free page hint.
    ///
    /// The device only notes the block's address (it will not migrate those
    /// pages); it never writes to it, and the guest may reuse the block at
    /// any time, as the C driver's shrinker does.
    pub(crate) fn add_hint<const ORDER: u32>(&mut self, block: &crate::mm::Page<ORDER>) -> Result {
        // SAFETY: the queue is valid and `&mut self` serialises its use; the
        // block is a valid page block of `ORDER` in the linear map.
        to_result(unsafe {
            bindings::vbrs_virtqueue_add_inbuf_block(self.vq.as_ptr(), block.as_raw(), ORDER)
        })
    }

    /// Hands a free page report to the device (device-writable buffers) and
    /// sleeps until the device has processed it.
    ///
    /// The device may discard the reported pages until it returns the
    /// buffer, and the page reporting core cannot take back pages still
    /// being reported, so this waits as long as it takes, logging once
    /// after `warn_after` jiffies, until the device hands the buffer back
    /// (`Ok`) or is reset (`ENODEV`: it dropped the buffer, so the pages
    /// are the guest's again).
    pub(crate) fn report_and_wait(
        &mut self,
        pages: &crate::mm::ReportedPages<'_>,
        waiter: &WaitQueue,
        warn_after: Jiffies,
    ) -> Result {
        let poll = kernel::time::msecs_to_jiffies(100);
        let (sg, nents) = pages.raw();
        // SAFETY: the queue is valid; `sg` is the page reporting core's
        // scatterlist of `nents` entries, valid until the report callback
        // returns, which happens only once the device gave it back.
        to_result(unsafe {
            bindings::vbrs_virtqueue_add_inbuf_nowait(self.vq.as_ptr(), sg, nents, sg.cast())
        })?;
        self.kick();
        let mut waited: Jiffies = 0;
        while !self.wait(waiter, poll) {
            // SAFETY: the queue and its device are valid.
            if !unsafe { bindings::vbrs_virtqueue_device_running(self.vq.as_ptr()) } {
                return Err(ENODEV);
            }
            let before = waited;
            waited = waited.saturating_add(poll);
            if before < warn_after && waited >= warn_after {
                pr_warn!("host has not returned a free page report yet; still waiting\n");
            }
        }
        Ok(())
    }
}

/// A wait queue head that completion callbacks wake.
#[pin_data]
pub(crate) struct WaitQueue {
    #[pin]
    head: Opaque<bindings::wait_queue_head>,
}

// SAFETY: a wait queue head is designed for concurrent use from any context.
unsafe impl Sync for WaitQueue {}
// SAFETY: it holds no thread-bound state.
unsafe impl Send for WaitQueue {}

impl WaitQueue {
    /// An initialiser for an empty wait queue.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            head <- Opaque::ffi_init(|slot| {
                // SAFETY: `slot` is valid, pinned memory for a wait queue head.
                unsafe { bindings::vbrs_init_waitqueue_head(slot) }
            }),
        })
    }

    /// Wakes every sleeper; callable from interrupt context.
    pub(crate) fn wake_up(&self) {
        // SAFETY: the head was initialised by `new`.
        unsafe { bindings::vbrs_wake_up(self.head.get()) }
    }
}

/// A virtio driver.
pub(crate) trait Driver: Sized + Send + Sync + 'static {
    /// The driver's name on the virtio bus.
    const NAME: &'static CStr;
    /// The virtio device id it binds to.
    const DEVICE_ID: u32;
    /// Device-specific feature bits it implements (the feature table).
    const FEATURE_TABLE: &'static [u32];
    /// What every bound device shares, owned by the [`Registration`].
    type Shared: Send + Sync;

    /// Adjusts the offered features before they are accepted.
    fn validate(_dev: &Device) -> Result {
        Ok(())
    }
    /// Allocates the per-device state; no queue exists yet.
    fn probe(dev: &Device, handle: DeviceHandle, shared: &Self::Shared) -> Result<Pin<KBox<Self>>>;
    /// Sets the device up once the state is reachable from callbacks.
    fn start(&self, dev: &Device) -> Result;
    /// A queue handed buffers back (interrupt context).
    fn queue_done(&self, queue_index: u32);
    /// The device changed its config space (may be interrupt context).
    fn config_changed(&self, dev: &Device);
    /// Tears the device down; the state is dropped afterwards.
    fn remove(&self, dev: &Device);
    /// The system is going down: stop all activity, then stop the device
    /// ([`Device::shutdown`]).
    fn shutdown(&self, dev: &Device) {
        dev.shutdown();
    }
    /// Quiesces before system sleep.
    fn freeze(&self, dev: &Device) -> Result {
        self.remove(dev);
        Ok(())
    }
    /// Sets up again after system sleep.
    fn restore(&self, dev: &Device) -> Result {
        self.start(dev)
    }
}

/// Gets the driver state of a bound device.
///
/// # Safety
///
/// `vdev` must be a valid device bound to driver `T` between a successful
/// probe and the end of remove.
unsafe fn driver_data<'a, T: Driver>(vdev: *mut bindings::virtio_device) -> &'a T {
    // SAFETY: the probe callback stored a `Pin<KBox<T>>` in `priv` and
    // remove takes it back only after the driver quiesced every callback.
    unsafe { &*(*vdev).priv_.cast::<T>() }
}

/// Completion callback of every queue: forwards to [`Driver::queue_done`].
///
/// # Safety
///
/// Called by the virtio core with a queue of a device bound to `T`.
unsafe extern "C" fn queue_callback<T: Driver>(vq: *mut bindings::virtqueue) {
    // SAFETY: the core only calls back for queues of a bound device, whose
    // `priv` was set before the queues were created.
    unsafe {
        let vdev = (*vq).vdev;
        let index = (*vq).index;
        driver_data::<T>(vdev).queue_done(index);
    }
}

/// Forwards `validate` to [`Driver::validate`].
///
/// # Safety
///
/// Called by the virtio core with a valid device.
unsafe extern "C" fn validate_callback<T: Driver>(vdev: *mut bindings::virtio_device) -> i32 {
    // SAFETY: the core passes a valid device.
    let dev = unsafe { Device::from_raw(vdev) };
    match T::validate(dev) {
        Ok(()) => 0,
        Err(err) => err.to_errno(),
    }
}

/// Forwards `probe` to [`Driver::probe`] and [`Driver::start`].
///
/// # Safety
///
/// Called by the virtio core with a valid, unbound device.
unsafe extern "C" fn probe_callback<T: Driver>(vdev: *mut bindings::virtio_device) -> i32 {
    // SAFETY: the core passes a valid device for the duration of the call
    // and, once probe succeeds, until remove.
    let dev = unsafe { Device::from_raw(vdev) };
    // INVARIANT: the handle goes into the driver state, dropped in remove.
    let handle = DeviceHandle(match NonNull::new(vdev) {
        Some(ptr) => ptr,
        None => return EINVAL.to_errno(),
    });
    // SAFETY: the core binds devices to the driver of a live
    // `Registration<T>`, which outlives every binding (it unregisters on drop).
    let shared = unsafe { Registration::<T>::shared_of(vdev) };
    let data = match T::probe(dev, handle, shared) {
        Ok(data) => data,
        Err(err) => return err.to_errno(),
    };
    // SAFETY: the state is never moved out of its box again: it is only
    // reached through `priv` until remove turns it back into a box to drop.
    let raw = KBox::into_raw(unsafe { Pin::into_inner_unchecked(data) });
    // SAFETY: `vdev` is valid; nothing reads `priv` before this store.
    unsafe { (*vdev).priv_ = raw.cast() };
    // SAFETY: `raw` was just leaked from a box and is valid.
    if let Err(err) = T::start(unsafe { &*raw }, dev) {
        // SAFETY: `start` failed before enabling any callback; take back
        // the box and clear `priv`.
        unsafe {
            (*vdev).priv_ = core::ptr::null_mut();
            drop(KBox::from_raw(raw));
        }
        return err.to_errno();
    }
    0
}

/// Forwards `remove` to [`Driver::remove`] and drops the driver state.
///
/// # Safety
///
/// Called by the virtio core with a device bound to `T`.
unsafe extern "C" fn remove_callback<T: Driver>(vdev: *mut bindings::virtio_device) {
    // SAFETY: the core passes a bound device.
    let dev = unsafe { Device::from_raw(vdev) };
    // SAFETY: bound device: `priv` holds our state.
    let data = unsafe { driver_data::<T>(vdev) };
    data.remove(dev);
    // SAFETY: `remove` quiesced every callback and reset the device, so no
    // one else can reach the state; it came from `KBox::into_raw`.
    unsafe {
        let raw = (*vdev).priv_.cast::<T>();
        (*vdev).priv_ = core::ptr::null_mut();
        drop(KBox::from_raw(raw));
    }
}

/// Forwards config-change notifications to [`Driver::config_changed`].
///
/// # Safety
///
/// Called by the virtio core with a device bound to `T`.
unsafe extern "C" fn config_changed_callback<T: Driver>(vdev: *mut bindings::virtio_device) {
    // SAFETY: the core only reports config changes of a bound device, with
    // config reporting disabled before remove is called.
    unsafe { driver_data::<T>(vdev).config_changed(Device::from_raw(vdev)) }
}

/// Forwards `shutdown` to [`Driver::shutdown`].
///
/// # Safety
///
/// Called by the virtio core with a device bound to `T`.
unsafe extern "C" fn shutdown_callback<T: Driver>(vdev: *mut bindings::virtio_device) {
    // SAFETY: bound device; the state stays until remove, which does not
    // run concurrently with shutdown.
    unsafe { driver_data::<T>(vdev).shutdown(Device::from_raw(vdev)) }
}

/// Forwards `freeze` to [`Driver::freeze`].
///
/// # Safety
///
/// Called by the virtio core with a device bound to `T`.
unsafe extern "C" fn freeze_callback<T: Driver>(vdev: *mut bindings::virtio_device) -> i32 {
    // SAFETY: bound device.
    let result = unsafe { driver_data::<T>(vdev).freeze(Device::from_raw(vdev)) };
    result.map_or_else(|e| e.to_errno(), |()| 0)
}

/// Forwards `restore` to [`Driver::restore`].
///
/// # Safety
///
/// Called by the virtio core with a device bound to `T`.
unsafe extern "C" fn restore_callback<T: Driver>(vdev: *mut bindings::virtio_device) -> i32 {
    // SAFETY: bound device.
    let result = unsafe { driver_data::<T>(vdev).restore(Device::from_raw(vdev)) };
    result.map_or_else(|e| e.to_errno(), |()| 0)
}

/// A registered virtio driver; unregistered on drop.
#[pin_data(PinnedDrop)]
pub(crate) struct Registration<T: Driver> {
    #[pin]
    driver: Opaque<bindings::virtio_driver>,
    #[pin]
    id_table: Opaque<[bindings::virtio_device_id; 2]>,
    shared: T::Shared,
    _driver: PhantomData<T>,
}

// SAFETY: after registration the C structs are only read by the core.
unsafe impl<T: Driver> Sync for Registration<T> {}
// SAFETY: same as `Sync`; nothing is tied to the registering thread.
unsafe impl<T: Driver> Send for Registration<T> {}

impl<T: Driver> Registration<T> {
    /// What the devices bound to the driver of `vdev` share.
    ///
    /// # Safety
    ///
    /// `vdev` must be bound (or being probed) by the driver of a live
    /// `Registration<T>`, which must outlive the returned reference.
    unsafe fn shared_of<'a>(vdev: *mut bindings::virtio_device) -> &'a T::Shared {
        // SAFETY: the device's driver is the `virtio_driver` embedded (as
        // `driver`) in a live `Registration<T>` (the caller's contract);
        // `Opaque` is `repr(transparent)`.
        unsafe {
            let drv = bindings::vbrs_virtio_driver_of(vdev);
            let this = kernel::container_of!(drv.cast::<Opaque<bindings::virtio_driver>>(), Self, driver);
            &(*this).shared
        }
    }

    /// Registers driver `T` with the virtio bus for `module`; its devices
    /// share `shared`.
    pub(crate) fn new(module: &'static ThisModule, shared: T::Shared) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            shared,
            id_table <- Opaque::ffi_init(|table: *mut [bindings::virtio_device_id; 2]| {
                let mut ids: [bindings::virtio_device_id; 2] = Default::default();
                ids[0].device = T::DEVICE_ID;
                ids[0].vendor = bindings::VIRTIO_DEV_ANY_ID;
                // SAFETY: `table` is valid pinned memory for the table.
                unsafe { table.write(ids) };
            }),
            driver <- Opaque::try_ffi_init(|drv: *mut bindings::virtio_driver| {
                let mut c: bindings::virtio_driver = Default::default();
                c.driver.name = T::NAME.as_char_ptr();
                c.feature_table = T::FEATURE_TABLE.as_ptr();
                c.feature_table_size = T::FEATURE_TABLE.len() as u32;
                c.validate = Some(validate_callback::<T>);
                c.probe = Some(probe_callback::<T>);
                c.remove = Some(remove_callback::<T>);
                c.config_changed = Some(config_changed_callback::<T>);
                c.shutdown = Some(shutdown_callback::<T>);
                c.freeze = Some(freeze_callback::<T>);
                c.restore = Some(restore_callback::<T>);
                // SAFETY: `drv` is valid pinned memory; the id table lives in
                // the same pinned struct, initialised above, and outlives
                // the registration.
                unsafe {
                    let this = kernel::container_of!(drv.cast::<Opaque<bindings::virtio_driver>>(), Self, driver);
                    c.id_table = (*this).id_table.get().cast();
                    drv.write(c);
                    to_result(bindings::__register_virtio_driver(drv, module.as_ptr().cast()))
                }
            }),
            _driver: PhantomData,
        })
    }
}

#[pinned_drop]
impl<T: Driver> PinnedDrop for Registration<T> {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: the driver was registered by `new` (a failed registration
        // never produces a `Registration`).
        unsafe { bindings::unregister_virtio_driver(self.driver.get()) };
    }
}

/// A work item on the freezable system workqueue, optionally delayed.
///
/// The owner `T` embeds it and names it with [`impl_has_delayed_work!`];
/// `ID` tells apart several work items of one owner.
#[pin_data]
pub(crate) struct DelayedWork<T, const ID: u64 = 0> {
    #[pin]
    work: Opaque<bindings::delayed_work>,
    _owner: PhantomData<T>,
}

// SAFETY: the C work item is made for use from any thread.
unsafe impl<T, const ID: u64> Sync for DelayedWork<T, ID> {}
// SAFETY: same.
unsafe impl<T, const ID: u64> Send for DelayedWork<T, ID> {}

/// An owner of a [`DelayedWork`], run when the work fires.
///
/// # Safety
///
/// `OFFSET` must be the byte offset of a `DelayedWork<Self, ID>` field in
/// `Self`, and the owner must be pinned and outlive every queued run
/// (cancel in its teardown).
pub(crate) unsafe trait HasDelayedWork<const ID: u64>: Sized + Sync {
    /// Offset of the `DelayedWork<Self, ID>` field.
    const OFFSET: usize;
    /// The work itself (process context, may sleep).
    fn run(&self);
}

/// Implements [`HasDelayedWork`] for `$owner` whose `$field` is its work item.
#[macro_export]
macro_rules! impl_has_delayed_work {
    ($owner:ty, $field:ident, $id:literal, $run:path) => {
        // SAFETY: the offset is computed by the compiler for this field,
        // whose type is `DelayedWork<$owner, $id>`.
        unsafe impl $crate::virtio::HasDelayedWork<$id> for $owner {
            const OFFSET: usize = ::core::mem::offset_of!($owner, $field);
            fn run(&self) {
                $run(self)
            }
        }
    };
}

/// Runs the owner's work.
///
/// # Safety
///
/// Called by the workqueue with the `work_struct` of a [`DelayedWork<T>`].
unsafe extern "C" fn work_callback<T: HasDelayedWork<ID>, const ID: u64>(
    work: *mut bindings::work_struct,
) {
    // SAFETY: `work` is the `work` of a `delayed_work` embedded at
    // `T::OFFSET` in a live, pinned `T` (trait contract).
    unsafe {
        let dwork = bindings::vbrs_to_delayed_work(work);
        let owner = dwork.cast::<u8>().sub(T::OFFSET).cast::<T>();
        (*owner).run();
    }
}

impl<T: HasDelayedWork<ID>, const ID: u64> DelayedWork<T, ID> {
    /// An initialiser for an idle work item.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            work <- Opaque::ffi_init(|slot| {
                // SAFETY: `slot` is valid pinned memory for a delayed work.
                unsafe { bindings::vbrs_init_delayed_work(slot, Some(work_callback::<T, ID>)) }
            }),
            _owner: PhantomData,
        })
    }

    /// Queues the work on the freezable system workqueue after `delay_ms`;
    /// does nothing if it is already queued.
    pub(crate) fn queue(&self, delay_ms: u32) {
        let delay = kernel::time::msecs_to_jiffies(delay_ms);
        // SAFETY: the work was initialised by `new`; the owner outlives it
        // (trait contract).
        unsafe { bindings::vbrs_queue_freezable_delayed_work(self.work.get(), delay) };
    }

    /// Runs the work as soon as possible, bringing a delayed run forward.
    pub(crate) fn run_now(&self) {
        // SAFETY: the work was initialised by `new`; the owner outlives it.
        unsafe { bindings::vbrs_mod_freezable_delayed_work(self.work.get(), 0) };
    }

    /// Cancels the work and waits for a running instance, including one that
    /// re-queues itself.
    pub(crate) fn cancel_sync(&self) {
        // SAFETY: the work was initialised by `new`.
        unsafe { bindings::cancel_delayed_work_sync(self.work.get()) };
    }
}
