// SPDX-License-Identifier: GPL-2.0

//! VM tests of `virtio_balloon_rs.ko` against QEMU's virtio-balloon device.
//!
//! Each test boots its own 2 GiB guest under QEMU, loads our module and
//! checks what a user sees: the host's `actual` (QMP `query-balloon`), the
//! guest's `MemTotal` and `Balloon:` lines, vmstat counters, sysfs and the
//! kernel log.

mod common;

use std::time::Duration;
use std::time::Instant;

use anyhow::ensure;
use balloon_logic::features::{Features, DRIVER_FEATURE_BITS};
use common::actual_mib;
use common::balloon_to_mib;
use common::boot;
use common::bound_device;
use common::expect_exact_target;
use common::expect_memtotal;
use common::guest_pages;
use common::negotiated_features;
use common::settle_at_impossible_target;
use common::start_hog;
use common::unload_and_power_off;
use common::vmstat;
use common::GUEST_MIB;
use qemu_test::initramfs::RS_MODULE_PATH;
use qemu_test::scaled;
use qemu_test::Driver;
use qemu_test::GuestShell;
use qemu_test::Result;
use qemu_test::Vm;
use qemu_test::VmConfig;
use qemu_test::MIB;

const RS: Driver = Driver::Rs;

/// `Balloon:` of /proc/meminfo in kB (`GuestShell::meminfo` folds the per-CPU
/// vmstat deltas first, so it is exact).
fn balloon_kb(vm: &mut Vm) -> Result<u64> {
    vm.meminfo("Balloon")
}

#[test]
fn module_binds_negotiates_and_unloads_cleanly() -> Result<()> {
    let mut vm = boot(VmConfig::new("binds"))?;
    vm.load(RS)?;
    let dev = bound_device(&mut vm)?;
    let dmesg = vm.dmesg()?;
    ensure!(
        dmesg.contains(&format!("virtio_balloon_rs {dev}: bound: features")),
        "no 'bound' line in dmesg:\n{dmesg}"
    );
    let device_id = vm.sh_ok(&format!("cat /sys/bus/virtio/devices/{dev}/device"))?;
    ensure!(
        device_id.trim() == "0x0005",
        "bound to device id {device_id}"
    );

    let negotiated = negotiated_features(&mut vm)?;
    let device_bits = negotiated & ((1 << 24) - 1);
    let asked = DRIVER_FEATURE_BITS
        .iter()
        .fold(0u64, |acc, bit| acc | 1 << bit);
    ensure!(device_bits & !asked == 0, "device-specific bits {device_bits:#x} include some the driver did not ask for ({asked:#x})");
    ensure!(
        negotiated & Features::VERSION_1.bits() != 0,
        "VERSION_1 not negotiated: {negotiated:#x}"
    );
    ensure!(
        negotiated & Features::ACCESS_PLATFORM.bits() == 0,
        "ACCESS_PLATFORM must be cleared: {negotiated:#x}"
    );
    let lsmod = vm.sh_ok("lsmod")?;
    ensure!(lsmod.contains("virtio_balloon_rs"), "lsmod: {lsmod}");

    vm.rmmod("virtio_balloon_rs")?;
    let drivers = vm.sh_ok("ls /sys/bus/virtio/drivers/")?;
    ensure!(
        !drivers.contains("virtio_balloon_rs"),
        "driver still registered after rmmod: {drivers}"
    );
    let lsmod = vm.sh_ok("lsmod")?;
    ensure!(!lsmod.contains("virtio_balloon_rs"), "lsmod: {lsmod}");
    // The module can come back.
    vm.load(RS)?;
    bound_device(&mut vm)?;
    unload_and_power_off(vm, None)
}

#[test]
fn follows_each_target_exactly() -> Result<()> {
    let mut vm = boot(VmConfig::new("targets"))?;
    let memtotal = vm.meminfo("MemTotal")?;
    vm.load(RS)?;
    for target in [1536u64, 1024, 512, 2048] {
        vm.qmp().balloon(target * MIB)?;
        let took = expect_exact_target(&mut vm, memtotal, target)?;
        eprintln!("target {target} MiB reached in {took:?}");
    }
    let inflated = vmstat(&mut vm, "balloon_inflate")?;
    let deflated = vmstat(&mut vm, "balloon_deflate")?;
    // 512 + 512 + 512 MiB in, 1536 MiB out, in guest pages.
    ensure!(
        inflated == guest_pages(1536)? && deflated == guest_pages(1536)?,
        "vmstat balloon_inflate {inflated}, balloon_deflate {deflated}"
    );
    unload_and_power_off(vm, None)
}

