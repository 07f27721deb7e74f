// SPDX-License-Identifier: GPL-2.0

//! Feature bits of the virtio balloon device and what this driver asks for.

use bitflags::bitflags;

bitflags! {
    /// Feature bits of a virtio balloon device (virtio spec 5.5.3) plus the
    /// transport bits the balloon cares about.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Features: u64 {
        /// The host must be told before the guest uses deflated pages.
        const MUST_TELL_HOST = 1 << 0;
        /// A virtqueue for reporting guest memory statistics is present.
        const STATS_VQ = 1 << 1;
        /// Deflate the balloon on guest out-of-memory.
        const DEFLATE_ON_OOM = 1 << 2;
        /// The device has support for free page hinting.
        const FREE_PAGE_HINT = 1 << 3;
        /// The guest is using page poisoning.
        const PAGE_POISON = 1 << 4;
        /// The device has support for free page reporting.
        const REPORTING = 1 << 5;
        /// The device conforms to virtio 1.0 or later (transport bit).
        const VERSION_1 = 1 << 32;
        /// The device sits behind an IOMMU (transport bit); the balloon
        /// hands the host guest-physical frame numbers, so it clears it.
        const ACCESS_PLATFORM = 1 << 33;
    }
}

/// The device-specific bit numbers this driver lists in its feature table.
///
/// `VERSION_1` is a transport bit the virtio core negotiates by itself.
pub const DRIVER_FEATURE_BITS: &[u32] = &[
    Features::MUST_TELL_HOST.bits().trailing_zeros(),
    Features::STATS_VQ.bits().trailing_zeros(),
    Features::DEFLATE_ON_OOM.bits().trailing_zeros(),
    Features::FREE_PAGE_HINT.bits().trailing_zeros(),
    Features::PAGE_POISON.bits().trailing_zeros(),
    Features::REPORTING.bits().trailing_zeros(),
];

/// The split-ring transport bit for indirect descriptors.
pub const RING_INDIRECT_DESC_BIT: u32 = 28;

/// The value written to `poison_val`: what freed pages contain.
///
/// Zero when the kernel zeroes pages on free (`init_on_free`), else the
/// page-poisoning byte `0xaa` in every byte, as the C driver decides it.
pub const fn poison_value(init_on_free: bool) -> u32 {
    if init_on_free {
        0
    } else {
        0xaaaa_aaaa
    }
}

/// The feature bits to withdraw before negotiation ends, as the C driver's
/// `validate` decides them.
///
/// `offered` is what the device offers. Without poisoning or zeroing of
/// freed pages there is nothing to tell the host, so `PAGE_POISON` goes;
/// with them, a host that cannot be told the poison value must not get free
/// page reports (it could hand back pages that do not hold the pattern), so
/// `REPORTING` goes. `ACCESS_PLATFORM` always goes (the host gets
/// guest-physical frame numbers). The driver also clears the transport's
/// indirect descriptors ([`RING_INDIRECT_DESC_BIT`]) so that reporting never
/// allocates while adding buffers.
pub fn to_clear(offered: Features, poisons_free_pages: bool) -> Features {
    let mut clear = Features::ACCESS_PLATFORM;
    if !poisons_free_pages {
        clear |= Features::PAGE_POISON;
    } else if !offered.contains(Features::PAGE_POISON) {
        clear |= Features::REPORTING;
    }
    clear
}

impl Features {
    /// The device-specific features this driver implements.
    pub const fn implemented() -> Self {
        Self::MUST_TELL_HOST
            .union(Self::STATS_VQ)
            .union(Self::DEFLATE_ON_OOM)
            .union(Self::FREE_PAGE_HINT)
            .union(Self::PAGE_POISON)
            .union(Self::REPORTING)
    }

    /// The features a driver with [`DRIVER_FEATURE_BITS`] ends up with when the
    /// device offers `offered`, as the virtio core computes it (the device
    /// bits in the table, plus the transport bits the core keeps).
    pub fn negotiate(offered: Self) -> Self {
        let mut wanted = Self::VERSION_1;
        for &bit in DRIVER_FEATURE_BITS {
            wanted |= Self::from_bits_retain(1 << bit);
        }
        offered & wanted
    }

    /// Whether what the driver puts in buffers (PFN arrays, stats, hint
    /// command ids) is little-endian: on a VERSION_1 device it is, on a
    /// legacy one it is in the guest's own order. (The balloon's config
    /// space is always little-endian, a legacy quirk the spec keeps.)
    pub fn little_endian(self) -> bool {
        self.contains(Self::VERSION_1)
    }
}

/// Role of one virtqueue of the balloon device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRole {
    /// Guest to host: PFNs the guest has given up.
    Inflate,
    /// Guest to host: PFNs the guest takes back.
    Deflate,
    /// Guest to host: memory statistics.
    Stats,
    /// Guest to host: free page hints.
    FreePage,
    /// Guest to host: free page reports.
    Reporting,
}

/// Number of queue roles a balloon device can have.
pub const MAX_QUEUES: usize = 5;

/// The virtqueues of a device with the given features, in the order the
/// device numbers them.
///
/// Linux skips the queues of features that were not negotiated, so the
/// indices are dense: with `REPORTING` but not `STATS_VQ` the reporting queue
/// is queue 2. Hosts (QEMU among them) number the queues the same way.
pub fn queue_layout(features: Features) -> ([Option<QueueRole>; MAX_QUEUES], usize) {
    let mut layout = [None; MAX_QUEUES];
    let mut count = 0;
    let mut push = |role| {
        layout[count] = Some(role);
        count += 1;
    };
    push(QueueRole::Inflate);
    push(QueueRole::Deflate);
    if features.contains(Features::STATS_VQ) {
        push(QueueRole::Stats);
    }
    if features.contains(Features::FREE_PAGE_HINT) {
        push(QueueRole::FreePage);
    }
    if features.contains(Features::REPORTING) {
        push(QueueRole::Reporting);
    }
    (layout, count)
}

/// Human-readable names of the set bits, for the probe log line.
pub fn describe(features: Features) -> impl Iterator<Item = &'static str> {
    features.iter_names().map(|(name, _)| name)
}

/// The virtio device id of a memory balloon.
pub const DEVICE_ID: u32 = 5;
