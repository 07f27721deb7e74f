// SPDX-License-Identifier: GPL-2.0

//! Guest RAM as the host holds it: giving ranges back with
//! `fallocate(PUNCH_HOLE)` on the memory's files, and how much of those
//! files is allocated.

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use anyhow::anyhow;
use anyhow::Result;
use vm_memory::GuestAddress;
use vm_memory::GuestMemoryBackend;
use vm_memory::GuestMemoryMmap;
use vm_memory::GuestMemoryRegion;

/// Gives the guest range `[address, address + length)` back to the host:
/// punches it out of the file behind each region it lies in, as QEMU's
/// `ram_block_discard_range` does for file-backed RAM.
pub fn punch(memory: &GuestMemoryMmap, address: u64, length: u64) -> Result<()> {
    let mut address = address;
    let end = address
        .checked_add(length)
        .ok_or_else(|| anyhow!("range {address:#x}+{length:#x} wraps"))?;
    while address < end {
        let region = memory
            .find_region(GuestAddress(address))
            .ok_or_else(|| anyhow!("guest address {address:#x} is in no memory region"))?;
        let region_start = region.start_addr().0;
        let region_end = region_start + region.len();
        let chunk_end = end.min(region_end);
        let file_offset = region
            .file_offset()
            .ok_or_else(|| anyhow!("region at {region_start:#x} has no file"))?;
        let offset = file_offset.start() + (address - region_start);
        let bytes = chunk_end - address;
        // SAFETY: fallocate on a file descriptor we own; it does not touch
        // our memory (the mapping sees zeros afterwards, as QEMU's does).
        let rc = unsafe {
            libc::fallocate(
                file_offset.file().as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                i64::try_from(offset)?,
                i64::try_from(bytes)?,
            )
        };
        if rc != 0 {
            return Err(anyhow!(
                "fallocate(PUNCH_HOLE) at file offset {offset:#x}: {}",
                std::io::Error::last_os_error()
            ));
        }
        address = chunk_end;
    }
    Ok(())
}

/// Bytes allocated in the files behind guest RAM (each file counted once).
pub fn allocated_bytes(memory: &GuestMemoryMmap) -> Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0;
    for region in memory.iter() {
        let Some(file_offset) = region.file_offset() else {
            continue;
        };
        let metadata = file_offset.file().metadata()?;
        if seen.insert((metadata.dev(), metadata.ino())) {
            total += metadata.blocks() * 512;
        }
    }
    Ok(total)
}
