// SPDX-License-Identifier: GPL-2.0

//! Safe abstractions over the C virtio driver API.
//!
//! Shaped so that it could become `kernel::virtio`: a [`Driver`] trait, its
//! id table and the bus [`Adapter`] for `kernel::driver::Registration`
//! (`driver.rs`), a [`Device`] in its device context for feature bits,
//! config space and status (`device.rs`), and the [`Virtqueue`]s found on
//! it, typed by the data each buffer carries as its token
//! (`virtqueue.rs`). What is not virtio but what a virtio driver sleeps
//! and defers on is beside it: [`crate::wait_queue`] and
//! [`crate::workqueue`]. Every `unsafe` block of the module that touches
//! virtio lives below this directory.

pub(crate) mod config;
mod device;
mod driver;
mod virtqueue;

pub(crate) use device::{
    Transport,
    BoundDevice,
    Device, //
};
pub(crate) use driver::{
    Adapter,
    DeviceId,
    Driver,
    IdTable, //
};
pub(crate) use virtqueue::{
    QueueSpec,
    Readable,
    Virtqueue,
    Virtqueues, //
};
