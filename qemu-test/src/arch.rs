// SPDX-License-Identifier: GPL-2.0

//! The guest's architecture: what a test VM of x86_64 or arm64 is made of
//! (QEMU binary, serial ports, kernel image, static guest binaries).
//!
//! A VM's architecture is that of the kernel it boots, read from the
//! kernel build's `.config` (`CONFIG_ARM64=y`), unless `VBRS_ARCH` says
//! (for a kernel without its build tree). Everything else follows from it,
//! so one harness and one set of tests run on both.

use std::path::PathBuf;

use anyhow::bail;

use crate::kernel::KernelConfig;
use crate::Result;

/// The environment variable that names the guest architecture.
pub const ARCH_ENV: &str = "VBRS_ARCH";

/// A guest architecture the harness boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arch {
    /// x86_64: q35 or microvm, 8250 UARTs, `bzImage`.
    #[default]
    X86_64,
    /// arm64: QEMU's virt machine, PL011 UARTs, `Image`.
    Arm64,
}

impl Arch {
    /// Parses `x86_64` or `arm64` (also `aarch64`).
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "x86_64" => Ok(Arch::X86_64),
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            other => bail!("{ARCH_ENV}={other}: expected x86_64 or arm64"),
        }
    }

    /// The architecture a kernel was built for, from its `.config`.
    pub fn of_config(config: &KernelConfig) -> Option<Self> {
        if config.enabled("ARM64") {
            Some(Arch::Arm64)
        } else if config.enabled("X86_64") {
            Some(Arch::X86_64)
        } else {
            None
        }
    }

    /// `VBRS_ARCH`, if set.
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var(ARCH_ENV) {
            Ok(name) if !name.is_empty() => Self::parse(&name).map(Some),
            _ => Ok(None),
        }
    }

    /// The kernel's name for it (`ARCH=`, `uname -m` differs).
    pub fn kernel_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The QEMU system emulator, unless `VBRS_QEMU` names another.
    pub fn qemu_binary(self) -> String {
        let default = match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Arm64 => "qemu-system-aarch64",
        };
        std::env::var("VBRS_QEMU")
            .ok()
            .filter(|qemu| !qemu.is_empty())
            .unwrap_or_else(|| default.to_string())
    }

    /// The CPU model under TCG.
    ///
    /// x86_64: `max` without 5-level paging. `max` offers LA57, and a KASAN
    /// kernel on 5-level paging reports a wild memory access when an
    /// interrupt lands while `identify_boot_cpu` has cleared the boot CPU's
    /// feature bits: `KASAN_SHADOW_START` follows `pgtable_l5_enabled()`,
    /// which reads the LA57 bit, so for that moment every direct-map
    /// address (`ff11…`) looks wild. It is the kernel's race, not the
    /// driver's, and it failed a debug boot now and then.
    ///
    /// arm64: `max` (a cortex-a72 cannot run a 16 KiB page kernel), with
    /// QEMU's cheap pointer-authentication algorithm instead of QARMA, whose
    /// emulation is slow.
    pub fn tcg_cpu(self) -> &'static str {
        match self {
            Arch::X86_64 => "max,la57=off",
            Arch::Arm64 => "max,pauth-impdef=on",
        }
    }

    /// The kernel console's serial port.
    pub fn console_tty(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Arm64 => "ttyAMA0",
        }
    }

    /// The test shell's serial port, as a guest path.
    pub fn shell_tty(self) -> &'static str {
        match self {
            Arch::X86_64 => "/dev/ttyS1",
            Arch::Arm64 => "/dev/ttyAMA1",
        }
    }

    /// Where the kernel image is inside a kernel build tree.
    pub fn image_in_build(self) -> &'static str {
        match self {
            Arch::X86_64 => "arch/x86/boot/bzImage",
            Arch::Arm64 => "arch/arm64/boot/Image",
        }
    }

    /// The static busybox of this architecture: the host's (Debian
    /// `busybox-static`) on x86_64; on arm64 Debian's arm64 one, which
    /// `make arm64-kernel` unpacks into the cache. `VBRS_BUSYBOX` overrides.
    pub fn busybox(self) -> PathBuf {
        if let Some(path) = std::env::var_os("VBRS_BUSYBOX").filter(|p| !p.is_empty()) {
            return PathBuf::from(path);
        }
        match self {
            Arch::X86_64 => PathBuf::from("/bin/busybox"),
            Arch::Arm64 => cache_dir().join("busybox-arm64/bin/busybox"),
        }
    }

    /// The C compiler of the static guest helpers.
    pub fn static_cc(self) -> &'static str {
        match self {
            Arch::X86_64 => "gcc",
            Arch::Arm64 => "aarch64-linux-gnu-gcc",
        }
    }
}

/// The project's cache directory (`VBRS_CACHE`, else
/// `~/.cache/virtio-balloon-rs`), where the set-up script keeps its builds.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VBRS_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/virtio-balloon-rs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_architecture_is_read_from_the_kernel_config() {
        let arm = KernelConfig::parse("CONFIG_ARM64=y\nCONFIG_64BIT=y\n");
        let x86 = KernelConfig::parse("CONFIG_X86_64=y\nCONFIG_64BIT=y\n");
        assert_eq!(Arch::of_config(&arm), Some(Arch::Arm64));
        assert_eq!(Arch::of_config(&x86), Some(Arch::X86_64));
        assert_eq!(Arch::of_config(&KernelConfig::default()), None);
        assert_eq!(Arch::parse("aarch64").ok(), Some(Arch::Arm64));
        assert!(Arch::parse("riscv64").is_err());
        assert_eq!(Arch::Arm64.shell_tty(), "/dev/ttyAMA1");
        assert!(Arch::Arm64.image_in_build().ends_with("/Image"));
    }
}
