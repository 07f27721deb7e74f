// SPDX-License-Identifier: GPL-2.0

//! Finds the files a test VM needs: the guest kernel and the driver modules.
//!
//! Each file comes from its environment variable if it is set, else, for a
//! file of the kernel build (the kernel image, the C driver), from the build tree
//! `VBRS_KDIR` names (`make test-debug` points it at the debug kernel), else
//! from the repository's Makefile (`make -s -C <repo> print-<thing>`), which
//! knows where the set-up script built the test kernel and where Kbuild left
//! our module. A missing file is an error that says how to build it; the
//! tests turn it into a failure, never a skip.

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;

use crate::arch::Arch;
use crate::kernel::KernelConfig;
use crate::repo_top;
use crate::Result;
use anyhow::anyhow;

/// One file the VM needs, with the ways to find and to build it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Artifact {
    /// What the file is, for error messages.
    pub what: &'static str,
    /// The environment variable that overrides the Makefile.
    pub env_var: &'static str,
    /// Where the file is inside a kernel build tree, if it is part of one.
    pub in_kernel_build: Option<InBuild>,
    /// The Makefile target that prints the path.
    pub make_target: &'static str,
    /// The command that builds the file when it is missing.
    pub how_to_build: &'static str,
}

/// Where a file is inside a kernel build tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InBuild {
    /// At this path, on every architecture.
    Path(&'static str),
    /// The kernel image of the tree's architecture ([`Arch::image_in_build`]).
    KernelImage,
}

impl InBuild {
    /// The path inside the build tree `kdir`.
    fn path(self, kdir: &Path) -> Result<&'static str> {
        match self {
            InBuild::Path(path) => Ok(path),
            InBuild::KernelImage => {
                let config = KernelConfig::read(kdir)?;
                let arch = Arch::of_config(&config).ok_or_else(|| {
                    anyhow!("{}/.config is for neither x86_64 nor arm64", kdir.display())
                })?;
                Ok(arch.image_in_build())
            }
        }
    }
}

/// The environment variable naming the kernel build tree to test.
pub const KDIR_ENV: &str = "VBRS_KDIR";

/// The guest kernel: the image of the test kernel build (`bzImage` on
/// x86_64, `Image` on arm64).
pub const KERNEL_IMAGE: Artifact = Artifact {
    what: "guest kernel image",
    env_var: "VBRS_BZIMAGE",
    in_kernel_build: Some(InBuild::KernelImage),
    make_target: "print-bzimage",
    how_to_build: "run `make setup` (arm64: `make arm64-kernel`) to build the test kernel",
};

/// Our driver, `virtio_balloon_rs.ko`.
pub const RS_MODULE: Artifact = Artifact {
    what: "Rust driver module virtio_balloon_rs.ko",
    env_var: "VBRS_MODULE",
    in_kernel_build: None,
    make_target: "print-module",
    how_to_build: "run `make test` (it builds the module first) or `make`",
};

/// The in-tree C driver, `virtio_balloon.ko`, from the test kernel build.
pub const C_MODULE: Artifact = Artifact {
    what: "C reference driver virtio_balloon.ko",
    env_var: "VBRS_C_MODULE",
    in_kernel_build: Some(InBuild::Path("drivers/virtio/virtio_balloon.ko")),
    make_target: "print-c-module",
    how_to_build: "run `make setup` to build the test kernel and its modules",
};

/// The fault tests' QEMU (trixie-backports', with
/// `vhost-user-test-device-pci`), the wrapper `qemu-test/fault-qemu.sh`
/// writes.
pub const FAULT_QEMU: Artifact = Artifact {
    what: "the fault tests' QEMU (qemu-test/fault-qemu.sh)",
    env_var: "VBRS_FAULT_QEMU",
    in_kernel_build: None,
    make_target: "print-fault-qemu",
    how_to_build: "run `make print-fault-qemu` (it fetches and unpacks it)",
};

/// The vhost-user balloon of the fault tests, `balloon-fault-device`.
pub const FAULT_DEVICE: Artifact = Artifact {
    what: "the vhost-user balloon balloon-fault-device (qemu-test/fault-device)",
    env_var: "VBRS_FAULT_DEVICE",
    in_kernel_build: None,
    make_target: "print-fault-device",
    how_to_build: "run `make print-fault-device` (it builds it)",
};

impl Artifact {
    /// Finds the file: from the environment variable, else from the Makefile.
    ///
    /// The path must name an existing file; anything else is an error whose
    /// message names the file and the command that builds it.
    pub fn find(&self) -> Result<PathBuf> {
        let path = match (non_empty_env(self.env_var), kdir(), self.in_kernel_build) {
            (Some(value), _, _) => PathBuf::from(value),
            (None, Some(kdir), Some(inside)) => kdir.join(inside.path(&kdir)?),
            _ => self.ask_make()?,
        };
        if path.is_file() {
            Ok(path)
        } else {
            Err(anyhow!(
                "missing {}: {} does not exist; {} (or set {})",
                self.what,
                path.display(),
                self.how_to_build,
                self.env_var
            ))
        }
    }

    fn ask_make(&self) -> Result<PathBuf> {
        let top = repo_top();
        let output = Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(&top)
            .arg(self.make_target)
            .output()
            .map_err(|e| {
                anyhow!(
                    "missing {}: {} is unset and `make` could not run ({e}); {}",
                    self.what,
                    self.env_var,
                    self.how_to_build
                )
            })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let printed = stdout.lines().map(str::trim).rfind(|l| !l.is_empty());
        match printed {
            Some(line) if output.status.success() => Ok(PathBuf::from(line)),
            _ => Err(anyhow!(
                "missing {}: {} is unset and `make -s -C {} {}` failed ({}: {}); {}",
                self.what,
                self.env_var,
                top.display(),
                self.make_target,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                self.how_to_build
            )),
        }
    }
}

/// The value of an environment variable, unless it is unset or empty.
fn non_empty_env(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|value| !value.is_empty())
}

/// The kernel build tree `VBRS_KDIR` names, if it is set.
fn kdir() -> Option<PathBuf> {
    non_empty_env(KDIR_ENV).map(PathBuf::from)
}

/// The build tree of the guest kernel: `VBRS_KDIR`, else the tree the
/// kernel image sits in (`<build>/arch/x86/boot/bzImage` or
/// `<build>/arch/arm64/boot/Image`), if it has a `.config`; `None` for an
/// image outside a build tree.
pub fn kernel_build() -> Result<Option<PathBuf>> {
    if let Some(kdir) = kdir() {
        return if kdir.join(".config").is_file() {
            Ok(Some(kdir))
        } else {
            Err(anyhow!(
                "{KDIR_ENV}={} is not a kernel build tree (no .config)",
                kdir.display()
            ))
        };
    }
    let image = kernel_image()?;
    Ok([Arch::X86_64, Arch::Arm64].iter().find_map(|arch| {
        let inside = arch.image_in_build();
        let depth = Path::new(inside).components().count();
        image
            .ancestors()
            .nth(depth)
            .filter(|build| build.join(inside) == image && build.join(".config").is_file())
            .map(Path::to_path_buf)
    }))
}

/// Path of the guest kernel, see [`KERNEL_IMAGE`].
pub fn kernel_image() -> Result<PathBuf> {
    KERNEL_IMAGE.find()
}

/// Path of our driver module, see [`RS_MODULE`].
pub fn rs_module() -> Result<PathBuf> {
    RS_MODULE.find()
}

/// Path of the in-tree C driver module, see [`C_MODULE`].
pub fn c_module() -> Result<PathBuf> {
    C_MODULE.find()
}
