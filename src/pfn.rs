// SPDX-License-Identifier: GPL-2.0

//! Conversion between guest pages and the device's 4 KiB balloon pages, and
//! the PFN arrays sent on the inflate and deflate queues.

/// The device counts memory in pages of `1 << BALLOON_PFN_SHIFT` bytes,
/// whatever the guest's page size is.
pub const BALLOON_PFN_SHIFT: u32 = 12;

/// Bytes in one balloon page.
pub const BALLOON_PAGE_SIZE: u64 = 1 << BALLOON_PFN_SHIFT;

/// Number of balloon PFNs in one buffer sent to the host.
///
/// The C driver sends 256 (1 MiB) per buffer and waits for each; larger
/// buffers cut the per-buffer cost of the host's exit and discard.
pub const PFNS_PER_BUFFER: usize = 4096;

/// Errors of the page-size conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PfnError {
    /// The guest page size is smaller than a balloon page or not a power of two.
    UnsupportedPageShift(u32),
    /// The guest page's frame number does not fit the device's 32-bit PFN.
    PfnTooLarge(u64),
    /// The buffer has no room for one more guest page.
    BufferFull,
}

/// How guest pages map onto balloon pages for one guest page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageGeometry {
    /// log2 of the balloon pages in one guest page; every division by the
    /// page ratio is a shift, so no path has a division by zero to check.
    shift: u32,
}

impl PageGeometry {
    /// The geometry for guest pages of `1 << page_shift` bytes.
    pub const fn new(page_shift: u32) -> Result<Self, PfnError> {
        if page_shift < BALLOON_PFN_SHIFT || page_shift > 30 {
            return Err(PfnError::UnsupportedPageShift(page_shift));
        }
        Ok(Self {
            shift: page_shift - BALLOON_PFN_SHIFT,
        })
    }

    /// Balloon pages in one guest page (1 for 4 KiB, 16 for 64 KiB pages).
    pub const fn balloon_pages_per_page(self) -> u32 {
        1 << self.shift
    }

    /// The order, in guest pages, of a 2 MiB block
    /// ([`crate::format::PFNS_PER_BLOCK`] balloon pages, a host huge page):
    /// 9 with 4 KiB pages, 7 with 16 KiB, 5 with 64 KiB; 0 once a guest
    /// page is 2 MiB or larger, where a block would be one page and there
    /// is nothing to keep whole.
    ///
    /// The kernel allocates blocks of this order and the engine counts them
    /// by it, so a block is 2 MiB of the guest and 2 MiB of the host
    /// whatever the page size.
    pub const fn block_order(self) -> u32 {
        crate::format::PFNS_PER_BLOCK
            .trailing_zeros()
            .saturating_sub(self.shift)
    }

    /// The first balloon PFN of the guest page with frame number `pfn`.
    pub fn balloon_pfn(self, pfn: u64) -> Result<u32, PfnError> {
        let first = pfn
            .checked_mul(u64::from(self.balloon_pages_per_page()))
            .ok_or(PfnError::PfnTooLarge(pfn))?;
        let last = first + u64::from(self.balloon_pages_per_page()) - 1;
        if last > u64::from(u32::MAX) {
            return Err(PfnError::PfnTooLarge(pfn));
        }
        Ok(first as u32)
    }

    /// The guest page frame number a balloon PFN belongs to.
    pub const fn guest_pfn(self, balloon_pfn: u32) -> u64 {
        (balloon_pfn as u64) >> self.shift
    }

    /// Rounds a count of balloon pages up to whole guest pages.
    ///
    /// Without this, a host target that is not a multiple of the guest page
    /// would make the guest inflate and deflate one page for ever.
    pub const fn align_up(self, balloon_pages: u64) -> u64 {
        let mask = (1u64 << self.shift) - 1;
        match balloon_pages.checked_add(mask) {
            Some(up) => up & !mask,
            None => !mask,
        }
    }

    /// Guest pages held by `balloon_pages` balloon pages (rounded down).
    pub const fn guest_pages(self, balloon_pages: u64) -> u64 {
        balloon_pages >> self.shift
    }
}

/// A PFN array being filled for one buffer, in the device's byte order.
pub struct PfnBatch<'a> {
    slots: &'a mut [u32],
    len: usize,
    geometry: PageGeometry,
    little_endian: bool,
}

impl<'a> PfnBatch<'a> {
    /// An empty batch writing into `slots`.
    ///
    /// `little_endian` is the device's PFN byte order (see
    /// [`crate::features::Features::little_endian`]).
    pub fn new(slots: &'a mut [u32], geometry: PageGeometry, little_endian: bool) -> Self {
        Self {
            slots,
            len: 0,
            geometry,
            little_endian,
        }
    }

    /// Whether one more guest page fits.
    pub fn has_room(&self) -> bool {
        self.slots.len() - self.len >= self.geometry.balloon_pages_per_page() as usize
    }

    /// Appends every balloon PFN of the guest page `pfn`.
    pub fn push_page(&mut self, pfn: u64) -> Result<(), PfnError> {
        if !self.has_room() {
            return Err(PfnError::BufferFull);
        }
        let first = self.geometry.balloon_pfn(pfn)?;
        for i in 0..self.geometry.balloon_pages_per_page() {
            let value = first + i;
            self.slots[self.len] = if self.little_endian {
                value.to_le()
            } else {
                value
            };
            self.len += 1;
        }
        Ok(())
    }

    /// Balloon pages in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The filled part of the array, as it goes on the virtqueue.
    pub fn as_slice(&self) -> &[u32] {
        &self.slots[..self.len]
    }
}
