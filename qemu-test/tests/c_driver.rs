// SPDX-License-Identifier: GPL-2.0

//! The harness checked against the reference: the in-tree C driver.
//!
//! A 2 GiB guest loads `virtio_balloon.ko`, is ballooned to 1 GiB and back
//! over QMP, and must show what a user sees of a working balloon: the host's
//! `actual`, the guest's `MemTotal` and `Balloon:` lines, the vmstat
//! counters, a clean kernel log.

mod common;

use anyhow::ensure;
use common::actual_mib;
use common::balloon_to_mib;
use common::expect_memtotal;
use common::guest_pages;
use common::vmstat;
use common::GUEST_MIB;
use qemu_test::Driver;
use qemu_test::GuestShell;
use qemu_test::Result;
use qemu_test::Vm;
use qemu_test::VmConfig;

/// KiB in 1 GiB, the amount ballooned.
const GIB_KB: u64 = 1024 * 1024;

#[test]
fn c_driver_inflates_and_deflates() -> Result<()> {
    // The Rust module is not needed here, so this test runs before it exists.
    let mut vm = Vm::boot(VmConfig::new("c_driver").rs_module(false))?;
    eprintln!("booted in {:?}", vm.boot_time());

    ensure!(
        actual_mib(&mut vm)? == GUEST_MIB,
        "without a driver, actual must be the whole guest"
    );
    let memtotal = vm.meminfo("MemTotal")?;
    vm.load(Driver::C)?;
    let lsmod = vm.sh_ok("lsmod")?;
    ensure!(
        lsmod.contains("virtio_balloon"),
        "lsmod does not list virtio_balloon:\n{lsmod}"
    );
    expect_memtotal(&mut vm, memtotal)?;

    let inflate = balloon_to_mib(&mut vm, 1024)?;
    eprintln!("inflate 2048 -> 1024 MiB took {inflate:?}");
    // The C driver takes ballooned pages out of the managed count, so
    // MemTotal drops by exactly the ballooned size.
    expect_memtotal(&mut vm, memtotal - GIB_KB)?;
    let balloon_kb = vm.meminfo("Balloon")?;
    ensure!(
        balloon_kb == GIB_KB,
        "meminfo Balloon: {balloon_kb} kB, expected {GIB_KB} kB"
    );
    let inflated_pages = vmstat(&mut vm, "balloon_inflate")?;
    let expected_pages = guest_pages(1024)?;
    ensure!(
        inflated_pages == expected_pages,
        "vmstat balloon_inflate is {inflated_pages}, expected {expected_pages}"
    );

    let deflate = balloon_to_mib(&mut vm, GUEST_MIB)?;
    eprintln!("deflate 1024 -> 2048 MiB took {deflate:?}");
    expect_memtotal(&mut vm, memtotal)?;
    ensure!(vm.meminfo("Balloon")? == 0, "balloon not empty");

    // Unloading the driver with pages in the balloon gives them back.
    balloon_to_mib(&mut vm, 1536)?;
    expect_memtotal(&mut vm, memtotal - GIB_KB / 2)?;
    vm.rmmod(Driver::C.module_name())?;
    expect_memtotal(&mut vm, memtotal)?;
    let actual = actual_mib(&mut vm)?;
    ensure!(
        actual == GUEST_MIB,
        "after rmmod actual is {actual} MiB, expected {GUEST_MIB}"
    );

    vm.check_clean()?;
    vm.shutdown()
}