#[test]
fn rmmod_while_inflated_gives_everything_back() -> Result<()> {
    let mut vm = boot(VmConfig::new("rmmod_inflated"))?;
    let memtotal = vm.meminfo("MemTotal")?;
    vm.load(RS)?;
    balloon_to_mib(&mut vm, 1024)?;
    expect_memtotal(&mut vm, memtotal - 1024 * 1024)?;
    vm.rmmod("virtio_balloon_rs")?;
    expect_memtotal(&mut vm, memtotal)?;
    ensure!(balloon_kb(&mut vm)? == 0, "Balloon: not 0 after rmmod");
    let actual = actual_mib(&mut vm)?;
    ensure!(
        actual == GUEST_MIB,
        "actual {actual} MiB after rmmod, expected {GUEST_MIB}"
    );
    let inflated = vmstat(&mut vm, "balloon_inflate")?;
    let deflated = vmstat(&mut vm, "balloon_deflate")?;
    ensure!(
        inflated == deflated && inflated == guest_pages(1024)?,
        "pages lost: inflated {inflated}, deflated {deflated}"
    );
    vm.check_clean()?;
    vm.shutdown()
}

#[test]
fn target_set_before_insmod_is_reached() -> Result<()> {
    let mut vm = boot(VmConfig::new("preset_target"))?;
    let memtotal = vm.meminfo("MemTotal")?;
    vm.qmp().balloon(1024 * MIB)?;
    std::thread::sleep(Duration::from_millis(500));
    ensure!(
        actual_mib(&mut vm)? == GUEST_MIB,
        "without a driver nothing may be ballooned"
    );
    vm.load(RS)?;
    vm.qmp()
        .wait_actual(1024 * MIB, common::balloon_timeout())?;
    expect_memtotal(&mut vm, memtotal - 1024 * 1024)?;
    unload_and_power_off(vm, None)
}

#[test]
fn rapidly_changing_targets_settle_on_the_last() -> Result<()> {
    let mut vm = boot(VmConfig::new("rapid_targets"))?;
    let memtotal = vm.meminfo("MemTotal")?;
    vm.load(RS)?;
    for (i, target) in [1900u64, 700, 1800, 900, 2048, 600, 1700, 1100, 1300, 1200]
        .iter()
        .enumerate()
    {
        vm.qmp().balloon(target * MIB)?;
        std::thread::sleep(Duration::from_millis(5 + 20 * (i as u64 % 3)));
    }
    vm.qmp()
        .wait_actual(1200 * MIB, common::balloon_timeout())?;
    std::thread::sleep(Duration::from_millis(500));
    ensure!(actual_mib(&mut vm)? == 1200, "did not stay at 1200 MiB");
    expect_memtotal(&mut vm, memtotal - 848 * 1024)?;
    unload_and_power_off(vm, Some(memtotal))
}

#[test]
fn impossible_target_settles_without_oom_and_recovers() -> Result<()> {
    let mut vm = boot(VmConfig::new("impossible_target"))?;
    let memtotal = vm.meminfo("MemTotal")?;
    vm.load(RS)?;
    // The C driver panics the guest here ("System is deadlocked on memory").
    let settled = settle_at_impossible_target(&mut vm)?;
    eprintln!("asked for 10 MiB, settled at {settled} MiB");
    // RAM the kernel never manages (memmap, KASAN shadow on a debug
    // kernel...) is not in MemTotal and cannot be ballooned: "most" is of
    // the rest.
    let unmanaged_mib = GUEST_MIB - memtotal / 1024;
    ensure!(settled > 10 && settled < unmanaged_mib + 512, "settled at {settled} MiB ({unmanaged_mib} MiB unmanaged): expected to give most memory but keep a reserve");
    // The guest is alive and not starved.
    // The reserve is 16 MiB of MemAvailable when the balloon stops; allow
    // for what the shell and the kernel used since.
    let available = vm.meminfo("MemAvailable")?;
    ensure!(
        available >= 8 * 1024,
        "MemAvailable {available} kB: the balloon ate into the reserve"
    );
    // Userspace can still allocate and run.
    let hog = vm.sh_ok("memhog 4 0")?;
    eprintln!("memhog 4: {}", hog.trim());
    ensure!(vmstat(&mut vm, "oom_kill")? == 0, "an OOM kill happened");
    let dmesg = vm.dmesg()?;
    ensure!(
        !dmesg.contains("invoked oom-killer") && !dmesg.contains("Out of memory"),
        "OOM in dmesg:\n{dmesg}"
    );
    let puff = dmesg.matches("out of puff").count();
    ensure!(
        (1..=12).contains(&puff),
        "expected a few rate-limited back-off lines, got {puff}"
    );
    // It keeps honouring new targets.
    balloon_to_mib(&mut vm, 1024)?;
    expect_memtotal(&mut vm, memtotal - 1024 * 1024)?;
    balloon_to_mib(&mut vm, GUEST_MIB)?;
    expect_memtotal(&mut vm, memtotal)?;
    unload_and_power_off(vm, None)
}

