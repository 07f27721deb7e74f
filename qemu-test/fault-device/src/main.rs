// SPDX-License-Identifier: GPL-2.0

//! `balloon-fault-device`: a virtio balloon (device id 5) served over
//! vhost-user to QEMU's `vhost-user-test-device-pci`, that behaves as
//! QEMU's own balloon or misbehaves on command, so that the guest driver's
//! failure paths meet a slow, dead or broken host in a real VM.
//!
//! QEMU side (guest RAM must be shared with the device):
//! ```text
//! -object memory-backend-memfd,id=mem,size=2G,share=on -machine q35,memory-backend=mem
//! -chardev socket,id=vu,path=<socket>
//! -device vhost-user-test-device-pci,chardev=vu,virtio-id=5,num_vqs=5,config_size=16
//! ```

mod backend_channel;
mod balloon;
mod control;
mod faults;
mod host_memory;

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::thread;

use anyhow::bail;
use anyhow::Context;
use anyhow::Result;
use clap::Parser;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::GuestMemoryAtomic;
use vm_memory::GuestMemoryMmap;

use crate::balloon::Balloon;
use crate::faults::Fault;

/// The balloon features by name, as `--features` takes them.
const FEATURE_NAMES: [(&str, u64); 6] = [
    ("must-tell-host", 0),
    ("stats", balloon::F_STATS_VQ),
    ("deflate-on-oom", balloon::F_DEFLATE_ON_OOM),
    ("free-page-hint", balloon::F_FREE_PAGE_HINT),
    ("page-poison", balloon::F_PAGE_POISON),
    ("reporting", balloon::F_REPORTING),
];

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A vhost-user virtio balloon that behaves as QEMU's or misbehaves on command",
    after_help = format!("{}\n\n{}", faults::FAULT_HELP, control::COMMANDS_HELP)
)]
struct Options {
    /// The vhost-user socket to listen on (QEMU connects: -chardev socket,path=...).
    #[arg(long)]
    socket: PathBuf,
    /// The control socket to listen on (see the commands below).
    #[arg(long)]
    control: PathBuf,
    /// Balloon features offered, comma separated: must-tell-host, stats,
    /// deflate-on-oom, free-page-hint, page-poison, reporting (QEMU's default
    /// device: stats,page-poison). VIRTIO_F_VERSION_1 is always offered.
    #[arg(long, default_value = "stats,page-poison")]
    features: String,
    /// A fault, QUEUE:KIND[=VALUE][@COUNT] (repeatable; see below).
    #[arg(long = "fault")]
    faults: Vec<Fault>,
}

/// The feature bits of a `--features` list.
fn parse_features(list: &str) -> Result<u64> {
    let mut bits = 0;
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some((_, bit)) = FEATURE_NAMES.iter().find(|(n, _)| *n == name) else {
            bail!("unknown feature {name:?}");
        };
        bits |= 1 << bit;
    }
    Ok(bits)
}

fn main() -> Result<()> {
    let options = Options::parse();
    let features = parse_features(&options.features)?;
    let balloon = Balloon::new(features, &options.faults);

    let _ = std::fs::remove_file(&options.control);
    let control = UnixListener::bind(&options.control)
        .with_context(|| format!("binding the control socket {}", options.control.display()))?;
    let control_balloon = balloon.clone();
    thread::spawn(move || control::serve(control, control_balloon));

    eprintln!(
        "fault-device: listening on {} (control {}), features {:#x}, faults {:?}",
        options.socket.display(),
        options.control.display(),
        features,
        options.faults
    );
    // One VM at a time, but a VM may come again (the harness retries a
    // boot that failed before any driver ran): a daemon per connection,
    // as a daemon's worker threads end with its connection; the device's
    // state carries over.
    loop {
        let mut daemon = VhostUserDaemon::new(
            "balloon-fault-device".to_string(),
            balloon.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| anyhow::anyhow!("vhost-user daemon: {e:?}"))?;
        daemon
            .serve(&options.socket)
            .map_err(|e| anyhow::anyhow!("vhost-user connection: {e:?}"))?;
        eprintln!("fault-device: QEMU disconnected");
    }
}
