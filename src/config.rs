// SPDX-License-Identifier: GPL-2.0

//! Layout of the balloon device's configuration space (virtio spec 5.5.4).
//!
//! The balloon config space is little-endian even on legacy devices.

/// Offset of `num_pages`: the number of 4 KiB pages the host wants in the balloon.
pub const NUM_PAGES: usize = 0;
/// Offset of `actual`: the number of 4 KiB pages the guest has in the balloon.
pub const ACTUAL: usize = 4;
/// Offset of `free_page_hint_cmd_id` (with `FREE_PAGE_HINT`).
pub const FREE_PAGE_HINT_CMD_ID: usize = 8;
/// Offset of `poison_val` (with `PAGE_POISON`).
pub const POISON_VAL: usize = 12;
/// Size of the config space this driver knows.
pub const SIZE: usize = 16;
