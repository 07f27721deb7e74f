// SPDX-License-Identifier: GPL-2.0

//! The balloon's config space (`struct virtio_balloon_config`, virtio spec
//! 5.5.4): every field is little-endian, on legacy devices too.

use balloon_logic::config;
use balloon_logic::features::Features;

use crate::virtio::config::{
    ConfigField,
    Le, //
};

/// `num_pages`: the host's target, in 4 KiB pages.
pub(super) struct NumPages;
// SAFETY: offset 0 of `struct virtio_balloon_config`, a `__le32` present on
// every balloon device.
unsafe impl ConfigField for NumPages {
    const OFFSET: u32 = config::NUM_PAGES as u32;
    const NEEDS: u64 = 0;
    type Value = Le<u32>;
}

/// `actual`: what the guest has ballooned, in 4 KiB pages.
pub(super) struct Actual;
// SAFETY: offset 4, a `__le32` present on every balloon device.
unsafe impl ConfigField for Actual {
    const OFFSET: u32 = config::ACTUAL as u32;
    const NEEDS: u64 = 0;
    type Value = Le<u32>;
}

/// `free_page_hint_cmd_id`.
pub(super) struct FreePageHintCmdId;
// SAFETY: offset 8, a `__le32` present with `FREE_PAGE_HINT` (or
// `PAGE_POISON`, which comes after it).
unsafe impl ConfigField for FreePageHintCmdId {
    const OFFSET: u32 = config::FREE_PAGE_HINT_CMD_ID as u32;
    const NEEDS: u64 = Features::FREE_PAGE_HINT.bits();
    type Value = Le<u32>;
}

/// `poison_val`.
pub(super) struct PoisonVal;
// SAFETY: offset 12, a `__le32` present with `PAGE_POISON`.
unsafe impl ConfigField for PoisonVal {
    const OFFSET: u32 = config::POISON_VAL as u32;
    const NEEDS: u64 = Features::PAGE_POISON.bits();
    type Value = Le<u32>;
}
