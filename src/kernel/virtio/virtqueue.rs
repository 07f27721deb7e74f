// SPDX-License-Identifier: GPL-2.0

//! Virtqueues: the rings a device and its driver exchange buffers on.
//!
//! A [`Virtqueue<T>`] is typed by the data that rides with each buffer:
//! adding a buffer turns its `T` into the ring's token
//! ([`ForeignOwnable::into_foreign`]), and the device handing the buffer
//! back turns the token into the `T` again, so a buffer the device may
//! read is owned by the ring, not by the driver, until it comes back.
//! What the device still holds when the queue is put back after a reset
//! is detached and dropped; what it holds when a queue is dropped without
//! a reset is leaked, since the device may still use it.
//!
//! ```ignore
//! // A queue of boxed stats buffers: send one, take it back when the
//! // device is done with it.
//! let mut queue: Virtqueue<KBox<Stats>> = queues.take(index).ok_or(ENODEV)?;
//! queue.add_outbuf(KBox::new(stats, GFP_KERNEL)?).map_err(|(err, _)| err)?;
//! queue.kick();
//! if let Some((stats, _len)) = queue.get_buf() { /* ours again */ }
//! ```

use core::marker::PhantomData;
use core::ptr::NonNull;

use kernel::error::to_result;
use kernel::prelude::*;
use kernel::time::Jiffies;
use kernel::types::ForeignOwnable;

use super::device::DeviceReset;
use crate::wait_queue::WaitQueue;
use crate::bindings;

/// What to set up for one virtqueue.
#[derive(Clone, Copy)]
pub(crate) struct QueueSpec {
    /// The queue's name.
    pub(crate) name: &'static CStr,
}

/// The virtqueues of one device, handed back to [`Device::del_vqs`].
///
/// [`Device::del_vqs`]: super::Device::del_vqs
pub(crate) struct Virtqueues {
    pub(super) slots: KVec<Option<NonNull<bindings::virtqueue>>>,
}

// SAFETY: the set only keeps the handles of queues nobody uses through
// it; a handle taken out is used under the rules of [`Virtqueue`].
unsafe impl Send for Virtqueues {}

impl Virtqueues {
    /// Takes the queue at `index` out of the set, typed by the data its
    /// buffers carry; `None` if it is out already.
    pub(crate) fn take<T: ForeignOwnable>(&mut self, index: usize) -> Option<Virtqueue<T>> {
        let vq = self.slots.get_mut(index)?.take()?;
        // INVARIANT: the queue is valid until `del_vqs`, which deletes it
        // only once it is back in the set; no buffer is on it yet (a
        // queue is taken once, right after it was found).
        Some(Virtqueue {
            vq,
            in_flight: 0,
            _data: PhantomData,
        })
    }

    /// Puts `queue` back at `index` after the device was reset, dropping
    /// the data of every buffer the device held: the reset made it drop
    /// them all.
    pub(crate) fn put_back<T: ForeignOwnable>(
        &mut self,
        index: usize,
        mut queue: Virtqueue<T>,
        _reset: &DeviceReset,
    ) {
        loop {
            // SAFETY: the queue is valid and the device was reset, so it
            // uses none of the buffers; `&mut` serialises the ring.
            let token = unsafe { bindings::virtqueue_detach_unused_buf(queue.vq.as_ptr()) };
            if token.is_null() {
                break;
            }
            drop(queue.returned(token));
        }
        if let Some(slot) = self.slots.get_mut(index) {
            *slot = Some(queue.vq);
        }
        // The handle is in the set again: nothing to leak.
        core::mem::forget(queue);
    }
}

/// Data that can ride on a virtqueue as a device-readable buffer: the
/// bytes the device reads.
pub(crate) trait Readable {
    /// The bytes the device reads; in the linear map (kmalloc or page
    /// memory), or [`Virtqueue::add_outbuf`] refuses them.
    fn bytes(&self) -> &[u8];
}

