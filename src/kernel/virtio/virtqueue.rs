// SPDX-License-Identifier: GPL-2.0

//! Virtqueues: the rings a device and its driver exchange buffers on; each
//! queue owns the device-readable buffers it sends until the device hands
//! them back.

use core::ptr::NonNull;

use kernel::error::to_result;
use kernel::prelude::*;
use kernel::time::Jiffies;

use super::WaitQueue;
use crate::bindings;

/// What to set up for one virtqueue.
#[derive(Clone, Copy)]
pub(crate) struct QueueSpec {
    /// The queue's name.
    pub(crate) name: &'static CStr,
    /// How many device-readable buffers the queue owns, for
    /// [`Virtqueue::send`].
    pub(crate) out_buffers: usize,
    /// The size of each, in bytes.
    pub(crate) out_buffer_size: usize,
}

/// A device-readable buffer a virtqueue owns, kmalloc memory.
pub(super) struct OutBuffer {
    pub(super) bytes: KVec<u8>,
    /// The device may read it: it was added and not yet handed back.
    pub(super) in_flight: bool,
}

/// Most queues a device may have through this layer.
pub(crate) const MAX_QUEUES: usize = 5;

/// The virtqueues of one device, handed back to [`Device::del_vqs`].
pub(crate) struct Virtqueues {
    pub(super) slots: [Option<Virtqueue>; MAX_QUEUES],
    pub(super) count: usize,
}

impl Virtqueues {
    /// Takes the handle of the queue at `index` out of the set.
    pub(crate) fn take(&mut self, index: usize) -> Option<Virtqueue> {
        self.slots.get_mut(index)?.take()
    }

    /// Puts a handle back at `index`.
    pub(crate) fn put_back(&mut self, index: usize, queue: Virtqueue) {
        if let Some(slot) = self.slots.get_mut(index) {
            *slot = Some(queue);
        }
    }
}

/// One virtqueue of a device, with the device-readable buffers it owns.
///
/// # Invariants
///
/// `vq` is a valid virtqueue until the handle is given back to
/// [`Device::del_vqs`] (through [`Virtqueues`]). The device only reads an
/// out buffer while it is marked in flight, and the token of buffer `i` on
/// the ring is `i + 1` (never a kernel address, so never the token of a
/// buffer added by [`Virtqueue::add_hint`] or [`Virtqueue::report_and_wait`]).
pub(crate) struct Virtqueue {
    pub(super) vq: NonNull<bindings::virtqueue>,
    pub(super) out: KVec<OutBuffer>,
}

impl Drop for Virtqueue {
    fn drop(&mut self) {
        // A buffer the device may still read must outlive it: leak it.
        for buffer in self.out.iter_mut().filter(|buffer| buffer.in_flight) {
            pr_warn!("virtqueue dropped while the device holds a buffer; leaking it\n");
            core::mem::forget(core::mem::take(&mut buffer.bytes));
        }
    }
}

// SAFETY: a virtqueue may be used from any thread as long as uses are
// serialised, which `&mut self` on every operation guarantees.
unsafe impl Send for Virtqueue {}

/// Why a buffer did not make the round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The queue did not take the buffer.
    Queue(Error),
    /// The queue is broken (the device is gone or failed): it will never
    /// take a buffer again.
    Broken,
    /// The device did not hand the buffer back in time; it may still use it.
    Timeout,
}

/// Whether `bytes` can go on a virtqueue: non-empty and in the linear map
/// (kmalloc or page memory, never vmalloc or module statics).
fn dma_able(bytes: &[u8]) -> bool {
    // SAFETY: only the address is inspected.
    !bytes.is_empty() && unsafe { bindings::vbrs_virt_addr_valid(bytes.as_ptr().cast()) }
}

