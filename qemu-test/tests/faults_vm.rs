// SPDX-License-Identifier: GPL-2.0

//! The driver against a host that misbehaves on purpose, in a real VM.
//!
//! The balloon is a vhost-user device (`vhost-user-test-device-pci`,
//! virtio-id 5, under the fault tests' QEMU) served by
//! `balloon-fault-device`, which the test starts and drives through its
//! control socket: targets, stats requests, and faults (a buffer returned
//! late or never, twice or with a bogus id, Firecracker's and
//! cloud-hypervisor's inflate rules, tiny queues, config and stats
//! storms). Each scenario runs against our driver and, where it says
//! something about the reference, against the C driver of the same
//! kernel. `make test-faults` runs them.

mod common;

use std::time::Duration;

use anyhow::ensure;
use common::expect_memtotal;
use qemu_test::fault_device::number;
use qemu_test::fault_device::Counters;
use qemu_test::scaled;
use qemu_test::Driver;
use qemu_test::FaultOptions;
use qemu_test::FaultVm;
use qemu_test::Result;
use qemu_test::VmConfig;

/// Guest RAM of these tests, in MiB.
const GUEST_MIB: u64 = 1024;
/// 4 KiB balloon pages in one MiB.
const PAGES_PER_MIB: u64 = 256;
/// KiB in one MiB.
const KB_PER_MIB: u64 = 1024;

/// Time a balloon step of a few hundred MiB may take under TCG.
fn step_timeout() -> Duration {
    scaled(Duration::from_secs(60))
}

/// Boots a guest of [`GUEST_MIB`] with `driver` in its initramfs and the
/// fault device started with `options`.
fn boot(name: &str, driver: Driver, options: &FaultOptions) -> Result<FaultVm> {
    FaultVm::boot(
        VmConfig::new(&format!("{name}-{}", driver.label()))
            .memory_mib(GUEST_MIB)
            .only(driver),
        options,
    )
}

/// Loads `driver` with `params` (ours only).
fn load(fvm: &mut FaultVm, driver: Driver, params: &str) -> Result<()> {
    let params = if driver == Driver::Rs { params } else { "" };
    fvm.vm.insmod(driver.guest_path(), params)
}

/// Sets a target of `mib` MiB in the balloon and waits until `actual`
/// reaches it.
fn balloon_mib(fvm: &FaultVm, mib: u64) -> Result<Duration> {
    fvm.device.set_target_pages(mib * PAGES_PER_MIB)?;
    fvm.device.wait_actual(mib * PAGES_PER_MIB, step_timeout())
}

/// The host's view after a deflate of everything: no page left in the
/// balloon, none deflated that it never had, none inflated twice.
fn expect_host_balloon_empty(counters: &Counters) -> Result<()> {
    for (key, want) in [
        ("balloon_pages", 0),
        ("unknown_deflates", 0),
        ("double_inflates", 0),
    ] {
        let got = number(counters, key)?;
        ensure!(
            got == want,
            "host: {key}={got}, expected {want}; {counters:?}"
        );
    }
    Ok(())
}

/// (a) The default device (QEMU's behaviour): the driver binds, follows
/// each target exactly (the host's `actual`, the guest's `MemTotal`, the
/// PFNs the host holds), the host gets the ballooned memory back (holes in
/// the guest RAM's memfd), stats arrive and describe the guest, and rmmod
/// gives every page back.
fn default_host_follows_targets(driver: Driver) -> Result<()> {
    let mut fvm = boot("default-host", driver, &FaultOptions::default())?;
    let memtotal = fvm.vm.meminfo("MemTotal")?;
    load(&mut fvm, driver, "")?;
    let device = &fvm.device;
    // Both drivers send a stats buffer at probe.
    device.wait_counters("the first stats buffer", step_timeout(), |c| {
        Ok(number(c, "stats_received")? >= 1)
    })?;

    // Touch most of the guest's memory, so that the memfd holds it on the
    // host and only holes punched by the balloon can give it back.
    fvm.vm.sh_ok(&format!("memhog {} 0", GUEST_MIB * 3 / 4))?;
    for mib in [256, 512, 128] {
        balloon_mib(&fvm, mib)?;
        expect_memtotal(&mut fvm.vm, memtotal - mib * KB_PER_MIB)?;
        let counters = fvm.device.counters()?;
        let held = number(&counters, "balloon_pages")?;
        ensure!(
            held == mib * PAGES_PER_MIB,
            "the host holds {held} PFNs for a balloon of {mib} MiB; {counters:?}"
        );
        // Every ballooned page is a hole in the memfd: it cannot hold more
        // than the rest.
        let ram = fvm.device.ram_bytes()?;
        let limit = (GUEST_MIB - mib) * qemu_test::MIB;
        ensure!(
            ram <= limit,
            "the host still holds {} MiB of guest RAM with {mib} MiB ballooned (at most {} MiB)",
            ram / qemu_test::MIB,
            limit / qemu_test::MIB
        );
        let punched = number(&counters, "pages_punched")?;
        let inflated = number(&counters, "pages_inflated")?;
        ensure!(
            punched == inflated,
            "{inflated} pages inflated, {punched} punched: {counters:?}"
        );
    }

    // A stats request (the stats buffer returned) brings fresh stats whose
    // total memory is the guest's MemTotal.
    let (before, _) = fvm.device.last_stats()?;
    fvm.device.command("stats")?;
    fvm.device
        .wait_counters("stats after a request", step_timeout(), |c| {
            Ok(number(c, "stats_received")? > before)
        })?;
    let (_, stats) = fvm.device.last_stats()?;
    let memtotal_now = fvm.vm.meminfo("MemTotal")?;
    /// VIRTIO_BALLOON_S_MEMTOT.
    const S_MEMTOT: u16 = 5;
    ensure!(
        stats.get(&S_MEMTOT) == Some(&(memtotal_now * 1024)),
        "stats total memory {:?} bytes, MemTotal {memtotal_now} kB; stats {stats:?}",
        stats.get(&S_MEMTOT)
    );

    fvm.vm.rmmod(driver.module_name())?;
    expect_memtotal(&mut fvm.vm, memtotal)?;
    let counters = fvm.device.counters()?;
    expect_host_balloon_empty(&counters)?;
    let actual = number(&counters, "actual")?;
    ensure!(
        actual == 0,
        "actual after rmmod is {actual} pages, expected 0"
    );
    fvm.vm.check_clean()?;
    fvm.vm.shutdown()
}

#[test]
fn default_host_follows_targets_rs() -> Result<()> {
    default_host_follows_targets(Driver::Rs)
}

#[test]
fn default_host_follows_targets_c() -> Result<()> {
    default_host_follows_targets(Driver::C)
}
