// SPDX-License-Identifier: GPL-2.0

//! A virtio device as its driver sees it: feature bits, typed config
//! access, status, reset, wakeup events and finding its virtqueues.

use core::marker::PhantomData;
use core::ptr::NonNull;

use kernel::device::{
    self,
    Bound,
    Core,
    DeviceContext,
    Normal, //
};
use kernel::error::to_result;
use kernel::prelude::*;
use kernel::sync::aref::{
    ARef,
    AlwaysRefCounted, //
};
use kernel::types::Opaque;

use super::config::{
    ConfigField,
    ConfigValue, //
};
use super::driver::Adapter;
use super::virtqueue::{
    QueueSpec,
    Virtqueues, //
};
use super::Driver;
use crate::bindings;

/// A virtio device, in the device context `Ctx` (as `kernel::pci::Device`):
/// [`Core`] inside the bus callbacks, where the driver sets the device up
/// and tears it down; [`Bound`] while it is bound to the driver, where the
/// driver may use it (config space, wakeup events); [`Normal`] anywhere.
///
/// ```ignore
/// // In `Driver::probe`, with a `&Device<Core>`: find the queues, take
/// // one typed by the data its buffers carry, read a config field, go
/// // live. `teardown` resets and gives the queues back (`del_vqs`).
/// let mut queues = dev.find_vqs::<MyDriver>(&[QueueSpec { name: c"requests" }])?;
/// let requests: Virtqueue<KBox<Request>> = queues.take(0).ok_or(ENODEV)?;
/// let capacity = dev.read_config::<Capacity>().ok_or(ENODEV)?;
/// dev.ready();
/// ```
///
/// # Invariants
///
/// The wrapped `virtio_device` is valid for as long as a `&Device` exists:
/// references are handed out inside the bus callbacks, or through an
/// [`ARef<Device>`](kernel::sync::aref::ARef) that holds a reference to its
/// `struct device`. A `&Device<Bound>` (or `Core`) exists only while the
/// device is bound to a driver.
#[repr(transparent)]
pub(crate) struct Device<Ctx: DeviceContext = Normal>(
    Opaque<bindings::virtio_device>,
    PhantomData<Ctx>,
);

// SAFETY: `Device<Ctx>` only differs from `Device<Normal>` by its marker:
// each wraps the same `virtio_device`.
kernel::impl_device_context_deref!(unsafe { Device });
kernel::impl_device_context_into_aref!(Device);

impl<Ctx: DeviceContext> AsRef<device::Device<Ctx>> for Device<Ctx> {
    fn as_ref(&self) -> &device::Device<Ctx> {
        // SAFETY: `dev` is embedded in a valid `virtio_device` (type
        // invariant) and lives as long as `self`, in the same context.
        unsafe { device::Device::from_raw(core::ptr::addr_of_mut!((*self.as_raw()).dev)) }
    }
}

impl<Ctx: DeviceContext> Device<Ctx> {
    /// Wraps a pointer the virtio core passed to a callback.
    ///
    /// # Safety
    ///
    /// `ptr` must point to a valid `virtio_device` for the lifetime `'a`,
    /// in context `Ctx` for as long.
    pub(super) unsafe fn from_raw<'a>(ptr: *mut bindings::virtio_device) -> &'a Self {
        // SAFETY: `Device` is `repr(transparent)` over the C struct and the
        // caller guarantees validity for `'a`.
        unsafe { &*ptr.cast::<Self>() }
    }

    fn as_raw(&self) -> *mut bindings::virtio_device {
        self.0.get()
    }

    /// The device in the bound context.
    ///
    /// # Safety
    ///
    /// The device must stay bound to its driver for as long as the returned
    /// reference lives.
    unsafe fn as_bound(&self) -> &Device<Bound> {
        // SAFETY: the same `virtio_device`, valid as long as `self`; bound
        // for as long as the reference lives (the caller's contract).
        unsafe { &*core::ptr::from_ref(self).cast() }
    }

    /// The lower 64 negotiated feature bits.
    pub(crate) fn features(&self) -> u64 {
        // SAFETY: `self` is a valid virtio device (type invariant).
        unsafe { bindings::vbrs_virtio_features(self.as_raw()) }
    }

