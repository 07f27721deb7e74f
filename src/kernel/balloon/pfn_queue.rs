// SPDX-License-Identifier: GPL-2.0

//! The inflate and deflate queues: PFN arrays sent in batches with one
//! notification, each batch waited for.

use balloon_logic::pfn::PFNS_PER_BUFFER;
use kernel::prelude::*;
use kernel::time::Jiffies;

use crate::virtio::{
    Readable,
    Virtqueue, //
};
use crate::wait_queue::WaitQueue;

/// One inflate or deflate buffer: up to [`PFNS_PER_BUFFER`] PFNs, in the
/// device's byte order.
#[derive(Zeroable)]
pub(super) struct PfnArray {
    words: [u32; PFNS_PER_BUFFER],
    len: usize,
}

impl Readable for PfnArray {
    fn bytes(&self) -> &[u8] {
        self.words.get(..self.len).unwrap_or(&[]).as_bytes()
    }
}

/// Why a batch did not make the round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SendError {
    /// The queue took no buffer of the batch.
    Queue(Error),
    /// The queue is broken (the device is gone or failed): it will never
    /// take a buffer again.
    Broken,
    /// The device did not hand every buffer back in time, or the queue
    /// failed partway with buffers already out: it may still read them.
    Timeout,
}

/// An inflate or deflate queue with the PFN arrays it sends.
pub(super) struct PfnQueue {
    queue: Virtqueue<KBox<PfnArray>>,
    /// The arrays the device does not hold.
    free: KVec<KBox<PfnArray>>,
}

impl PfnQueue {
    /// `count` PFN arrays, for [`PfnQueue::new`].
    pub(super) fn arrays(count: usize) -> Result<KVec<KBox<PfnArray>>> {
        let mut arrays = KVec::with_capacity(count, GFP_KERNEL)?;
        for _ in 0..count {
            // 16 KiB each: made in place, never on the stack.
            arrays.push(KBox::init(pin_init::init_zeroed(), GFP_KERNEL)?, GFP_KERNEL)?;
        }
        Ok(arrays)
    }

    /// `queue` with the `arrays` it sends, as many at once.
    pub(super) fn new(queue: Virtqueue<KBox<PfnArray>>, arrays: KVec<KBox<PfnArray>>) -> Self {
        Self {
            queue,
            free: arrays,
        }
    }

    /// The queue, for teardown to put back; the arrays the device still
    /// holds go with it.
    pub(super) fn into_queue(self) -> Virtqueue<KBox<PfnArray>> {
        self.queue
    }

    /// An array the device handed back is free again.
    fn returned(&mut self, array: KBox<PfnArray>) {
        // Never beyond the capacity: only arrays taken from `free` go out.
        let _ = self.free.push_within_capacity(array);
    }

    /// Sends `words` in arrays of at most `per_buffer` PFNs each, with one
    /// notification for all of them, and sleeps until the device hands
    /// every one back (the completion callback wakes `waiter`) or a wait
    /// for the next one exceeds `timeout` jiffies.
    ///
    /// Nothing is sent unless there is a free array and a free descriptor
    /// for each. On [`SendError::Timeout`] the arrays still out stay with
    /// the device until it hands them back ([`PfnQueue::all_returned`]) or
    /// is reset.
    pub(super) fn send_all_and_wait(
        &mut self,
        words: &[u32],
        per_buffer: usize,
        waiter: &WaitQueue,
        timeout: Jiffies,
    ) -> Result<(), SendError> {
        let per_buffer = per_buffer.clamp(1, PFNS_PER_BUFFER);
        let buffers = words.len().div_ceil(per_buffer);
        if buffers == 0 || buffers > self.free.len() || buffers > self.queue.num_free() as usize {
            return Err(if self.queue.is_broken() {
                SendError::Broken
            } else {
                SendError::Queue(EBUSY)
            });
        }
        for chunk in words.chunks(per_buffer) {
            let Some(mut array) = self.free.pop() else {
                // Unreachable: checked above.
                return Err(SendError::Queue(EBUSY));
            };
            // A zip, not `copy_from_slice`: no length check that could
            // panic (`chunk` is at most `per_buffer` long).
            for (word, pfn) in array.words.iter_mut().zip(chunk) {
                *word = *pfn;
            }
            array.len = chunk.len();
            if let Err((err, array)) = self.queue.add_outbuf(array) {
                self.returned(array);
                if self.queue.in_flight() > 0 {
                    // Some arrays are out: the host may read them, even if
                    // the queue broke meanwhile, so the caller must treat
                    // the batch as late (kept until they come back or the
                    // device is reset), not as unsent.
                    self.queue.kick();
                    return Err(SendError::Timeout);
                }
                if self.queue.is_broken() {
                    return Err(SendError::Broken);
                }
                return Err(SendError::Queue(err));
            }
        }
        self.queue.kick();
        while self.queue.in_flight() > 0 {
            match self.queue.wait_buf(waiter, timeout) {
                Some(array) => self.returned(array),
                None => return Err(SendError::Timeout),
            }
        }
        Ok(())
    }

    /// Takes back every array the device has used (never waits); true when
    /// the device holds none.
    pub(super) fn all_returned(&mut self) -> bool {
        while let Some((array, _)) = self.queue.get_buf() {
            self.returned(array);
        }
        self.queue.in_flight() == 0
    }
}