#[test]
fn compaction_migrates_balloon_pages_and_keeps_actual() -> Result<()> {
    let mut vm = boot(VmConfig::new("compaction"))?;
    let memtotal = vm.meminfo("MemTotal")?;
    // Single 4 KiB balloon pages migrate; whole 2 MiB blocks (the `full`
    // format) are unmovable, like vmw_balloon's: balloon single pages only.
    vm.insmod(RS_MODULE_PATH, "buffer_format=1")?;
    // Compaction only moves balloon pages that sit below free memory.
    // Interleave: a hog, a slice of balloon, a hog, a slice... then free the
    // hogs, leaving holes between the balloon slices wherever the allocator
    // put them.
    for (round, target) in [1898u64, 1748, 1598, 1448].into_iter().enumerate() {
        let got = start_hog(&mut vm, 200, 600, &format!("/tmp/hog{round}.log"))?;
        ensure!(got == 200, "memhog got {got} of 200 MiB");
        balloon_to_mib(&mut vm, target)?;
    }
    vm.sh_ok("killall memhog; while pidof memhog > /dev/null; do sleep 0.1; done")?;
    let before = vmstat(&mut vm, "balloon_migrate")?;
    vm.run(
        "echo 1 > /proc/sys/vm/compact_memory",
        scaled(Duration::from_secs(120)),
    )?;
    let after = vmstat(&mut vm, "balloon_migrate")?;
    eprintln!("balloon_migrate {before} -> {after}");
    ensure!(
        after > before,
        "compaction migrated no balloon page ({before} -> {after})"
    );
    ensure!(
        actual_mib(&mut vm)? == 1448,
        "actual moved during compaction"
    );
    expect_memtotal(&mut vm, memtotal - 600 * 1024)?;
    ensure!(balloon_kb(&mut vm)? == 600 * 1024, "Balloon: changed");
    unload_and_power_off(vm, Some(memtotal))
}

#[test]
fn rmmod_during_inflation_and_config_changes_is_clean() -> Result<()> {
    let mut vm = boot(VmConfig::new("rmmod_busy"))?;
    let memtotal = vm.meminfo("MemTotal")?;
    for round in 0..3 {
        vm.load(RS)?;
        // Start a large inflation, unload while it runs, and keep changing
        // the target while the driver goes away.
        vm.qmp().balloon(512 * MIB)?;
        std::thread::sleep(Duration::from_millis(100 + 150 * round));
        vm.spawn("rmmod virtio_balloon_rs", "/tmp/rmmod.log")?;
        for target in [900u64, 1400, 700, 2048] {
            vm.qmp().balloon(target * MIB)?;
            std::thread::sleep(Duration::from_millis(20));
        }
        let start = Instant::now();
        while vm.sh_ok("lsmod")?.contains("virtio_balloon_rs") {
            ensure!(
                start.elapsed() < scaled(Duration::from_secs(60)),
                "rmmod did not finish"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = vm.sh_ok("cat /tmp/rmmod.log")?;
        ensure!(log.trim().is_empty(), "rmmod said: {log}");
        expect_memtotal(&mut vm, memtotal)?;
        ensure!(balloon_kb(&mut vm)? == 0, "pages left in the balloon");
        ensure!(actual_mib(&mut vm)? == GUEST_MIB, "actual not back to RAM");
    }
    let inflated = vmstat(&mut vm, "balloon_inflate")?;
    let deflated = vmstat(&mut vm, "balloon_deflate")?;
    ensure!(
        inflated == deflated,
        "pages lost: inflated {inflated}, deflated {deflated}"
    );
    vm.check_clean()?;
    vm.shutdown()
}

#[test]
fn poweroff_with_the_balloon_inflated_is_clean() -> Result<()> {
    let mut vm = boot(VmConfig::new("poweroff_inflated"))?;
    vm.load(RS)?;
    balloon_to_mib(&mut vm, 1024)?;
    // Keep the work busy while the system goes down.
    vm.qmp().balloon(512 * MIB)?;
    vm.check_clean()?;
    // `shutdown` powers off with the module loaded (the driver's shutdown
    // callback runs) and checks what the kernel printed meanwhile.
    vm.shutdown()
}

#[test]
fn legacy_device_follows_targets() -> Result<()> {
    // A transitional device in legacy mode: no VERSION_1, PFNs in guest
    // byte order, config space still little-endian.
    let mut vm =
        boot(VmConfig::new("legacy").balloon_options("disable-modern=on,disable-legacy=off"))?;
    let memtotal = vm.meminfo("MemTotal")?;
    vm.load(RS)?;
    let negotiated = negotiated_features(&mut vm)?;
    ensure!(
        negotiated & Features::VERSION_1.bits() == 0,
        "VERSION_1 negotiated on a legacy device: {negotiated:#x}"
    );
    for target in [1536u64, 1024, 2048] {
        balloon_to_mib(&mut vm, target)?;
        expect_memtotal(&mut vm, memtotal - (GUEST_MIB - target) * 1024)?;
    }
    unload_and_power_off(vm, None)
}
