// SPDX-License-Identifier: GPL-2.0

//! VM tests of what the host gets back: a guest whose RAM is 2 MiB
//! hugetlbfs pages (as production guests often are). QEMU gives a huge page
//! back to the host's pool only when all 512 of its 4 KiB PFNs arrive in one
//! buffer: the driver's whole 2 MiB blocks (`buffer_format` full, `auto` on
//! QEMU) do that; 256-PFN buffers (compat, and the C driver) never do.

mod common;

use std::process::Command;

use anyhow::bail;
use anyhow::ensure;
use anyhow::Context;
use common::balloon_to_mib;
use common::boot;
use common::debugfs;
use common::expect_memtotal;
use common::guest_pages;
use common::unload_and_power_off;
use common::vmstat;
use common::GUEST_MIB;
use qemu_test::hostmem::HugetlbPool;
use qemu_test::initramfs;
use qemu_test::scatter;
use qemu_test::Driver;
use qemu_test::GuestShell;
use qemu_test::Result;
use qemu_test::Vm;
use qemu_test::VmConfig;

/// MiB of a hugetlbfs mount's pool in use (the guest's RAM file). The
/// mount has a size limit, so it has a pool of its own: other users of the
/// host's huge pages do not blur it.
fn used_mib(pool: &HugetlbPool) -> Result<u64> {
    let mount = pool.dir().context("the pool has no hugetlbfs mount")?;
    let out = Command::new("stat")
        .args(["-f", "-c", "%b %f"])
        .arg(mount)
        .output()
        .context("running stat -f")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    match (fields.next(), fields.next()) {
        (Some(Ok(blocks)), Some(Ok(free))) => Ok(blocks.saturating_sub(free) * 2),
        _ => bail!("stat -f {}: {text:?}", mount.display()),
    }
}

/// Boots a guest on hugetlbfs and loads our module with `params`; returns
/// it with the MiB of huge pages its RAM holds once it is up.
fn boot_on_hugetlbfs(name: &str, pool: &HugetlbPool, params: &str) -> Result<(Vm, u64)> {
    let mount = pool.dir().context("the pool has no hugetlbfs mount")?;
    let backend = format!(
        "memory-backend-file,id=ram0,size={GUEST_MIB}M,mem-path={},share=on,prealloc=on",
        mount.display()
    );
    let config = VmConfig::new(name)
        .qemu_args([
            "-object",
            backend.as_str(),
            "-machine",
            "memory-backend=ram0",
        ])
        .file("/bin/scatter", initramfs::scatter()?);
    let mut vm = boot(config)?;
    vm.insmod(Driver::Rs.guest_path(), params)?;
    let used = used_mib(pool)?;
    ensure!(
        used == GUEST_MIB,
        "the guest's RAM holds {used} MiB of huge pages, not {GUEST_MIB} (prealloc=on)"
    );
    Ok((vm, used))
}

/// Deflates the whole balloon, checks `MemTotal` is back, then unloads and
/// powers off.
fn deflate_and_power_off(mut vm: Vm, memtotal: u64) -> Result<()> {
    balloon_to_mib(&mut vm, GUEST_MIB)?;
    expect_memtotal(&mut vm, memtotal)?;
    unload_and_power_off(vm, Some(memtotal))
}

/// Balloons 1 GiB out of the guest and returns how many MiB of it came
/// back to the host's huge page pool.
fn returned_mib(vm: &mut Vm, pool: &HugetlbPool, used_before: u64) -> Result<u64> {
    let memtotal = vm.meminfo("MemTotal")?;
    balloon_to_mib(vm, GUEST_MIB - 1024)?;
    expect_memtotal(vm, memtotal - 1024 * 1024)?;
    Ok(used_before.saturating_sub(used_mib(pool)?))
}

