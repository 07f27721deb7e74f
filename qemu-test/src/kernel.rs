// SPDX-License-Identifier: GPL-2.0

//! What the guest kernel was built with, and how much slower that makes it.
//!
//! The harness reads the `.config` of the kernel build it boots (see
//! [`crate::artifacts::kernel_build`]): a debug kernel (KASAN, lockdep,
//! kmemleak) runs several times slower under TCG, so every timeout the
//! harness and the tests use goes through [`scaled`]; with kmemleak the
//! harness also scans for leaks when it checks the kernel log.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use crate::arch::Arch;
use crate::artifacts;
use crate::Result;
use anyhow::anyhow;
use anyhow::bail;
use anyhow::Context;

/// How much longer than on the test kernel things may take on a debug
/// kernel (KASAN, lockdep or kmemleak) unless `VBRS_TIME_FACTOR` says.
pub const DEBUG_TIME_FACTOR: u32 = 10;

/// The options of a kernel build's `.config`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelConfig {
    /// `CONFIG_` name (without the prefix) to value, for the options set.
    options: BTreeMap<String, String>,
}

impl KernelConfig {
    /// Parses `.config` text: `CONFIG_NAME=value` lines; the rest is ignored.
    pub fn parse(text: &str) -> Self {
        let options = text
            .lines()
            .filter_map(|line| line.strip_prefix("CONFIG_")?.split_once('='))
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        Self { options }
    }

    /// Reads `<build>/.config`.
    pub fn read(build: &Path) -> Result<Self> {
        let path = build.join(".config");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(Self::parse(&text))
    }

    /// Whether `CONFIG_<name>=y`.
    pub fn enabled(&self, name: &str) -> bool {
        self.options.get(name).map(String::as_str) == Some("y")
    }

    /// Whether this is a debug kernel: KASAN, lockdep or kmemleak.
    pub fn is_debug(&self) -> bool {
        ["KASAN", "PROVE_LOCKING", "DEBUG_KMEMLEAK"]
            .iter()
            .any(|name| self.enabled(name))
    }

    /// The kernel's page size in bytes: arm64's 16 or 64 KiB options, else
    /// 4 KiB (x86_64, and a kernel whose `.config` is not at hand).
    pub fn page_size(&self) -> u64 {
        if self.enabled("ARM64_64K_PAGES") {
            64 * 1024
        } else if self.enabled("ARM64_16K_PAGES") {
            16 * 1024
        } else {
            4096
        }
    }

    /// Whether kmemleak is built in (the harness then scans for leaks).
    pub fn has_kmemleak(&self) -> bool {
        self.enabled("DEBUG_KMEMLEAK")
    }

    /// Whether `fail_page_alloc` can be driven from debugfs with a stack
    /// filter.
    pub fn has_fail_page_alloc(&self) -> bool {
        [
            "FAIL_PAGE_ALLOC",
            "FAULT_INJECTION_DEBUG_FS",
            "FAULT_INJECTION_STACKTRACE_FILTER",
        ]
        .iter()
        .all(|name| self.enabled(name))
    }
}

/// What the harness knows of the kernel it boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestKernel {
    /// Its build's `.config`; empty when the bzImage has no build tree
    /// around it (a kernel given by `VBRS_BZIMAGE` alone).
    pub config: KernelConfig,
    /// Factor applied to every timeout, see [`scaled`].
    pub time_factor: u32,
    /// Its architecture: `VBRS_ARCH`, else its `.config`'s, else x86_64.
    pub arch: Arch,
}

impl GuestKernel {
    fn detect() -> Result<Self> {
        let config = match artifacts::kernel_build()? {
            Some(build) => KernelConfig::read(&build)?,
            None => KernelConfig::default(),
        };
        let time_factor = match std::env::var("VBRS_TIME_FACTOR") {
            Ok(value) if !value.is_empty() => match value.parse::<u32>() {
                Ok(factor) if factor >= 1 => factor,
                _ => {
                    bail!("VBRS_TIME_FACTOR={value}: expected a whole number >= 1")
                }
            },
            _ if config.is_debug() => DEBUG_TIME_FACTOR,
            _ => 1,
        };
        let arch = match Arch::from_env()? {
            Some(arch) => arch,
            None => Arch::of_config(&config).unwrap_or_default(),
        };
        Ok(Self {
            config,
            time_factor,
            arch,
        })
    }
}

/// The kernel the VMs of this process boot, found once.
pub fn guest_kernel() -> Result<&'static GuestKernel> {
    // An error is kept as its message: `anyhow::Error` is not `Clone`.
    static KERNEL: OnceLock<std::result::Result<GuestKernel, String>> = OnceLock::new();
    KERNEL
        .get_or_init(|| GuestKernel::detect().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|message| anyhow!("{message}"))
}

/// A timeout for the guest kernel under test: `timeout` times its
/// [`GuestKernel::time_factor`] (1 when the kernel cannot be found: booting
/// it then fails with the reason).
pub fn scaled(timeout: Duration) -> Duration {
    let factor = guest_kernel().map(|k| k.time_factor).unwrap_or(1);
    timeout * factor
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lines_parse() {
        let config = KernelConfig::parse(
            "# comment\nCONFIG_KASAN=y\n# CONFIG_PROVE_LOCKING is not set\nCONFIG_VIRTIO_BALLOON=m\nCONFIG_CLANG_VERSION=190107\n",
        );
        assert!(config.enabled("KASAN"));
        assert!(!config.enabled("PROVE_LOCKING"));
        assert!(!config.enabled("VIRTIO_BALLOON"));
        assert!(config.is_debug());
        assert!(!config.has_kmemleak());
        assert!(!KernelConfig::parse("CONFIG_RUST=y\n").is_debug());
        assert_eq!(config.page_size(), 4096);
        assert_eq!(
            KernelConfig::parse("CONFIG_ARM64_16K_PAGES=y\n").page_size(),
            16384
        );
        assert_eq!(
            KernelConfig::parse("CONFIG_ARM64_64K_PAGES=y\n").page_size(),
            65536
        );
    }
}