    /// What the device tells of its host: the transport and the identity
    /// the host gave it (PCI subsystem IDs, the virtio-mmio vendor).
    pub(crate) fn transport(&self) -> Transport {
        // SAFETY: `self` is valid (type invariant), and with it the `struct
        // device` it embeds; its parent, if any, is the transport's device,
        // which outlives it.
        let parent = unsafe { (*self.as_raw()).dev.parent };
        if parent.is_null() {
            return Transport::Other;
        }
        // SAFETY: `parent` is a valid `struct device` for as long as `self`
        // is (above).
        let parent = unsafe { device::Device::from_raw(parent) };
        if let Ok(pci) = <&kernel::pci::Device>::try_from(parent) {
            return Transport::Pci {
                subsystem_vendor: pci.subsystem_vendor_id(),
                subsystem_device: pci.subsystem_device_id(),
            };
        }
        if <&kernel::platform::Device>::try_from(parent).is_ok() {
            // virtio-mmio devices hang off a platform device; the core read
            // `id.vendor` from the VendorID register.
            // SAFETY: `self` is valid (type invariant).
            let vendor = unsafe { (*self.as_raw()).id.vendor };
            return Transport::Mmio { vendor };
        }
        Transport::Other
    }

    /// Whether the transport gives access to the config space.
    pub(crate) fn has_config_access(&self) -> bool {
        // SAFETY: `self` is a valid virtio device (type invariant), whose
        // transport set `config` before probe.
        unsafe { (*(*self.as_raw()).config).get.is_some() }
    }

    /// Whether every feature bit of `bits` is negotiated.
    fn has_features(&self, bits: u64) -> bool {
        self.features() & bits == bits
    }

    /// Whether the device is a virtio 1.0 device (`VIRTIO_F_VERSION_1`).
    fn is_modern(&self) -> bool {
        self.has_features(1 << VIRTIO_F_VERSION_1)
    }
}

/// Feature bit of a virtio 1.0 device (virtio spec 6).
const VIRTIO_F_VERSION_1: u32 = 32;

/// What a virtio device tells of its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// virtio-pci, with the PCI function's subsystem IDs.
    Pci {
        /// PCI subsystem vendor ID.
        subsystem_vendor: u16,
        /// PCI subsystem device ID.
        subsystem_device: u16,
    },
    /// virtio-mmio, with its `VendorID` register.
    Mmio {
        /// The `VendorID` register.
        vendor: u32,
    },
    /// Any other transport (virtio-ccw, ...).
    Other,
}

impl Device<Bound> {
    /// Reads config field `F`, or `None` when the features that make it
    /// exist are not negotiated. A field wider than 32 bits is read again
    /// until the device's config generation holds still across the read.
    /// May sleep.
    pub(crate) fn read_config<F: ConfigField>(
        &self,
    ) -> Option<<F::Value as ConfigValue>::Native> {
        if !self.has_features(F::NEEDS) {
            return None;
        }
        let mut bytes = [0u8; 8];
        // SAFETY: `self` is valid and bound, so its transport's config
        // space is mapped; the field's `SIZE` bytes exist in it with the
        // features just checked (`ConfigField` contract), and `bytes` has
        // room for them.
        unsafe {
            bindings::vbrs_virtio_cread(
                self.as_raw(),
                F::OFFSET,
                bytes.as_mut_ptr().cast(),
                F::Value::SIZE as u32,
            )
        };
        Some(F::Value::decode(bytes, self.is_modern()))
    }

    /// Writes config field `F` in one access; `EINVAL` when the features
    /// that make it exist are not negotiated.
    pub(crate) fn write_config<F: ConfigField>(
        &self,
        value: <F::Value as ConfigValue>::Native,
    ) -> Result {
        if !self.has_features(F::NEEDS) {
            return Err(EINVAL);
        }
        let bytes = F::Value::encode(value, self.is_modern());
        // SAFETY: as in `read_config`; `bytes` holds the field's `SIZE`
        // bytes.
        unsafe {
            bindings::vbrs_virtio_cwrite(
                self.as_raw(),
                F::OFFSET,
                bytes.as_ptr().cast(),
                F::Value::SIZE as u32,
            )
        };
        Ok(())
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
}

impl Device<Core<'_>> {
    /// Withdraws a feature during [`Driver::validate`], before negotiation
    /// ends.
    pub(crate) fn clear_feature(&self, bit: u32) {
        // SAFETY: `self` is valid; clearing a bit before FEATURES_OK is what
        // the `validate` callback is for.
        unsafe { bindings::vbrs_virtio_clear_feature(self.as_raw(), bit) }
    }

