// SPDX-License-Identifier: GPL-2.0

//! Typed access to a device's config space: each field is a type that says
//! where it is and which feature makes it exist, so that no caller can
//! read or write past the config space (the modern PCI transport `BUG()`s
//! on that, the legacy and MMIO ones read other registers).

use balloon_logic::config;
use balloon_logic::features::Features;

/// A little-endian 32-bit field of a device type's config space.
///
/// # Safety
///
/// On every device of the type, bytes `OFFSET..OFFSET + 4` of the config
/// space exist whenever the features in `NEEDS` are negotiated.
pub(crate) unsafe trait ConfigField {
    /// Byte offset in the config space.
    const OFFSET: u32;
    /// Feature bits that make the field exist (empty: always there).
    const NEEDS: u64;
}

/// The balloon's `num_pages`: the host's target, in 4 KiB pages.
pub(crate) struct NumPages;
// SAFETY: offset 0 of `struct virtio_balloon_config`, present on every
// balloon device (virtio spec 5.5.4).
unsafe impl ConfigField for NumPages {
    const OFFSET: u32 = config::NUM_PAGES as u32;
    const NEEDS: u64 = 0;
}

/// The balloon's `actual`: what the guest has ballooned, in 4 KiB pages.
pub(crate) struct Actual;
// SAFETY: offset 4 of `struct virtio_balloon_config`, present on every
// balloon device.
unsafe impl ConfigField for Actual {
    const OFFSET: u32 = config::ACTUAL as u32;
    const NEEDS: u64 = 0;
}

/// The balloon's `free_page_hint_cmd_id`.
pub(crate) struct FreePageHintCmdId;
// SAFETY: offset 8, present with `FREE_PAGE_HINT` (or `PAGE_POISON`, which
// comes after it).
unsafe impl ConfigField for FreePageHintCmdId {
    const OFFSET: u32 = config::FREE_PAGE_HINT_CMD_ID as u32;
    const NEEDS: u64 = Features::FREE_PAGE_HINT.bits();
}

/// The balloon's `poison_val`.
pub(crate) struct PoisonVal;
// SAFETY: offset 12, present with `PAGE_POISON`.
unsafe impl ConfigField for PoisonVal {
    const OFFSET: u32 = config::POISON_VAL as u32;
    const NEEDS: u64 = Features::PAGE_POISON.bits();
}
