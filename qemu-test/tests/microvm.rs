// SPDX-License-Identifier: GPL-2.0

//! VM tests on QEMU's `microvm` machine, where the balloon is
//! `virtio-balloon-device` on a virtio-mmio transport (no PCI): the driver
//! binds over virtio-mmio, `auto` picks full buffers from the transport's
//! `VendorID` ("QEMU"), the balloon follows the host's targets exactly,
//! stats reach the host over the stats queue, and compat buffers work too;
//! on QEMU's default (legacy) virtio-mmio transport and on the modern one.
//! See [`Machine::Mmio`] for how the machine is set up.

mod common;

use std::time::Duration;
use std::time::Instant;

use anyhow::anyhow;
use anyhow::ensure;
use common::balloon_to_mib;
use common::boot;
use common::bound_device;
use common::expect_exact_target;
use common::guest_stats;
use common::last_update;
use common::negotiated_features;
use common::stat;
use common::unload_and_power_off;
use common::GUEST_MIB;
use qemu_test::qmp::BALLOON_QOM_PATH;
use qemu_test::scaled;
use qemu_test::Driver;
use qemu_test::GuestShell;
use qemu_test::Machine;
use qemu_test::Result;
use qemu_test::Vm;
use qemu_test::VmConfig;
use serde_json::json;

/// QEMU's virtio-mmio `VendorID`, "QEMU" read as a little-endian u32.
const QEMU_MMIO_VENDOR: &str = "0x554d4551";

/// [`boot`]s a microvm guest and loads our module with `params`.
fn boot_microvm(name: &str, params: &str) -> Result<Vm> {
    let mut vm = boot(VmConfig::new(name).machine(Machine::Mmio))?;
    vm.insmod(Driver::Rs.guest_path(), params)?;
    Ok(vm)
}

/// Checks that our driver is bound to a balloon on virtio-mmio with QEMU's
/// vendor ID and announced `format` in its `bound:` line.
fn expect_bound_over_mmio(vm: &mut Vm, format: &str) -> Result<()> {
    let dev = bound_device(vm)?;
    let sysfs = format!("/sys/bus/virtio/devices/{dev}");
    let path = vm.sh_ok(&format!("readlink -f {sysfs}"))?;
    // x86's microvm: a command-line device, `/sys/devices/platform/virtio-mmio.<n>`;
    // arm64's virt: a device-tree node, `/sys/devices/platform/<addr>.virtio_mmio`.
    ensure!(
        path.contains("/virtio-mmio.") || path.contains(".virtio_mmio/"),
        "{dev} is not on virtio-mmio: {path}"
    );
    let device = vm.sh_ok(&format!("cat {sysfs}/device"))?;
    ensure!(device.trim() == "0x0005", "{dev} has device id {device}");
    let vendor = vm.sh_ok(&format!("cat {sysfs}/vendor"))?;
    ensure!(
        vendor.trim() == QEMU_MMIO_VENDOR,
        "{dev} has vendor {vendor}, expected QEMU's {QEMU_MMIO_VENDOR}"
    );
    let dmesg = vm.dmesg()?;
    let bound = dmesg
        .lines()
        .find(|line| line.contains(&format!("virtio_balloon_rs {dev}: bound: features")))
        .ok_or_else(|| anyhow!("no 'bound' line for {dev} in dmesg:\n{dmesg}"))?;
    ensure!(
        bound.contains(format),
        "expected {format:?} in the bound line: {bound}"
    );
    Ok(())
}

/// Balloons 2048 -> 1024 MiB and back, checking `actual`, `MemTotal` and
/// `Balloon:` exactly at each end.
fn inflate_and_deflate(vm: &mut Vm, memtotal_kb: u64) -> Result<()> {
    let inflate = balloon_to_mib(vm, GUEST_MIB - 1024)?;
    expect_exact_target(vm, memtotal_kb, GUEST_MIB - 1024)?;
    let deflate = balloon_to_mib(vm, GUEST_MIB)?;
    expect_exact_target(vm, memtotal_kb, GUEST_MIB)?;
    eprintln!("1 GiB over virtio-mmio: inflated in {inflate:?}, deflated in {deflate:?}");
    Ok(())
}