#[test]
fn whole_blocks_give_hugetlbfs_pages_back_to_the_host() -> Result<()> {
    // 2 GiB of guest RAM plus slack.
    let pool = HugetlbPool::reserve(GUEST_MIB / 2, true)?;
    let (mut vm, used) = boot_on_hugetlbfs("hugetlbfs_full", &pool, "")?;
    let memtotal = vm.meminfo("MemTotal")?;
    let dmesg = vm.dmesg()?;
    ensure!(
        dmesg.contains("Full buffers"),
        "auto did not pick full buffers on QEMU:\n{dmesg}"
    );
    let inflate_events = vmstat(&mut vm, "balloon_inflate")?;
    let returned = returned_mib(&mut vm, &pool, used)?;
    let blocks = debugfs(&mut vm, "balloon_blocks")?;
    // Blocks are accounted as the balloon core accounts its pages.
    ensure!(
        vm.meminfo("Balloon")? == 1024 * 1024,
        "Balloon: is not the ballooned 1 GiB"
    );
    let events = vmstat(&mut vm, "balloon_inflate")? - inflate_events;
    let ballooned = guest_pages(1024)?;
    ensure!(
        events == ballooned,
        "balloon_inflate grew by {events}, not by the {ballooned} pages ballooned"
    );
    eprintln!("hugetlbfs: {returned} MiB of 1024 back in the host's pool; {blocks} blocks");
    // A freshly booted guest has 1 GiB of free 2 MiB blocks: the whole
    // balloon is whole blocks, each one a host huge page.
    ensure!(
        returned * 100 >= 1024 * 99,
        "only {returned} MiB of the 1024 ballooned came back to the host's huge page pool"
    );
    deflate_and_power_off(vm, memtotal)
}

#[test]
fn a_scattered_guest_still_gives_hugetlbfs_pages_back() -> Result<()> {
    let pool = HugetlbPool::reserve(GUEST_MIB / 2, true)?;
    let (mut vm, used) = boot_on_hugetlbfs("hugetlbfs_scattered", &pool, "")?;
    let memtotal = vm.meminfo("MemTotal")?;
    let free = scatter::scatter_free_memory(&mut vm)?;
    eprintln!(
        "scattered: {} MiB free, {} MiB of it in 2 MiB blocks",
        free.free_mib, free.block_mib
    );
    // What makes the test: the balloon needs 1 GiB of blocks and the guest
    // has far fewer free ones, so the driver must compact for the rest.
    ensure!(
        free.block_mib < 1024 / 2 && free.free_mib > 1024 + 1024 / 4,
        "the scatter left {} MiB free with {} MiB in 2 MiB blocks: not a scattered guest with room for the balloon",
        free.free_mib,
        free.block_mib
    );
    let pageblock_mib = scatter::pageblock_mib(&mut vm)?;
    let returned = returned_mib(&mut vm, &pool, used)?;
    let compacted = debugfs(&mut vm, "blocks_compacted")?;
    eprintln!(
        "hugetlbfs, scattered guest ({pageblock_mib} MiB pageblocks): {returned} MiB of 1024 back, {compacted} blocks compacted for"
    );
    if pageblock_mib <= 2 {
        // A 2 MiB block is a whole pageblock (x86_64, arm64 4k): the driver
        // compacts for every block it lacks, and gets them all.
        ensure!(
            compacted > 0,
            "no block was compacted for, yet the guest had only {} MiB of free blocks",
            free.block_mib
        );
        ensure!(
            returned * 100 >= 1024 * 99,
            "only {returned} MiB of the 1024 ballooned came back to the host's huge page pool from a scattered guest"
        );
    } else {
        // Larger pageblocks (arm64 16k: 32 MiB, 64k: 512 MiB): the kernel's
        // asynchronous compaction, which the driver asks once per block,
        // rarely makes a 2 MiB block inside one, and the driver does not
        // insist (it would stall). What must come back is at least every
        // free block the guest had, less one step of slack.
        ensure!(
            returned + 16 >= free.block_mib.min(1024),
            "only {returned} MiB came back from a scattered guest with {} MiB of free 2 MiB blocks",
            free.block_mib
        );
    }
    deflate_and_power_off(vm, memtotal)
}

#[test]
fn compat_buffers_give_no_hugetlbfs_page_back() -> Result<()> {
    // The control: the same guest with 256-PFN buffers, as the C driver
    // sends. It shows that the figure above comes from the blocks.
    let pool = HugetlbPool::reserve(GUEST_MIB / 2, true)?;
    let (mut vm, used) = boot_on_hugetlbfs("hugetlbfs_compat", &pool, "buffer_format=1")?;
    let memtotal = vm.meminfo("MemTotal")?;
    let returned = returned_mib(&mut vm, &pool, used)?;
    eprintln!("hugetlbfs, compat buffers: {returned} MiB of 1024 back");
    ensure!(
        returned < 1024 / 10,
        "{returned} MiB came back with 256-PFN buffers: the host frees huge pages some other way, so the blocks test proves nothing"
    );
    deflate_and_power_off(vm, memtotal)
}