/// One virtqueue of a device, whose buffers carry a `T` each.
///
/// # Invariants
///
/// `vq` is a valid virtqueue until the handle is given back to
/// [`Device::del_vqs`] (through [`Virtqueues::put_back`]). Every token on
/// its ring was made by `T::into_foreign`, and `in_flight` counts them.
///
/// [`Device::del_vqs`]: super::Device::del_vqs
pub(crate) struct Virtqueue<T: ForeignOwnable> {
    vq: NonNull<bindings::virtqueue>,
    in_flight: usize,
    _data: PhantomData<T>,
}

impl<T: ForeignOwnable> Drop for Virtqueue<T> {
    fn drop(&mut self) {
        // Without a reset the device may still use what it holds: the
        // tokens stay on the ring, leaked.
        if self.in_flight > 0 {
            pr_warn!(
                "virtqueue dropped while the device holds {} buffers; leaking them\n",
                self.in_flight
            );
        }
    }
}

// SAFETY: a virtqueue may be used from any thread as long as uses are
// serialised, which `&mut self` on every operation guarantees; the data
// on its ring moves between threads with it.
unsafe impl<T: ForeignOwnable + Send> Send for Virtqueue<T> {}

/// Whether `bytes` can go on a virtqueue: non-empty and in the linear map
/// (kmalloc or page memory, never vmalloc or module statics).
fn dma_able(bytes: &[u8]) -> bool {
    // SAFETY: only the address is inspected.
    !bytes.is_empty() && unsafe { bindings::vbrs_virt_addr_valid(bytes.as_ptr().cast()) }
}

impl<B: Readable + 'static> Virtqueue<KBox<B>> {
    /// Adds `data`'s bytes for the device to read; [`Virtqueue::kick`]
    /// tells the device.
    ///
    /// The box rides on the ring, untouched, until the device hands the
    /// buffer back ([`Virtqueue::get_buf`]) or is reset. On failure it is
    /// handed back with the error: `EINVAL` for bytes that are empty or
    /// outside the linear map, `ENOSPC` when the ring is full, `EIO` when
    /// the queue is broken.
    pub(crate) fn add_outbuf(&mut self, data: KBox<B>) -> Result<(), (Error, KBox<B>)> {
        let bytes = data.bytes();
        let Ok(len) = u32::try_from(bytes.len()) else {
            return Err((EINVAL, data));
        };
        if !dma_able(bytes) {
            return Err((EINVAL, data));
        }
        let buf = bytes.as_ptr().cast_mut().cast::<core::ffi::c_void>();
        let token = data.into_foreign();
        // SAFETY: the queue is valid and `&mut self` serialises its use;
        // `buf` points into the box (in the linear map, checked), which
        // does not move or change while the ring owns it as `token`.
        let ret = unsafe { bindings::vbrs_virtqueue_add_outbuf(self.vq.as_ptr(), buf, len, token) };
        if let Err(err) = to_result(ret) {
            // SAFETY: `token` came from `into_foreign` just above and the
            // ring did not take it.
            return Err((err, unsafe { KBox::<B>::from_foreign(token) }));
        }
        // INVARIANT: the token is on the ring.
        self.in_flight += 1;
        Ok(())
    }
}

impl<T: ForeignOwnable> Virtqueue<T> {
    /// Adds a device-writable buffer over the whole of `block`, with
    /// `data` riding on it; `EINVAL` for a block outside the linear map
    /// (highmem).
    ///
    /// # Safety
    ///
    /// The device may write to `block` until it hands the buffer back or
    /// is reset, while the caller keeps and may free the block: the
    /// caller's protocol must say that the device does not write to it
    /// (as a free page hint, which the device returns unwritten), or the
    /// caller must keep the block until then.
    pub(crate) unsafe fn add_inbuf_block<const ORDER: u32>(
        &mut self,
        block: &crate::mm::Pages<ORDER>,
        data: T,
    ) -> Result<(), (Error, T)> {
        let token = data.into_foreign();
        // SAFETY: the queue is valid and `&mut self` serialises its use;
        // the block is a valid page block of `ORDER` (the helper refuses
        // one outside the linear map); what the device may do with it is
        // the caller's to promise.
        let ret = unsafe {
            bindings::vbrs_virtqueue_add_inbuf_block(self.vq.as_ptr(), block.as_raw(), ORDER, token)
        };
        if let Err(err) = to_result(ret) {
            // SAFETY: `token` came from `into_foreign` just above and the
            // ring did not take it.
            return Err((err, unsafe { T::from_foreign(token) }));
        }
        // INVARIANT: the token is on the ring.
        self.in_flight += 1;
        Ok(())
    }

