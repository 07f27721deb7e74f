// SPDX-License-Identifier: GPL-2.0

//! Arithmetic between the host's target (`num_pages`), the balloon's size
//! (`actual`) and what the guest can give.

use crate::pfn::PageGeometry;

/// Where the balloon has to go, in balloon (4 KiB) pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The target after alignment and clamping.
    pub pages: u64,
    /// The host asked for more than the guest has; `pages` was clamped.
    pub clamped: bool,
}

impl Target {
    /// Interprets the host's `num_pages`.
    ///
    /// The value is rounded up to whole guest pages (in 64-bit arithmetic, so
    /// a target near `u32::MAX` does not wrap to zero as it would in 32 bits)
    /// and clamped to `limit`, the most the guest could ever put in the
    /// balloon (its RAM, in balloon pages, rounded down to whole guest pages).
    pub fn from_config(num_pages: u32, geometry: PageGeometry, limit: u64) -> Self {
        let aligned = geometry.align_up(u64::from(num_pages));
        let limit = geometry.guest_pages(limit) * u64::from(geometry.balloon_pages_per_page());
        if aligned > limit {
            Self {
                pages: limit,
                clamped: true,
            }
        } else {
            Self {
                pages: aligned,
                clamped: false,
            }
        }
    }

    /// What the balloon of `current` balloon pages has to do to get here.
    pub fn direction(self, current: u64) -> Direction {
        use core::cmp::Ordering;
        match self.pages.cmp(&current) {
            Ordering::Greater => Direction::Inflate(self.pages - current),
            Ordering::Less => Direction::Deflate(current - self.pages),
            Ordering::Equal => Direction::Reached,
        }
    }
}

/// The way the balloon has to move, with the distance in balloon pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Take this many more balloon pages from the guest.
    Inflate(u64),
    /// Give this many balloon pages back to the guest.
    Deflate(u64),
    /// The balloon is at the target.
    Reached,
}

/// How many guest pages one inflate batch may take.
///
/// `wanted` is the distance to the target and `capacity` the room in one
/// buffer, both in guest pages; `available` is what the guest could still
/// give without reclaim trouble (MemAvailable, in guest pages) and `reserve`
/// the floor the driver never inflates below. Zero means "hold off".
pub fn inflate_budget(wanted: u64, capacity: u64, available: u64, reserve: u64) -> u64 {
    wanted.min(capacity).min(available.saturating_sub(reserve))
}

/// The reserve floor in guest pages: `reserve_kib` rounded up to whole
/// pages of `page_size` bytes.
///
/// It sits on top of the kernel's own reserves: `available` in
/// [`inflate_budget`] is MemAvailable, which already leaves out the zones'
/// high watermarks and lowmem reserves (`totalreserve_pages`).
pub fn reserve_pages(reserve_kib: u64, page_size: u64) -> u64 {
    reserve_kib.saturating_mul(1024).div_ceil(page_size.max(1))
}
