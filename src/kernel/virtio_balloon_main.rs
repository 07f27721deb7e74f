// SPDX-License-Identifier: GPL-2.0

//! virtio-balloon-rs: a virtio memory balloon driver in Rust.
//!
//! The module root: module metadata and parameters, and registration of the
//! driver with the virtio bus. The driver is in [`balloon`], the layers it
//! stands on in [`virtio`] and [`mm`], the policy in the `balloon_logic`
//! crate.

use kernel::prelude::*;

mod balloon;
mod bindings;
mod logger;
mod mm;
mod virtio;

module! {
    type: BalloonModule,
    name: "virtio_balloon_rs",
    authors: ["virtio-balloon-rs developers"],
    description: "Virtio memory balloon driver (Rust)",
    license: "GPL",
    alias: ["virtio:d00000005v*"],
    params: {
        reserve_kb: u64 {
            default: 16384,
            description: "Memory (KiB) the balloon never takes, on top of the kernel's watermark reserves",
        },
        host_timeout_ms: u32 {
            default: 10000,
            description: "How long to wait for the host to return a buffer before stopping balloon updates",
        },
    },
}

struct BalloonModule {
    _registration: Pin<KBox<virtio::Registration<balloon::Balloon>>>,
}

impl kernel::Module for BalloonModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        logger::init();
        let debugfs = kernel::debugfs::Dir::new(c"virtio_balloon_rs");
        let registration = KBox::pin_init(virtio::Registration::new(module, debugfs), GFP_KERNEL)?;
        Ok(Self {
            _registration: registration,
        })
    }
}
