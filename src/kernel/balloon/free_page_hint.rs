// SPDX-License-Identifier: GPL-2.0

//! Free page hinting: blocks of free pages the host may skip while it
//! migrates the guest, held until the host is done or memory is short.

use balloon_logic::hint::{
    self,
    HintAction,
    ReceivedCmdId, //
};
use kernel::device::Bound;
use kernel::prelude::*;
use kernel::sync::atomic::{
    Acquire,
    Relaxed,
    Release, //
};
use kernel::time::{
    Instant,
    Monotonic, //
};

use super::Balloon;
use crate::mm::{
    Pages,
    PageList,
    ShrinkerHandler,
    HINT_BLOCK_ORDER, //
};
use super::config::FreePageHintCmdId;
use crate::virtio::{
    Device,
    Readable,
    Virtqueue, //
};

/// What rides on a hint queue buffer: a command id the device reads, or
/// nothing, for a hinted block (the device learns its address from the
/// descriptor and hands the buffer back unwritten).
pub(super) struct HintToken {
    cmd_id: Option<[u8; 4]>,
}

impl HintToken {
    /// A command id, in the device's byte order.
    fn cmd_id(id: u32) -> Result<KBox<Self>> {
        Ok(KBox::new(
            Self {
                cmd_id: Some(id.to_ne_bytes()),
            },
            GFP_KERNEL,
        )?)
    }

    /// A hinted block's.
    fn block() -> Result<KBox<Self>> {
        Ok(KBox::new(Self { cmd_id: None }, GFP_KERNEL | __GFP_NOWARN)?)
    }
}

impl Readable for HintToken {
    fn bytes(&self) -> &[u8] {
        self.cmd_id.as_ref().map_or(&[], |id| id.as_slice())
    }
}

/// The hint queue's type.
pub(super) type HintQueue = Virtqueue<KBox<HintToken>>;

/// Takes back every buffer the device has used on the hint queue.
fn drain_used(queue: &mut HintQueue) {
    while queue.get_buf().is_some() {}
}

/// Adds the start or stop id `id` (the device's byte order) to the queue.
fn send_cmd_id(queue: &mut HintQueue, id: u32) -> Result {
    queue
        .add_outbuf(HintToken::cmd_id(id)?)
        .map_err(|(err, _)| err)?;
    queue.kick();
    Ok(())
}

/// Free page hinting: the queue and the round's command ids; the blocks
/// hinted so far are in [`HintBlocks`].
pub(super) struct HintState {
    pub(super) queue: Option<HintQueue>,
    /// Id of the round last started (the guest's byte order).
    pub(super) active: u32,
    /// The command id as last read from the config space.
    received: ReceivedCmdId,
    /// Hint queue errors so far: logged at 1, 2, 4, 8, ... so that a host
    /// starting rounds in a storm cannot flood the log.
    errors: u64,
}

/// The blocks hinted so far, under a lock of their own (a spinlock, held
/// only to add or free blocks) so that the shrinker can always free them,
/// also while a round holds the hint state and waits for the host.
pub(super) type HintBlocks = PageList<HINT_BLOCK_ORDER>;

impl HintState {
    pub(super) fn new() -> Self {
        Self {
            queue: None,
            active: hint::CMD_ID_STOP,
            received: ReceivedCmdId::new(),
            errors: 0,
        }
    }
}

impl Balloon {
    /// The device's config changed (interrupt context): the hint work reads
    /// the command id again.
    pub(super) fn hint_config_changed(&self) {
        self.hint_config_changed.store(true, Release);
    }

    /// The command id to act on ([`ReceivedCmdId`]): read from the config
    /// space when `fresh` or after a config change, else the one kept.
    fn cmd_id_received(&self, dev: &Device<Bound>, kept: &mut ReceivedCmdId, fresh: bool) -> u32 {
        let changed = self.hint_config_changed.xchg(false, Acquire);
        kept.get(changed || fresh, || dev.read_config::<FreePageHintCmdId>())
    }