#[test]
fn microvm_binds_over_mmio_follows_targets_and_sends_stats() -> Result<()> {
    let mut vm = boot_microvm("microvm_auto", "")?;
    // virtio-mmio's VendorID says QEMU, which reads a buffer whole.
    expect_bound_over_mmio(&mut vm, "Full buffers of 4096 pages")?;
    ensure!(
        negotiated_features(&mut vm)? & 1 << 1 != 0,
        "STATS_VQ not negotiated"
    );
    let memtotal = vm.meminfo("MemTotal")?;
    inflate_and_deflate(&mut vm, memtotal)?;

    // Stats over the stats queue, taken at 1 GiB so that they must show the
    // ballooned guest.
    balloon_to_mib(&mut vm, GUEST_MIB - 1024)?;
    let ballooned_total = memtotal - 1024 * 1024;
    expect_exact_target(&mut vm, memtotal, GUEST_MIB - 1024)?;
    vm.qmp()
        .qom_set(BALLOON_QOM_PATH, "guest-stats-polling-interval", json!(1))?;
    let start = Instant::now();
    let first = last_update(&guest_stats(&mut vm)?);
    let stats = loop {
        // A report newer than the first one seen was made at 1 GiB.
        let stats = guest_stats(&mut vm)?;
        if last_update(&stats) > first.max(1) {
            break stats;
        }
        ensure!(
            start.elapsed() < scaled(Duration::from_secs(10)),
            "no fresh guest-stats in time: {stats}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("guest-stats over virtio-mmio: {stats}");
    let total = stat(&stats, "stat-total-memory")?;
    ensure!(
        total == ballooned_total * 1024,
        "stat-total-memory {total}, MemTotal {} bytes",
        ballooned_total * 1024
    );
    ensure!(
        stat(&stats, "stat-free-memory")? < total,
        "free memory above total: {stats}"
    );
    vm.qmp()
        .qom_set(BALLOON_QOM_PATH, "guest-stats-polling-interval", json!(0))?;
    balloon_to_mib(&mut vm, GUEST_MIB)?;
    expect_exact_target(&mut vm, memtotal, GUEST_MIB)?;

    unload_and_power_off(vm, Some(memtotal))
}

#[test]
fn microvm_compat_buffers_reach_every_target() -> Result<()> {
    let mut vm = boot_microvm("microvm_compat", "buffer_format=1")?;
    expect_bound_over_mmio(&mut vm, "Compat buffers of 256 pages")?;
    let memtotal = vm.meminfo("MemTotal")?;
    inflate_and_deflate(&mut vm, memtotal)?;
    unload_and_power_off(vm, Some(memtotal))
}

#[test]
fn microvm_modern_mmio_negotiates_version_1_and_reaches_every_target() -> Result<()> {
    // QEMU's virtio-mmio is legacy (version 1) unless told otherwise; the
    // modern transport (version 2) is what other VMMs offer.
    let config = VmConfig::new("microvm_modern")
        .machine(Machine::Mmio)
        .qemu_args(["-global", "virtio-mmio.force-legacy=false"]);
    let mut vm = boot(config)?;
    vm.load(Driver::Rs)?;
    expect_bound_over_mmio(&mut vm, "Full buffers of 4096 pages")?;
    let negotiated = negotiated_features(&mut vm)?;
    ensure!(
        negotiated & 1 << 32 != 0,
        "VERSION_1 not negotiated over modern virtio-mmio: {negotiated:#x}"
    );
    let memtotal = vm.meminfo("MemTotal")?;
    inflate_and_deflate(&mut vm, memtotal)?;
    unload_and_power_off(vm, Some(memtotal))
}
