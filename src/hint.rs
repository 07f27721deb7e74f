// SPDX-License-Identifier: GPL-2.0

//! The free page hinting protocol (`VIRTIO_BALLOON_F_FREE_PAGE_HINT`).
//!
//! During a live migration the host writes a command id into the config
//! space; the guest answers with that id, a run of free page blocks the
//! host need not migrate, and the stop id. The host then says "done" and
//! the guest takes the blocks back. The blocks may be reused at any time
//! before that (the hints are advisory), so a shrinker returns them early
//! under memory pressure.

/// Command id: stop hinting.
pub const CMD_ID_STOP: u32 = 0;
/// Command id: the host is done with the hints; take the blocks back.
pub const CMD_ID_DONE: u32 = 1;

/// What a command id read from the config space asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintAction {
    /// Give every hinted block back to the guest.
    ReturnAll,
    /// Start a new hinting round under this command id.
    Start(u32),
    /// Nothing new.
    Nothing,
}

/// Interprets `received` (the config's `free_page_hint_cmd_id`) given the
/// id of the round the driver last started.
pub fn on_cmd_id(received: u32, active: u32) -> HintAction {
    match received {
        CMD_ID_DONE => HintAction::ReturnAll,
        CMD_ID_STOP => HintAction::Nothing,
        id if id == active => HintAction::Nothing,
        id => HintAction::Start(id),
    }
}

/// Whether a running round goes on: the host has not moved to another id.
pub fn round_continues(received: u32, active: u32) -> bool {
    received == active && received != CMD_ID_STOP && received != CMD_ID_DONE
}

/// A command id as the device reads it from a buffer (`cpu_to_virtio32`):
/// little-endian for a 1.0 device, the guest's own order for a legacy one.
pub fn cmd_id_to_device(id: u32, little_endian: bool) -> u32 {
    if little_endian {
        id.to_le()
    } else {
        id
    }
}