    /// The hint work: the host wrote a command id; start a round, or take
    /// the hinted blocks back when it is done.
    pub(super) fn free_page_hint(&self) {
        if self.stopped() {
            return;
        }
        let dev = self.device();
        let mut guard = self.hint.lock();
        let HintState {
            queue,
            active,
            received,
            errors,
        } = &mut *guard;
        let mut failed = |what: &str, err: Error| {
            *errors += 1;
            if errors.is_power_of_two() {
                dev_err!(dev, "{} ({:?}; {} hint queue errors so far)\n", what, err, *errors);
            }
        };
        let Some(queue) = queue.as_mut() else { return };
        let little_endian = self.features.little_endian();
        // The work runs after a config change: read the id afresh.
        match hint::on_cmd_id(self.cmd_id_received(dev, received, true), *active) {
            HintAction::Nothing => {}
            HintAction::ReturnAll => {
                let held = self.hint_blocks.lock().as_mut().release(usize::MAX);
                self.view.hint_blocks_held.store(0, Relaxed);
                if held > 0 {
                    dev_dbg!(dev, "free page hints done: {} blocks back\n", held);
                }
            }
            HintAction::Start(id) => {
                self.view.hint_rounds.fetch_add(1, Relaxed);
                drain_used(queue);
                *active = id;
                let start = hint::cmd_id_to_device(id, little_endian);
                if let Err(err) = send_cmd_id(queue, start) {
                    failed("cannot send the hint start id", err);
                    return;
                }
                let round = self.send_hints(dev, queue, received, id);
                if let Some(err) = round.queue_error {
                    failed("cannot hint a free block", err);
                }
                drain_used(queue);
                let stop = hint::cmd_id_to_device(hint::CMD_ID_STOP, little_endian);
                if let Err(err) = send_cmd_id(queue, stop) {
                    failed("cannot send the hint stop id", err);
                }
                dev_dbg!(
                    dev,
                    "free page hint round {}: {} blocks in {} us (first after {} us), {} waits for a full ring, ended by {}\n",
                    id,
                    round.blocks,
                    round.elapsed_us,
                    round.first_hint_us,
                    round.ring_full_waits,
                    round.end
                );
            }
        }
    }

    /// Hints free blocks until the guest has none left or the host moves
    /// to another command id (which it announces with a config change).
    pub(super) fn send_hints(
        &self,
        dev: &Device<Bound>,
        queue: &mut HintQueue,
        received: &mut ReceivedCmdId,
        id: u32,
    ) -> RoundStats {
        let started = Instant::<Monotonic>::now();
        let mut round = RoundStats {
            blocks: 0,
            ring_full_waits: 0,
            first_hint_us: -1,
            elapsed_us: 0,
            end: "the host",
            queue_error: None,
        };
        let poll = kernel::time::msecs_to_jiffies(10);

        while hint::round_continues(self.cmd_id_received(dev, received, false), id) {
            if self.stopped() {
                round.end = "unbind";
                break;
            }
            drain_used(queue);
            // One descriptor stays free for the stop id.
            if queue.num_free() <= 1 {
                round.ring_full_waits += 1;
                drop(queue.wait_buf(&self.acked, poll));
                continue;
            }
            let Some(block) = Pages::<HINT_BLOCK_ORDER>::alloc_free_block() else {
                round.end = "no free block";
                break;
            };
            let token = match HintToken::block() {
                Ok(token) => token,
                Err(_) => {
                    round.end = "no memory for a hint";
                    break;
                }
            };
            // SAFETY: a free page hint is device-writable only because the
            // protocol says hints are: the device notes the block's
            // address (it will not migrate those pages) and hands the
            // buffer back unwritten (QEMU's `get_free_page_hints` pushes it
            // with length 0), so the guest may reuse the block at any time,
            // as the C driver's shrinker does. The buffer's life is not
            // tied to the block's on purpose: a host that stops consuming
            // the queue must not pin the blocks on its ring.
            if let Err((err, _)) = unsafe { queue.add_inbuf_block(&block, token) } {
                round.queue_error = Some(err);
                round.end = "the queue";
                break;
            }
            queue.kick();
            let held = {
                let mut blocks = self.hint_blocks.lock();
                blocks.as_mut().push(block);
                blocks.len()
            };
            if round.blocks == 0 {
                round.first_hint_us = started.elapsed().as_micros_ceil();
            }
            round.blocks += 1;
            self.view.hinted_blocks.fetch_add(1, Relaxed);
            self.view.hint_blocks_held.store(held as u64, Relaxed);
        }
        round.elapsed_us = started.elapsed().as_micros_ceil();
        round
    }
}

/// What one hint round did, for the debug log.
pub(super) struct RoundStats {
    /// Blocks hinted.
    blocks: u64,
    /// Times the ring was full and the round waited for the host.
    ring_full_waits: u64,
    /// From the start id to the first hint (-1: none).
    first_hint_us: i64,
    /// From the start id to the end of the round.
    elapsed_us: i64,
    /// What ended the round.
    end: &'static str,
    /// Why the queue refused a hint, if it did.
    queue_error: Option<Error>,
}

/// Memory pressure: hinted blocks go back early (hints are advisory).
///
/// A round in progress holds the hint state, also while it waits for a
/// host that does not consume the ring; the blocks have a lock of their
/// own, held only to add or free one, so the shrinker frees them then too,
/// as the C driver's does.
impl ShrinkerHandler for Balloon {
    fn count(&self) -> u64 {
        (self.hint_blocks.lock().len() as u64) << HINT_BLOCK_ORDER
    }

    fn scan(&self, pages: u64) -> u64 {
        let wanted = pages.div_ceil(1 << HINT_BLOCK_ORDER);
        let (freed, held) = {
            let mut blocks = self.hint_blocks.lock();
            let freed = blocks
                .as_mut()
                .release(usize::try_from(wanted).unwrap_or(usize::MAX));
            (freed, blocks.len())
        };
        self.view.hint_blocks_held.store(held as u64, Relaxed);
        (freed as u64) << HINT_BLOCK_ORDER
    }
}
