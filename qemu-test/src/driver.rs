// SPDX-License-Identifier: GPL-2.0

//! The two balloon drivers a test VM can carry and load: ours and the
//! in-tree C driver it is measured against.

use crate::initramfs::C_MODULE_PATH;
use crate::initramfs::RS_MODULE_PATH;

/// Which balloon driver a VM carries or loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// The in-tree C driver, `virtio_balloon.ko`.
    C,
    /// Our driver, `virtio_balloon_rs.ko`.
    Rs,
}

impl Driver {
    /// The module name as `lsmod` and `rmmod` know it.
    pub fn module_name(self) -> &'static str {
        match self {
            Driver::C => "virtio_balloon",
            Driver::Rs => "virtio_balloon_rs",
        }
    }

    /// Where the module is in the guest's initramfs.
    pub fn guest_path(self) -> &'static str {
        match self {
            Driver::C => C_MODULE_PATH,
            Driver::Rs => RS_MODULE_PATH,
        }
    }

    /// A short name for tables and log directories: `c` or `rs`.
    pub fn label(self) -> &'static str {
        match self {
            Driver::C => "c",
            Driver::Rs => "rs",
        }
    }
}