impl Virtqueue {
    /// Copies `bytes` into a free buffer the queue owns and adds it for the
    /// device to read; [`Virtqueue::kick`] tells the device.
    ///
    /// The buffer stays the queue's, untouched, until the device hands it
    /// back ([`Virtqueue::get_buf`]) or is reset. Fails with `EBUSY` when
    /// every buffer is with the device, `EINVAL` when `bytes` is empty or
    /// larger than a buffer.
    pub(crate) fn send(&mut self, bytes: &[u8]) -> Result {
        let len = u32::try_from(bytes.len()).map_err(|_| EINVAL)?;
        let (index, buffer) = self
            .out
            .iter_mut()
            .enumerate()
            .find(|(_, buffer)| !buffer.in_flight)
            .ok_or(EBUSY)?;
        let slot = buffer.bytes.get_mut(..bytes.len()).ok_or(EINVAL)?;
        if bytes.is_empty() || !dma_able(slot) {
            return Err(EINVAL);
        }
        slot.copy_from_slice(bytes);
        let data = slot.as_mut_ptr().cast::<core::ffi::c_void>();
        let token = core::ptr::without_provenance_mut::<core::ffi::c_void>(index + 1);
        // SAFETY: the queue is valid and `&mut self` serialises its use; the
        // buffer is kmalloc memory (in the linear map, checked) owned by the
        // queue, which keeps it unchanged while it is in flight.
        to_result(unsafe {
            bindings::vbrs_virtqueue_add_outbuf(self.vq.as_ptr(), data, len, token)
        })?;
        // INVARIANT: the device may read it from now on.
        buffer.in_flight = true;
        Ok(())
    }

    /// The device handed back the buffer of `token`: if it is one of ours,
    /// it is free again.
    fn returned(&mut self, token: *mut core::ffi::c_void) {
        let index = token.addr().wrapping_sub(1);
        if let Some(buffer) = self.out.get_mut(index) {
            buffer.in_flight = false;
        }
    }

    /// Whether the queue is broken (surprise removal, transport failure).
    pub(crate) fn is_broken(&self) -> bool {
        // SAFETY: the queue is valid.
        unsafe { bindings::virtqueue_is_broken(self.vq.as_ptr()) }
    }

    /// Number of descriptors in the queue's ring.
    pub(crate) fn size(&self) -> u32 {
        // SAFETY: the queue is valid.
        unsafe { bindings::virtqueue_get_vring_size(self.vq.as_ptr()) }
    }

    /// Notifies the device of new buffers.
    pub(crate) fn kick(&mut self) {
        // SAFETY: the queue is valid.
        unsafe { bindings::virtqueue_kick(self.vq.as_ptr()) };
    }

    /// Takes back one buffer the device has used, if any.
    pub(crate) fn get_buf(&mut self) -> bool {
        let mut len = 0u32;
        // SAFETY: the queue is valid and `&mut self` serialises its use.
        let token = unsafe { bindings::virtqueue_get_buf(self.vq.as_ptr(), &mut len) };
        if token.is_null() {
            return false;
        }
        self.returned(token);
        true
    }

    /// Sleeps until the device returns a buffer (taking it back) or
    /// `timeout` passes.
    fn wait(&mut self, waiter: &WaitQueue, timeout: Jiffies) -> bool {
        // SAFETY: `waiter` is an initialised wait queue head and the queue is
        // valid; the helper only calls `virtqueue_get_buf` on it.
        let token = unsafe {
            bindings::vbrs_wait_for_buf(
                waiter.head.get(),
                self.vq.as_ptr(),
                isize::try_from(timeout).unwrap_or(isize::MAX),
            )
        };
        if token.is_null() {
            return false;
        }
        self.returned(token);
        true
    }

    /// Sends `words` in buffers of at most `per_buffer` words each, with one
    /// notification for all of them, and sleeps until the device hands
    /// every one back (the completion callback wakes `waiter`) or a wait
    /// for the next one exceeds `timeout` jiffies.
    ///
    /// Nothing is sent unless the queue has a free buffer and a free
    /// descriptor for each. On [`SendError::Timeout`] the queue keeps the
    /// buffers still out until the device hands them back
    /// ([`Virtqueue::all_returned`]) or is reset; that is also the answer
    /// when the queue fails or breaks partway, with buffers already out.
    pub(crate) fn send_all_and_wait(
        &mut self,
        words: &[u32],
        per_buffer: usize,
        waiter: &WaitQueue,
        timeout: Jiffies,
    ) -> core::result::Result<(), SendError> {
        let per_buffer = per_buffer.max(1);
        let buffers = words.len().div_ceil(per_buffer);
        let free = self.out.iter().filter(|buffer| !buffer.in_flight).count();
        if buffers == 0 || buffers > free || buffers > self.num_free() as usize {
            return Err(if self.is_broken() {
                SendError::Broken
            } else {
                SendError::Queue(EBUSY)
            });
        }
        for chunk in words.chunks(per_buffer) {
            if let Err(err) = self.send(chunk.as_bytes()) {
                if self.in_flight() > 0 {
                    // Some buffers are out: the host may read them, even if
                    // the queue broke meanwhile, so the caller must treat
                    // the batch as late (kept until they come back or the
                    // device is reset), not as unsent.
                    self.kick();
                    return Err(SendError::Timeout);
                }
                if self.is_broken() {
                    return Err(SendError::Broken);
                }
                return Err(SendError::Queue(err));
            }
        }
        self.kick();
        while self.in_flight() > 0 {
            if !self.wait(waiter, timeout) {
                return Err(SendError::Timeout);
            }
        }
        Ok(())
    }