    /// Adds a device-writable buffer over the `nents` entries of `sg`,
    /// with `data` riding on it, without sleeping to allocate.
    ///
    /// # Safety
    ///
    /// `sg` and the memory it names must stay valid, and the caller must
    /// not use that memory, until the device hands the buffer back or is
    /// reset.
    pub(crate) unsafe fn add_inbuf_sg(
        &mut self,
        sg: *mut bindings::scatterlist,
        nents: u32,
        data: T,
    ) -> Result<(), (Error, T)> {
        let token = data.into_foreign();
        // SAFETY: the queue is valid and `&mut self` serialises its use;
        // the caller keeps `sg` and its memory valid for the device.
        let ret =
            unsafe { bindings::vbrs_virtqueue_add_inbuf_nowait(self.vq.as_ptr(), sg, nents, token) };
        if let Err(err) = to_result(ret) {
            // SAFETY: `token` came from `into_foreign` just above and the
            // ring did not take it.
            return Err((err, unsafe { T::from_foreign(token) }));
        }
        // INVARIANT: the token is on the ring.
        self.in_flight += 1;
        Ok(())
    }

    /// The data of a buffer the device handed back.
    fn returned(&mut self, token: *mut core::ffi::c_void) -> T {
        self.in_flight = self.in_flight.saturating_sub(1);
        // SAFETY: every token on the ring came from `T::into_foreign`
        // (type invariant), and the ring hands each back once.
        unsafe { T::from_foreign(token) }
    }

    /// Takes back one buffer the device has used, if any, with the length
    /// it wrote.
    pub(crate) fn get_buf(&mut self) -> Option<(T, u32)> {
        let mut len = 0u32;
        // SAFETY: the queue is valid and `&mut self` serialises its use.
        let token = unsafe { bindings::virtqueue_get_buf(self.vq.as_ptr(), &mut len) };
        if token.is_null() {
            return None;
        }
        Some((self.returned(token), len))
    }

    /// Sleeps until the device hands a buffer back (taking it) or
    /// `timeout` jiffies pass; the queue's completion callback must wake
    /// `waiter`.
    pub(crate) fn wait_buf(&mut self, waiter: &WaitQueue, timeout: Jiffies) -> Option<T> {
        // SAFETY: `waiter` is an initialised wait queue head and the queue is
        // valid; the helper only calls `virtqueue_get_buf` on it.
        let token = unsafe {
            bindings::vbrs_wait_for_buf(
                waiter.as_raw(),
                self.vq.as_ptr(),
                isize::try_from(timeout).unwrap_or(isize::MAX),
            )
        };
        if token.is_null() {
            return None;
        }
        Some(self.returned(token))
    }

    /// Buffers the device holds.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether the queue is broken (surprise removal, transport failure):
    /// it will never take a buffer again.
    pub(crate) fn is_broken(&self) -> bool {
        // SAFETY: the queue is valid.
        unsafe { bindings::virtqueue_is_broken(self.vq.as_ptr()) }
    }

    /// Number of descriptors in the queue's ring.
    pub(crate) fn size(&self) -> u32 {
        // SAFETY: the queue is valid.
        unsafe { bindings::virtqueue_get_vring_size(self.vq.as_ptr()) }
    }

    /// Free descriptors in the ring.
    pub(crate) fn num_free(&self) -> u32 {
        // SAFETY: the queue is valid; `num_free` is a plain field the ring
        // updates under the queue's use, which `&self` serialises with ours.
        unsafe { (*self.vq.as_ptr()).num_free }
    }

    /// Notifies the device of new buffers.
    pub(crate) fn kick(&mut self) {
        // SAFETY: the queue is valid.
        unsafe { bindings::virtqueue_kick(self.vq.as_ptr()) };
    }
}
