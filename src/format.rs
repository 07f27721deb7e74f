// SPDX-License-Identifier: GPL-2.0

//! How large an inflate or deflate buffer may be, and whether 2 MiB blocks
//! go whole into one buffer: the rules the hosts' balloon devices read
//! buffers by, and the choice among them.
//!
//! What each host does with an inflate or deflate buffer (read in its
//! source):
//!
//! - QEMU, `hw/virtio/virtio-balloon.c`, `virtio_balloon_handle_output`:
//!   reads every PFN of every descriptor of an element (`iov_to_buf` over
//!   `elem->out_sg`), with no length limit, and returns every element. When
//!   guest RAM is backed by pages larger than 4 KiB (hugetlbfs),
//!   `balloon_inflate_page` keeps a bitmap of the partially ballooned host
//!   page (`PartiallyBalloonedPage`) that lives for one element only and is
//!   dropped as soon as a PFN of another host page comes: a 2 MiB host page
//!   is discarded only when its 512 PFNs arrive in one element, one after
//!   the other. `balloon_deflate_page` hints the whole host page back
//!   (`MADV_WILLNEED`). The same code serves virtio-pci and virtio-mmio.
//! - Firecracker, `src/vmm/src/devices/virtio/balloon/device.rs`,
//!   `process_inflate`: reads the head descriptor of a chain only, and skips
//!   one longer than `MAX_PAGES_IN_DESC` (256 PFNs) with `continue` before
//!   `add_used`: the buffer is never returned. `process_deflate_queue`
//!   returns every deflate buffer without reading it.
//! - cloud-hypervisor, `virtio-devices/src/balloon.rs`, `process_queue`:
//!   reads every descriptor of a chain, skips (with a warning) one longer
//!   than `VIRTIO_BALLOON_MAX_PFN_BYTES` (256 PFNs) and returns the chain
//!   anyway: the host never sees those PFNs.
//! - crosvm, `devices/src/virtio/balloon.rs`, `handle_address_chain`: reads
//!   every PFN of a chain with no length limit, merges neighbouring PFNs into
//!   ranges and frees each range whole; every chain is returned.
//! - kvmtool, `virtio/balloon.c`, `virtio_bln_do_io_request`: reads the first
//!   descriptor (`iov[0]`) with no length limit.
//!
//! A buffer of at most 256 PFNs in a single descriptor is read whole by all
//! of them ([`BufferFormat::Compat`]). Larger buffers, and the 2 MiB blocks
//! that free host huge pages, are for QEMU ([`BufferFormat::Full`]).

use crate::pfn::PFNS_PER_BUFFER;

/// Balloon (4 KiB) pages in one 2 MiB block, the host huge page.
pub const PFNS_PER_BLOCK: usize = 512;

/// The most PFNs every known host reads from one descriptor: Firecracker's
/// `MAX_PAGES_IN_DESC`, cloud-hypervisor's `VIRTIO_BALLOON_MAX_PFN_BYTES / 4`,
/// the C driver's `VIRTIO_BALLOON_ARRAY_PFNS_MAX`.
pub const COMPAT_PFNS_PER_BUFFER: usize = 256;

/// How the driver lays out inflate and deflate buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BufferFormat {
    /// At most [`COMPAT_PFNS_PER_BUFFER`] PFNs in one descriptor, 4 KiB
    /// pages only: every host reads it whole and returns it.
    #[default]
    Compat,
    /// Up to [`PFNS_PER_BUFFER`] PFNs in one descriptor, with 2 MiB blocks
    /// whose [`PFNS_PER_BLOCK`] PFNs always go together into one buffer, so
    /// that QEMU frees the host huge page behind each.
    Full,
}

impl BufferFormat {
    /// The most PFNs one inflate or deflate buffer may hold.
    pub const fn pfns_per_buffer(self) -> usize {
        match self {
            BufferFormat::Compat => COMPAT_PFNS_PER_BUFFER,
            BufferFormat::Full => PFNS_PER_BUFFER,
        }
    }

    /// Whether the driver inflates whole 2 MiB blocks.
    pub const fn whole_blocks(self) -> bool {
        match self {
            BufferFormat::Compat => false,
            BufferFormat::Full => true,
        }
    }
}

/// The `buffer_format` module parameter: a format, or `auto` to pick one
/// from what the device tells of its host ([`pick_format`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FormatChoice {
    /// Pick from the transport and the device's identity.
    #[default]
    Auto,
    /// Use this format whatever the host.
    Fixed(BufferFormat),
}

/// A `buffer_format` value that is none of 0 (auto), 1 (compat), 2 (full).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownFormat;

