// SPDX-License-Identifier: GPL-2.0

//! virtio-balloon-rs: a virtio memory balloon driver in Rust.
//!
//! The module root: module metadata and parameters, the id table, and the
//! registration of the driver with the virtio bus. The driver is in
//! [`balloon`], the layers it stands on in [`virtio`] and [`mm`], the
//! policy in the `balloon_logic` crate.

use kernel::debugfs::Dir;
use kernel::driver::Registration;
use kernel::prelude::*;
use kernel::InPlaceModule;

mod balloon;
mod bindings;
mod logger;
mod mm;
mod virtio;
mod wait_queue;
mod workqueue;

module! {
    type: BalloonModule,
    name: "virtio_balloon_rs",
    authors: ["virtio-balloon-rs developers"],
    description: "Virtio memory balloon driver (Rust)",
    license: "GPL",
    params: {
        reserve_kb: u64 {
            default: 16384,
            description: "Memory (KiB) the balloon never takes, on top of the kernel's watermark reserves",
        },
        buffer_format: u32 {
            default: 0,
            description: "Inflate/deflate buffers: 0 auto (from the host's identity), 1 compat (256 PFNs, every VMM), 2 full (4096 PFNs, whole 2 MiB blocks; QEMU, crosvm, kvmtool)",
        },
        buffers_in_flight: u32 {
            default: 1,
            description: "Inflate/deflate buffers sent at once (1 to 16), with one notification",
        },
        host_timeout_ms: u32 {
            default: 10000,
            description: "How long to wait for the host to return a buffer before stopping balloon updates",
        },
    },
}

/// The module's debugfs directory; each device's own goes in it.
///
/// Set before the driver is registered and cleared after it is
/// unregistered, as nova-core does until modules get per-module data.
static mut DEBUGFS_ROOT: Option<Dir> = None;

/// The module's debugfs directory, for `probe`.
fn debugfs_root() -> Option<&'static Dir> {
    // SAFETY: `DEBUGFS_ROOT` is written only in `BalloonModule::init`
    // before the driver is registered and in `DebugfsRootGuard::drop` after
    // it is unregistered, so no write overlaps a probe.
    unsafe { (*core::ptr::addr_of!(DEBUGFS_ROOT)).as_ref() }
}

/// Clears [`DEBUGFS_ROOT`] when the module goes away.
struct DebugfsRootGuard;

impl Drop for DebugfsRootGuard {
    fn drop(&mut self) {
        // SAFETY: dropped after `_driver` (field order): the driver is
        // unregistered and no probe runs.
        unsafe { *core::ptr::addr_of_mut!(DEBUGFS_ROOT) = None };
    }
}

#[pin_data]
struct BalloonModule {
    // Dropped in this order: the driver first, then the debugfs root.
    #[pin]
    _driver: Registration<virtio::Adapter<balloon::Balloon>>,
    _debugfs_guard: DebugfsRootGuard,
}

impl InPlaceModule for BalloonModule {
    fn init(module: &'static ThisModule) -> impl PinInit<Self, Error> {
        logger::init();
        // SAFETY: module init runs before the driver is registered: nothing
        // reads `DEBUGFS_ROOT` yet.
        unsafe { *core::ptr::addr_of_mut!(DEBUGFS_ROOT) = Some(Dir::new(c"virtio_balloon_rs")) };
        // The guard first: should registering fail, it clears the root.
        try_pin_init!(Self {
            _debugfs_guard: DebugfsRootGuard,
            _driver <- Registration::new(<Self as kernel::ModuleMetadata>::NAME, module),
        })
    }
}
