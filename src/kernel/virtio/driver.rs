// SPDX-License-Identifier: GPL-2.0

//! The virtio bus the `rust/kernel` way: a [`Driver`] trait, the id table
//! type ([`DeviceId`], [`virtio_device_table!`]) and the [`Adapter`] that
//! registers a driver through [`kernel::driver::Registration`], as
//! `kernel::auxiliary` and `kernel::pci` do for their buses.

use core::marker::PhantomData;

use kernel::device::{
    self,
    BoundInternal,
    Core,
    CoreInternal, //
};
use kernel::device_id::RawDeviceId;
use kernel::driver;
use kernel::error::{
    from_result,
    to_result, //
};
use kernel::prelude::*;
use kernel::types::Opaque;

use super::{
    BoundDevice,
    Device, //
};
use crate::bindings;

/// A virtio device id: the device type a driver binds to, any vendor.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub(crate) struct DeviceId(bindings::virtio_device_id);

impl DeviceId {
    /// Matches virtio devices of type `device` from any vendor.
    pub(crate) const fn new(device: u32) -> Self {
        Self(bindings::virtio_device_id {
            device,
            vendor: bindings::VIRTIO_DEV_ANY_ID,
        })
    }
}

// SAFETY: `DeviceId` is `repr(transparent)` over `virtio_device_id`, which
// has no driver data field (so no `RawDeviceIdIndex`).
unsafe impl RawDeviceId for DeviceId {
    type RawType = bindings::virtio_device_id;
}

/// A zero-terminated table of [`DeviceId`]s.
pub(crate) type IdTable = &'static dyn kernel::device_id::IdTable<DeviceId, ()>;

/// Declares the virtio id table `$name` and its module aliases (modpost
/// reads it, as it reads C's `MODULE_DEVICE_TABLE(virtio, ...)`).
#[macro_export]
macro_rules! virtio_device_table {
    ($name:ident, [$($id:expr),+ $(,)?]) => {
        ::kernel::module_device_table!(
            "virtio", $crate::virtio::DeviceId, $name, @none, [$($id),+]
        );
    };
}

/// Declares a kernel module that exposes a single virtio driver, as
/// `module_pci_driver!` does for PCI.
///
/// # Examples
///
/// ```ignore
/// crate::virtio_device_table!(IDS, [virtio::DeviceId::new(VIRTIO_ID_RNG)]);
///
/// struct RngDriver { /* ... */ }
///
/// // SAFETY: `RngDriver` keeps the `BoundDevice` and stops every use of it
/// // in `unbind` (see `Driver`).
/// unsafe impl virtio::Driver for RngDriver {
///     type Data = Self;
///     const ID_TABLE: virtio::IdTable = &IDS;
///     const FEATURE_TABLE: &'static [u32] = &[];
///
///     fn probe<'a>(
///         dev: &'a virtio::Device<Core<'_>>,
///         handle: virtio::BoundDevice,
///     ) -> impl PinInit<Self, Error> + 'a {
///         /* ... */
///     }
/// }
///
/// crate::module_virtio_driver! {
///     type: RngDriver,
///     name: "virtio_rng_rs",
///     authors: ["Author name"],
///     description: "Description",
///     license: "GPL",
/// }
/// ```
#[macro_export]
macro_rules! module_virtio_driver {
    ($($f:tt)*) => {
        ::kernel::module_driver!(<T>, $crate::virtio::Adapter<T>, { $($f)* });
    };
}