impl FormatChoice {
    /// The choice for the integer `buffer_format` module parameter (the
    /// kernel's module parameters are integers): 0 `auto`, 1 `compat`,
    /// 2 `full`.
    pub fn from_param(value: u32) -> Result<Self, UnknownFormat> {
        match value {
            0 => Ok(FormatChoice::Auto),
            1 => Ok(FormatChoice::Fixed(BufferFormat::Compat)),
            2 => Ok(FormatChoice::Fixed(BufferFormat::Full)),
            _ => Err(UnknownFormat),
        }
    }
}

/// PCI subsystem vendor of every virtio-pci device seen (Red Hat/Qumranet).
pub const PCI_SUBSYSTEM_VENDOR_VIRTIO: u16 = 0x1af4;

/// QEMU's default PCI subsystem device (`PCI_SUBDEVICE_ID_QEMU`, set by
/// `pci_set_default_subsystem_id` in `hw/pci/pci.c`), which a modern-only
/// virtio-pci device keeps: `virtio_pci_device_plugged` in
/// `hw/virtio/virtio-pci.c` overwrites it with the virtio device ID only
/// for legacy and transitional devices.
pub const PCI_SUBSYSTEM_DEVICE_QEMU: u16 = 0x1100;

/// The PCI subsystem device of a legacy or transitional virtio balloon: the
/// balloon's virtio ID (QEMU's transitional device, kvmtool).
pub const PCI_SUBSYSTEM_DEVICE_LEGACY_BALLOON: u16 = 5;

/// The virtio-mmio `VendorID` QEMU reports (`VIRT_VENDOR`, "QEMU", in
/// `hw/virtio/virtio-mmio.c`). Firecracker reports 0 and crosvm `CRVM`.
pub const MMIO_VENDOR_QEMU: u32 = 0x554d_4551;

/// The virtio-mmio `VendorID` crosvm reports ("CRVM").
pub const MMIO_VENDOR_CROSVM: u32 = 0x4d56_5243;

/// What the driver can tell of the host from the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// virtio-pci with the PCI function's subsystem IDs.
    ///
    /// QEMU: 0x1af4 with 0x1100 (modern-only device, e.g. behind a PCIe
    /// root port or `disable-legacy=on`) or with 5, the balloon's virtio ID
    /// (transitional device). cloud-hypervisor
    /// (`virtio-devices/src/transport/pci_device.rs`), Firecracker
    /// (`src/vmm/src/devices/virtio/transport/pci/device.rs`) and crosvm
    /// (`devices/src/virtio/virtio_pci_device.rs`): 0x1af4 with 0x1045
    /// (0x1040 + the virtio ID). kvmtool's legacy device also uses 0x1af4
    /// with 5.
    Pci {
        /// PCI subsystem vendor ID.
        subsystem_vendor: u16,
        /// PCI subsystem device ID.
        subsystem_device: u16,
    },
    /// virtio-mmio with its `VendorID` register.
    Mmio {
        /// The `VendorID` register.
        vendor: u32,
    },
    /// Any other transport (virtio-ccw, ...).
    Other,
}

/// The format for `choice` on a device reached through `transport`.
///
/// `auto` picks [`BufferFormat::Full`] where every host known to show the
/// device's identity reads a large single-descriptor buffer whole:
/// - virtio-pci 0x1af4:0x1100, QEMU's modern-only device;
/// - virtio-pci 0x1af4:0x0005, a transitional device: QEMU's (every
///   descriptor, no limit) or kvmtool's (the first descriptor, no limit;
///   the driver's buffers are one descriptor);
/// - virtio-mmio "QEMU", and "CRVM" (crosvm: no limit).
///
/// cloud-hypervisor, Firecracker and crosvm share 0x1af4:0x1045 over PCI,
/// and Firecracker reports vendor 0 over virtio-mmio: nothing tells the
/// two hosts that read at most 256 PFNs from the one that does not, so
/// those, and every host not listed, get [`BufferFormat::Compat`].
pub fn pick_format(choice: FormatChoice, transport: Transport) -> BufferFormat {
    match choice {
        FormatChoice::Fixed(format) => format,
        FormatChoice::Auto => match transport {
            Transport::Pci {
                subsystem_vendor: PCI_SUBSYSTEM_VENDOR_VIRTIO,
                subsystem_device: PCI_SUBSYSTEM_DEVICE_QEMU | PCI_SUBSYSTEM_DEVICE_LEGACY_BALLOON,
            }
            | Transport::Mmio {
                vendor: MMIO_VENDOR_QEMU | MMIO_VENDOR_CROSVM,
            } => BufferFormat::Full,
            _ => BufferFormat::Compat,
        },
    }
}
