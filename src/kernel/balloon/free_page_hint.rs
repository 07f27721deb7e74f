// SPDX-License-Identifier: GPL-2.0

//! Free page hinting: blocks of free pages the host may skip while it
//! migrates the guest, held until the host is done or memory is short.

use balloon_logic::hint::{
    self,
    HintAction, //
};
use kernel::device::Bound;
use kernel::prelude::*;
use kernel::sync::atomic::Relaxed;

use super::Balloon;
use crate::mm::{
    Page,
    PageList,
    ShrinkerHandler,
    HINT_BLOCK_ORDER, //
};
use super::config::FreePageHintCmdId;
use crate::virtio::{
    Device,
    Virtqueue, //
};

/// Free page hinting: the queue, the command id buffers the host reads,
/// and the blocks hinted so far.
pub(super) struct HintState {
    pub(super) queue: Option<Virtqueue>,
    /// Id of the round last started (the guest's byte order).
    pub(super) active: u32,
    pub(super) blocks: Pin<KBox<PageList<HINT_BLOCK_ORDER>>>,
}

impl HintState {
    pub(super) fn new() -> Result<Self> {
        Ok(Self {
            queue: None,
            active: hint::CMD_ID_STOP,
            blocks: KBox::pin_init(PageList::new(), GFP_KERNEL)?,
        })
    }
}

impl Balloon {
    /// The hint work: the host wrote a command id; start a round, or take
    /// the hinted blocks back when it is done.
    pub(super) fn free_page_hint(&self) {
        if self.stopped() {
            return;
        }
        let dev = self.device();
        let Some(received) = dev.read_config::<FreePageHintCmdId>() else {
            return;
        };
        let mut guard = self.hint.lock();
        let HintState {
            queue,
            active,
            blocks,
        } = &mut *guard;
        let Some(queue) = queue.as_mut() else { return };
        let little_endian = self.features.pfns_little_endian();
        match hint::on_cmd_id(received, *active) {
            HintAction::Nothing => {}
            HintAction::ReturnAll => {
                let held = blocks.len();
                blocks.as_mut().clear();
                self.view.hint_blocks_held.store(0, Relaxed);
                if held > 0 {
                    dev_dbg!(dev, "free page hints done: {} blocks back\n", held);
                }
            }
            HintAction::Start(id) => {
                self.view.hint_rounds.fetch_add(1, Relaxed);
                queue.drain_used();
                *active = id;
                let start = hint::cmd_id_to_device(id, little_endian);
                if let Err(err) = queue.send(&start.to_ne_bytes()) {
                    dev_err!(dev, "cannot send the hint start id: {:?}\n", err);
                    return;
                }
                queue.kick();
                let sent = self.send_hints(dev, queue, blocks.as_mut(), id);
                queue.drain_used();
                let stop = hint::cmd_id_to_device(hint::CMD_ID_STOP, little_endian);
                match queue.send(&stop.to_ne_bytes()) {
                    Ok(()) => queue.kick(),
                    Err(err) => dev_err!(dev, "cannot send the hint stop id: {:?}\n", err),
                }
                dev_dbg!(dev, "free page hint round {}: {} blocks\n", id, sent);
            }
        }
    }

    /// Hints free blocks until the guest has none left or the host moves
    /// to another command id; returns the blocks sent.
    pub(super) fn send_hints(
        &self,
        dev: &Device<Bound>,
        queue: &mut Virtqueue,
        mut blocks: Pin<&mut PageList<HINT_BLOCK_ORDER>>,
        id: u32,
    ) -> u64 {
        let mut sent = 0;
        let poll = kernel::time::msecs_to_jiffies(10);

        while !self.stopped()
            && hint::round_continues(
                dev.read_config::<FreePageHintCmdId>()
                    .unwrap_or(hint::CMD_ID_STOP),
                id,
            )
        {
            queue.drain_used();
            // One descriptor stays free for the stop id.
            if queue.num_free() <= 1 {
                queue.wait_used(&self.acked, poll);
                continue;
            }
            let Some(block) = Page::<HINT_BLOCK_ORDER>::alloc_free_block() else {
                break;
            };
            if let Err(err) = queue.add_hint(&block) {
                dev_warn!(dev, "cannot hint a free block: {:?}\n", err);
                break;
            }
            queue.kick();
            blocks.as_mut().push(block);
            sent += 1;
            self.view.hinted_blocks.fetch_add(1, Relaxed);
            self.view
                .hint_blocks_held
                .store(blocks.len() as u64, Relaxed);
        }
        sent
    }
}

/// Memory pressure: hinted blocks go back early (hints are advisory).
impl ShrinkerHandler for Balloon {
    fn count(&self) -> u64 {
        self.view.hint_blocks_held.load(Relaxed) << HINT_BLOCK_ORDER
    }

    fn scan(&self, pages: u64) -> u64 {
        // Never wait: a hint round may be allocating right now.
        let Some(mut guard) = self.hint.try_lock() else {
            return 0;
        };
        let wanted = pages.div_ceil(1 << HINT_BLOCK_ORDER);
        let freed = guard
            .blocks
            .as_mut()
            .release(usize::try_from(wanted).unwrap_or(usize::MAX));
        self.view
            .hint_blocks_held
            .store(guard.blocks.len() as u64, Relaxed);
        (freed as u64) << HINT_BLOCK_ORDER
    }
}