    /// Buffers of ours the device may still read.
    fn in_flight(&self) -> usize {
        self.out.iter().filter(|buffer| buffer.in_flight).count()
    }

    /// Takes back every buffer the device has used (never waits); true
    /// when none of ours is left with the device.
    pub(crate) fn all_returned(&mut self) -> bool {
        self.drain_used();
        self.in_flight() == 0
    }

    /// Free descriptors in the ring.
    pub(crate) fn num_free(&self) -> u32 {
        // SAFETY: the queue is valid; `num_free` is a plain field the ring
        // updates under the queue's use, which `&self` serialises with ours.
        unsafe { (*self.vq.as_ptr()).num_free }
    }

    /// Takes back every buffer the device has used.
    pub(crate) fn drain_used(&mut self) {
        while self.get_buf() {}
    }

    /// Sleeps until the device returns a buffer (taking it back) or
    /// `timeout` passes; returns whether a buffer came back.
    pub(crate) fn wait_used(&mut self, waiter: &WaitQueue, timeout: Jiffies) -> bool {
        self.wait(waiter, timeout)
    }

    /// Hands a block of free pages to the device as a free page hint;
    /// `EINVAL` for a block outside the linear map (highmem).
    ///
    /// The buffer is device-writable only because the protocol says hints
    /// are: the device notes the block's address (it will not migrate those
    /// pages) and hands the buffer back unwritten (QEMU's
    /// `get_free_page_hints` pushes it with length 0), so the guest may
    /// reuse the block at any time, as the C driver's shrinker does. The
    /// buffer's life is not tied to the block's on purpose: a host that
    /// stops consuming the queue must not pin the blocks on its ring. A
    /// device that wrote to a hint anyway would be a bus master writing
    /// where it was not asked to, which no type on this side can prevent
    /// (without an IOMMU, no more than any other DMA).
    pub(crate) fn add_hint<const ORDER: u32>(&mut self, block: &crate::mm::Pages<ORDER>) -> Result {
        // SAFETY: the queue is valid and `&mut self` serialises its use; the
        // block is a valid page block of `ORDER` (the helper refuses one
        // outside the linear map).
        to_result(unsafe {
            bindings::vbrs_virtqueue_add_inbuf_block(self.vq.as_ptr(), block.as_raw(), ORDER)
        })
    }

    /// Hands a free page report to the device (device-writable buffers) and
    /// sleeps until the device has processed it.
    ///
    /// The device may discard the reported pages until it returns the
    /// buffer, and the page reporting core cannot take back pages still
    /// being reported, so this waits as long as it takes, logging once
    /// after `warn_after` jiffies, until the device hands the buffer back
    /// (`Ok`) or `reset` says the driver reset the device (`ENODEV`: it
    /// dropped the buffer, so the pages are the guest's again). The
    /// device's status word is not trusted for that: only the driver's
    /// own reset ends a report early. `reset` is called after each wait;
    /// whoever resets wakes `waiter`.
    pub(crate) fn report_and_wait(
        &mut self,
        pages: &crate::mm::ReportedPages<'_>,
        waiter: &WaitQueue,
        warn_after: Jiffies,
        reset: impl Fn() -> bool,
    ) -> Result {
        let poll = kernel::time::msecs_to_jiffies(100);
        let (sg, nents) = pages.raw();
        // SAFETY: the queue is valid; `sg` is the page reporting core's
        // scatterlist of `nents` entries, valid until the report callback
        // returns, which happens only once the device gave it back.
        to_result(unsafe {
            bindings::vbrs_virtqueue_add_inbuf_nowait(self.vq.as_ptr(), sg, nents, sg.cast())
        })?;
        self.kick();
        let mut waited: Jiffies = 0;
        while !self.wait(waiter, poll) {
            if reset() {
                return Err(ENODEV);
            }
            let before = waited;
            waited = waited.saturating_add(poll);
            if before < warn_after && waited >= warn_after {
                pr_warn!("host has not returned a free page report yet; still waiting\n");
            }
        }
        Ok(())
    }
}
