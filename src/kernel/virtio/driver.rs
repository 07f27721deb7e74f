// SPDX-License-Identifier: GPL-2.0

//! The virtio driver trait and its registration with the virtio bus: the
//! C callbacks that forward to it.

use core::marker::PhantomData;

use kernel::error::{
    from_result,
    to_result, //
};
use kernel::prelude::*;
use kernel::types::{
    ForeignOwnable,
    Opaque, //
};

use super::Device;
use crate::bindings;

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
    fn probe(dev: &Device, shared: &Self::Shared) -> Result<Pin<KBox<Self>>>;
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

/// Borrows the driver state of a bound device.
///
/// # Safety
///
/// `vdev` must be a valid device bound to driver `T`, between the store of
/// its state in `probe_callback` and the end of `remove_callback`.
unsafe fn driver_data<'a, T: Driver>(vdev: *mut bindings::virtio_device) -> Pin<&'a T> {
    // SAFETY: `probe_callback` stored a `Pin<KBox<T>>` from `into_foreign`
    // in `priv`; `remove_callback` takes it back only after `T::remove`
    // stopped every callback (the caller's contract).
    unsafe { <Pin<KBox<T>> as ForeignOwnable>::borrow((*vdev).priv_) }
}

/// Completion callback of every queue: forwards to [`Driver::queue_done`].
///
/// # Safety
///
/// Called by the virtio core with a queue of a device bound to `T`.
pub(super) unsafe extern "C" fn queue_callback<T: Driver>(vq: *mut bindings::virtqueue) {
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
    from_result(|| T::validate(dev).map(|()| 0))
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
    // SAFETY: the core binds devices to the driver of a live
    // `Registration<T>`, which outlives every binding (it unregisters on drop).
    let shared = unsafe { Registration::<T>::shared_of(vdev) };
    from_result(|| {
        let state = T::probe(dev, shared)?.into_foreign();
        // SAFETY: `vdev` is valid; no callback reads `priv` before the
        // queues exist, which `start` creates after this store.
        unsafe { (*vdev).priv_ = state };
        // SAFETY: `state` came from `into_foreign` just above and is only
        // taken back below or in `remove_callback`.
        let started = T::start(
            unsafe { &<Pin<KBox<T>> as ForeignOwnable>::borrow(state) },
            dev,
        );
        if let Err(err) = started {
            // SAFETY: a failed `start` tore down what it set up (the device
            // is reset and its queues are deleted), and config change
            // callbacks are enabled only once probe succeeds: nothing can
            // reach the state any more.
            unsafe {
                (*vdev).priv_ = core::ptr::null_mut();
                drop(<Pin<KBox<T>> as ForeignOwnable>::from_foreign(state));
            }
            return Err(err);
        }
        Ok(0)
    })
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
    unsafe { driver_data::<T>(vdev) }.remove(dev);
    // SAFETY: `remove` stopped every activity, reset the device and deleted
    // its queues, and the core disabled config change callbacks before
    // calling it: nothing else can reach the state, which came from
    // `into_foreign`.
    unsafe {
        let state = (*vdev).priv_;
        (*vdev).priv_ = core::ptr::null_mut();
        drop(<Pin<KBox<T>> as ForeignOwnable>::from_foreign(state));
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
    let (state, dev) = unsafe { (driver_data::<T>(vdev), Device::from_raw(vdev)) };
    from_result(|| state.freeze(dev).map(|()| 0))
}

/// Forwards `restore` to [`Driver::restore`].
///
/// # Safety
///
/// Called by the virtio core with a device bound to `T`.
unsafe extern "C" fn restore_callback<T: Driver>(vdev: *mut bindings::virtio_device) -> i32 {
    // SAFETY: bound device.
    let (state, dev) = unsafe { (driver_data::<T>(vdev), Device::from_raw(vdev)) };
    from_result(|| state.restore(dev).map(|()| 0))
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
            let this =
                kernel::container_of!(drv.cast::<Opaque<bindings::virtio_driver>>(), Self, driver);
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
