// SPDX-License-Identifier: GPL-2.0

//! A guest whose free memory is scattered: what a workload leaves behind,
//! and what a balloon on huge host pages must cope with. Used by the bench
//! and by the host-memory VM test.

use anyhow::ensure;
use anyhow::Context;

use crate::shell::GuestShell;
use crate::Result;
use crate::Vm;

/// The scatter helper keeps one page of this many: every 2 MiB block it
/// touched keeps 32 held pages and is no longer free.
pub const KEEP_EVERY: u64 = 16;

/// Guest free memory the scatter helper leaves untouched, in MiB.
pub const SPARE_MIB: u64 = 96;

/// The guest's THP switch (absent on the test kernel).
const THP: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// The guest's free memory, from `/proc/buddyinfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeMemory {
    /// All of it, in MiB.
    pub free_mib: u64,
    /// The part in free blocks of 2 MiB or more, in MiB.
    pub block_mib: u64,
}

/// Reads the guest's free memory and how much of it is in 2 MiB blocks.
pub fn free_memory(vm: &mut Vm) -> Result<FreeMemory> {
    let text = vm.sh_ok("cat /proc/buddyinfo")?;
    let page_kib = crate::kernel::guest_kernel()?.config.page_size() / 1024;
    let (mut free_kib, mut block_kib) = (0, 0);
    for line in text.lines().filter(|l| l.starts_with("Node")) {
        // "Node 0, zone   Normal  <order 0> <order 1> ..."
        for (order, count) in line.split_whitespace().skip(4).enumerate() {
            let count: u64 = count
                .parse()
                .with_context(|| format!("guest /proc/buddyinfo: {line:?}"))?;
            let block_of_order_kib = page_kib << order;
            let kib = count * block_of_order_kib;
            free_kib += kib;
            if block_of_order_kib >= 2048 {
                block_kib += kib;
            }
        }
    }
    ensure!(
        free_kib > 0,
        "no free memory in the guest's /proc/buddyinfo:\n{text}"
    );
    Ok(FreeMemory {
        free_mib: free_kib / 1024,
        block_mib: block_kib / 1024,
    })
}

/// The guest's pageblock in MiB, from `/proc/pagetypeinfo` ("Page block
/// order: N"): compaction moves pages within pageblocks, and the balloon
/// keeps asking it for a 2 MiB block only where a block is a whole
/// pageblock or more (2 MiB on x86_64 and arm64 4k, 32 MiB on 16k, 512 MiB
/// on 64k).
pub fn pageblock_mib(vm: &mut Vm) -> Result<u64> {
    let text = vm.sh_ok("head -2 /proc/pagetypeinfo")?;
    let order: u32 = text
        .lines()
        .find_map(|line| line.strip_prefix("Page block order:"))
        .and_then(|order| order.trim().parse().ok())
        .with_context(|| format!("no page block order in /proc/pagetypeinfo: {text:?}"))?;
    let page_size = crate::kernel::guest_kernel()?.config.page_size();
    Ok((page_size << order) / crate::MIB)
}

/// Scatters the guest's free memory: all of it but [`SPARE_MIB`] is
/// written, then all but one page of every [`KEEP_EVERY`] given back, and
/// the held pages kept for the VM's life. First the guest's proactive
/// compaction is switched off, so the guest does not quietly rebuild its
/// free blocks before the balloon starts (it did, by hundreds of MiB, from
/// run to run), and its transparent huge pages where it has them
/// (Debian's kernel): on a THP the pages given back stay allocated until a
/// deferred split. The VM needs `/bin/scatter`
/// ([`crate::initramfs::scatter`]). Returns the free memory the balloon
/// then finds.
pub fn scatter_free_memory(vm: &mut Vm) -> Result<FreeMemory> {
    vm.sh_ok("echo 0 > /proc/sys/vm/compaction_proactiveness")?;
    vm.sh_ok(&format!("if [ -e {THP} ]; then echo never > {THP}; fi"))?;
    let free_mib = vm.meminfo("MemFree")? / 1024;
    ensure!(
        free_mib > SPARE_MIB * 2,
        "the guest has only {free_mib} MiB free"
    );
    let out = vm.sh_ok(&format!("scatter {} {KEEP_EVERY}", free_mib - SPARE_MIB))?;
    ensure!(out.contains("scatter: holding"), "scatter said {out:?}");
    free_memory(vm)
}