    /// Lets the device hold a wakeup source of its own (user space enables
    /// it in `power/wakeup`), as the C driver does: the transport has its
    /// own, and wakeup sources do not nest.
    pub(crate) fn set_wakeup_capable(&self) {
        // SAFETY: `self` is valid.
        unsafe { bindings::vbrs_virtio_set_wakeup_capable(self.as_raw()) }
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
    /// callback that calls `T::queue_done`.
    pub(crate) fn find_vqs<T: Driver>(&self, specs: &[QueueSpec]) -> Result<Virtqueues> {
        let count = specs.len();
        let mut info = KVec::with_capacity(count, GFP_KERNEL)?;
        let mut vqs = KVec::with_capacity(count, GFP_KERNEL)?;
        for spec in specs {
            info.push(
                bindings::virtqueue_info {
                    name: spec.name.as_char_ptr(),
                    callback: Some(Adapter::<T>::queue_callback),
                    ..Default::default()
                },
                GFP_KERNEL,
            )?;
            vqs.push(core::ptr::null_mut(), GFP_KERNEL)?;
        }
        let mut slots = KVec::with_capacity(count, GFP_KERNEL)?;
        // SAFETY: `self` is valid; `vqs` and `info` hold `count` entries and
        // outlive the call; the names are `'static`.
        to_result(unsafe {
            bindings::vbrs_virtio_find_vqs(
                self.as_raw(),
                u32::try_from(count).map_err(|_| EINVAL)?,
                vqs.as_mut_ptr(),
                info.as_mut_ptr(),
            )
        })?;
        for vq in vqs {
            // INVARIANT: the core just created this queue; it lives until
            // `del_vqs`, which only deletes once every handle is back.
            // Cannot fail: `slots` has room for `count`.
            let _ = slots.push(NonNull::new(vq), GFP_KERNEL);
        }
        let queues = Virtqueues { slots };
        Ok(queues)
    }

    /// Deletes the queues, after the reset `_reset` proves.
    ///
    /// Every handle [`Virtqueues::take`] gave out must have been put back
    /// ([`Virtqueues::put_back`], which drops what the device held); if
    /// one is missing the queues are left alone (and logged), since
    /// deleting them would leave that handle dangling.
    pub(crate) fn del_vqs(&self, queues: Virtqueues, _reset: DeviceReset) {
        if queues.slots.iter().any(Option::is_none) {
            dev_err!(self, "not deleting virtqueues: a handle is still out\n");
            return;
        }
        // SAFETY: `self` is valid and every handle to the queues has been
        // consumed (checked above), so nothing uses them any more.
        unsafe { bindings::vbrs_virtio_del_vqs(self.as_raw()) }
    }
}

/// The device of a bound driver, for its per-device data: work items and
/// notifiers reach the device through it, outside the bus callbacks.
///
/// # Invariants
///
/// Only the bus adapter creates one, for the probe of a [`Driver`]; by the
/// safety contract of [`Driver`], that driver keeps it in its per-device
/// data and stops every use of it before its unbind returns, so the device
/// is bound whenever [`BoundDevice::get`] runs.
pub(crate) struct BoundDevice(ARef<Device>);

impl BoundDevice {
    /// The handle for the driver being probed on `dev`.
    pub(super) fn new(dev: &Device<Core<'_>>) -> Self {
        Self(dev.into())
    }

    /// The device, bound to the driver.
    pub(crate) fn get(&self) -> &Device<Bound> {
        // SAFETY: the device is bound whenever this runs (type invariant).
        unsafe { self.0.as_bound() }
    }
}

/// Proof that the device was reset: it holds no buffer any more.
pub(crate) struct DeviceReset(());

// SAFETY: a virtio device embeds a `struct device`, whose reference count
// keeps the whole `virtio_device` allocated: the transport frees it only
// from the device's release callback, when the last reference is dropped.
unsafe impl AlwaysRefCounted for Device {
    fn inc_ref(&self) {
        // SAFETY: `self` is valid (type invariant), so is its embedded device.
        unsafe { bindings::get_device(core::ptr::addr_of_mut!((*self.as_raw()).dev)) };
    }

    unsafe fn dec_ref(obj: NonNull<Self>) {
        // SAFETY: the caller owns a reference taken by `inc_ref`.
        unsafe {
            bindings::put_device(core::ptr::addr_of_mut!(
                (*obj.as_ptr().cast::<bindings::virtio_device>()).dev
            ))
        };
    }
}

// SAFETY: the virtio core's device operations may be called from any
// thread; what needs serialising the driver serialises.
unsafe impl Send for Device {}
// SAFETY: same.
unsafe impl Sync for Device {}
