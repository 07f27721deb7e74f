// SPDX-License-Identifier: GPL-2.0

//! VM test bench for the virtio-balloon-rs guest driver.
//!
//! The crate boots a small guest under QEMU (a Rust-built initramfs with a
//! static busybox, the driver modules and a memory hog), drives the shell on a
//! serial port, talks QMP to the balloon device and checks the kernel log.
//! [`Vm`] is the entry point; [`artifacts`] finds the kernel and modules.

pub mod arch;
pub mod artifacts;
pub mod config;
pub mod console;
pub mod driver;
pub mod fault_device;
pub mod hostmem;
pub mod initramfs;
pub mod kernel;
pub mod libvirt;
pub mod migration;
pub mod ports;
pub mod qemu;
pub mod qmp;
pub mod scatter;
pub mod serial;
pub mod shell;
pub mod shell_command;

pub use arch::Arch;
pub use config::Machine;
pub use config::VmConfig;
pub use console::check_clean_console;
pub use driver::Driver;
pub use fault_device::FaultDevice;
pub use fault_device::FaultOptions;
pub use fault_device::FaultVm;
pub use kernel::scaled;
pub use qemu::Vm;
pub use qmp::Qmp;
pub use shell::GuestShell;

/// Result type of the VM bench: every error is an [`anyhow::Error`] whose
/// message (with its context, `{:#}`) says what went wrong and where to look.
pub use anyhow::Result;

/// One mebibyte in bytes.
pub const MIB: u64 = 1024 * 1024;

/// The top of the repository: the parent of this crate's directory.
pub fn repo_top() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// The cargo target directory (`CARGO_TARGET_DIR` or `<repo>/target`).
pub fn target_dir() -> std::path::PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = std::path::PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                repo_top().join(dir)
            }
        }
        None => repo_top().join("target"),
    }
}
