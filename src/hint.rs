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
///
/// `received` is the id as [`ReceivedCmdId`] keeps it, never a fresh read
/// of the config space (see there why).
pub fn round_continues(received: u32, active: u32) -> bool {
    received == active && received != CMD_ID_STOP && received != CMD_ID_DONE
}

/// The command id the host last wrote, as the driver keeps it between
/// config change interrupts.
///
/// QEMU shows a new id in its config space only while it waits for the
/// guest's start id; once it has taken the start id, the field reads
/// `CMD_ID_STOP` (0) until the host stops the round (which it then
/// announces with a config change). A driver that read the field again
/// during the round would stop as soon as the host started listening,
/// after a block or a few. So the field is read only after the device
/// signalled a config change, as the C driver's
/// `virtio_balloon_cmd_id_received` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedCmdId(u32);

impl ReceivedCmdId {
    /// Nothing received yet.
    pub const fn new() -> Self {
        Self(CMD_ID_STOP)
    }

    /// The id to act on: `read()` from the config space when the device
    /// signalled a config change since the last read (`changed`), else the
    /// id kept. A failed read counts as `CMD_ID_STOP`.
    pub fn get(&mut self, changed: bool, read: impl FnOnce() -> Option<u32>) -> u32 {
        if changed {
            self.0 = read().unwrap_or(CMD_ID_STOP);
        }
        self.0
    }
}

impl Default for ReceivedCmdId {
    fn default() -> Self {
        Self::new()
    }
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