/// A virtio driver. [`Adapter`] forwards the bus callbacks to it.
///
/// The device passed to each method tells what it may do there: a
/// [`Device<Core>`] (bus callbacks, serialised by the device lock) may set
/// the device up and tear it down, a [`Device<device::Bound>`] may only use
/// it.
///
/// # Safety
///
/// The [`BoundDevice`] given to [`Driver::probe`] stays in the per-device
/// data, and every use of it (work items, notifiers, anything the data set
/// up) has stopped when [`Driver::unbind`] returns, and when a failed
/// [`Driver::start`] returns.
pub(crate) unsafe trait Driver: 'static {
    /// The per-device data, stored with the device from probe until unbind
    /// ends.
    type Data: Send + Sync;
    /// The devices the driver binds to.
    const ID_TABLE: IdTable;
    /// Device-specific feature bits it implements (the feature table).
    const FEATURE_TABLE: &'static [u32];

    /// Adjusts the offered features before they are accepted.
    fn validate(_dev: &Device<Core<'_>>) -> Result {
        Ok(())
    }
    /// Initialises the per-device data, which keeps `handle` to reach the
    /// device outside the bus callbacks; no queue exists yet.
    fn probe<'a>(
        dev: &'a Device<Core<'_>>,
        handle: BoundDevice,
    ) -> impl PinInit<Self::Data, Error> + 'a;
    /// Sets the device up once its data is reachable from callbacks; on
    /// error it must leave the device reset and its queues deleted.
    fn start(dev: &Device<Core<'_>>, this: Pin<&Self::Data>) -> Result;
    /// A queue handed buffers back (interrupt context).
    fn queue_done(dev: &Device<device::Bound>, this: Pin<&Self::Data>, queue_index: u32);
    /// The device changed its config space (may be interrupt context).
    fn config_changed(dev: &Device<device::Bound>, this: Pin<&Self::Data>);
    /// Tears the device down: afterwards nothing may use the device or its
    /// queues, and the data is dropped. Virtio requires it (reset, delete
    /// the queues), hence no default.
    fn unbind(dev: &Device<Core<'_>>, this: Pin<&Self::Data>);
    /// The system is going down: stop all activity, then stop the device.
    fn shutdown(dev: &Device<Core<'_>>, this: Pin<&Self::Data>) {
        let _ = this;
        dev.shutdown();
    }
    /// Quiesces before system sleep.
    fn freeze(dev: &Device<Core<'_>>, this: Pin<&Self::Data>) -> Result {
        Self::unbind(dev, this);
        Ok(())
    }
    /// Sets up again after system sleep.
    fn restore(dev: &Device<Core<'_>>, this: Pin<&Self::Data>) -> Result {
        Self::start(dev, this)
    }
}

/// The virtio bus adapter of driver `T`: register it with
/// `kernel::driver::Registration<Adapter<T>>`.
pub(crate) struct Adapter<T: Driver>(PhantomData<T>);

// SAFETY: `virtio_driver` is a C struct (`repr(C)` in the bindings) that
// embeds its `device_driver` as `driver`; the data stored with
// `set_drvdata` in `probe_callback` is a `T::Data`.
unsafe impl<T: Driver> driver::DriverLayout for Adapter<T> {
    type DriverType = bindings::virtio_driver;
    type DriverData<'bound> = T::Data;
    const DEVICE_DRIVER_OFFSET: usize = core::mem::offset_of!(Self::DriverType, driver);
}

// SAFETY: `register` fills in a `virtio_driver` and registers it with the
// virtio bus; `unregister` undoes exactly that.
unsafe impl<T: Driver> driver::RegistrationOps for Adapter<T> {
    unsafe fn register(
        vdrv: &Opaque<Self::DriverType>,
        name: &'static CStr,
        module: &'static ThisModule,
    ) -> Result {
        let vdrv = vdrv.get();
        // SAFETY: `vdrv` is valid, pinned and not yet registered (the
        // caller's contract); the id and feature tables are `'static`.
        unsafe {
            (*vdrv).driver.name = name.as_char_ptr();
            (*vdrv).id_table = T::ID_TABLE.as_ptr();
            (*vdrv).feature_table = T::FEATURE_TABLE.as_ptr();
            (*vdrv).feature_table_size = T::FEATURE_TABLE.len() as u32;
            (*vdrv).validate = Some(Self::validate_callback);
            (*vdrv).probe = Some(Self::probe_callback);
            (*vdrv).remove = Some(Self::remove_callback);
            (*vdrv).config_changed = Some(Self::config_changed_callback);
            (*vdrv).shutdown = Some(Self::shutdown_callback);
            (*vdrv).freeze = Some(Self::freeze_callback);
            (*vdrv).restore = Some(Self::restore_callback);
            to_result(bindings::__register_virtio_driver(
                vdrv,
                module.as_ptr().cast(),
            ))
        }
    }

    unsafe fn unregister(vdrv: &Opaque<Self::DriverType>) {
        // SAFETY: `vdrv` was registered by `register` (the caller's contract).
        unsafe { bindings::unregister_virtio_driver(vdrv.get()) }
    }
}

impl<T: Driver> Adapter<T> {
    /// The data `probe_callback` stored with a bound device.
    ///
    /// # Safety
    ///
    /// `dev` must be bound to `T`: between the store in `probe_callback`
    /// and the end of its unbind.
    unsafe fn data<Ctx: device::InternalBoundContext>(dev: &Device<Ctx>) -> Pin<&T::Data> {
        // SAFETY: the caller's contract; the data is a `T::Data`.
        unsafe { dev.as_ref().drvdata_borrow::<T::Data>() }
    }

    extern "C" fn validate_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // SAFETY: the core passes a valid device, in a bus callback.
        let dev = unsafe { Device::<Core<'_>>::from_raw(vdev) };
        from_result(|| T::validate(dev).map(|()| 0))
    }

    extern "C" fn probe_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // SAFETY: the core passes a valid device, in a bus callback.
        let dev = unsafe { Device::<CoreInternal<'_>>::from_raw(vdev) };
        from_result(|| {
            dev.as_ref()
                .set_drvdata(T::probe(dev, BoundDevice::new(dev)))?;
            // SAFETY: the data was stored just above. If `start` fails, the
            // driver core drops it after this callback (`post_unbind_rust`).
            T::start(dev, unsafe { Self::data(dev) })?;
            Ok(0)
        })
    }

    extern "C" fn remove_callback(vdev: *mut bindings::virtio_device) {
        // SAFETY: the core passes a device bound to this driver.
        let dev = unsafe { Device::<CoreInternal<'_>>::from_raw(vdev) };
        // SAFETY: the device is bound; the driver core drops the data
        // after this callback returns.
        T::unbind(dev, unsafe { Self::data(dev) });
    }

    /// Completion callback of every queue of a bound device.
    pub(super) extern "C" fn queue_callback(vq: *mut bindings::virtqueue) {
        // SAFETY: the core calls back only for the live queues of a device
        // bound to `T`: `start` creates them after the data is stored and
        // unbind deletes them before it is dropped.
        unsafe {
            let dev = Device::<BoundInternal>::from_raw((*vq).vdev);
            T::queue_done(dev, Self::data(dev), (*vq).index);
        }
    }

    extern "C" fn config_changed_callback(vdev: *mut bindings::virtio_device) {
        // SAFETY: the core reports config changes only between probe and
        // remove (it disables them before calling remove).
        unsafe {
            let dev = Device::<BoundInternal>::from_raw(vdev);
            T::config_changed(dev, Self::data(dev));
        }
    }

    extern "C" fn shutdown_callback(vdev: *mut bindings::virtio_device) {
        // SAFETY: a bus callback with a bound device.
        let dev = unsafe { Device::<CoreInternal<'_>>::from_raw(vdev) };
        // SAFETY: bound, as just said.
        T::shutdown(dev, unsafe { Self::data(dev) });
    }

    extern "C" fn freeze_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // SAFETY: a bus callback with a bound device.
        let dev = unsafe { Device::<CoreInternal<'_>>::from_raw(vdev) };
        // SAFETY: bound, as just said.
        from_result(|| T::freeze(dev, unsafe { Self::data(dev) }).map(|()| 0))
    }

    extern "C" fn restore_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // SAFETY: a bus callback with a bound device.
        let dev = unsafe { Device::<CoreInternal<'_>>::from_raw(vdev) };
        // SAFETY: bound, as just said.
        from_result(|| T::restore(dev, unsafe { Self::data(dev) }).map(|()| 0))
    }
}
