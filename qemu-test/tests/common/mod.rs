// SPDX-License-Identifier: GPL-2.0

//! Helpers shared by the VM scenario tests.
//!
//! Each test file includes this with `mod common;` and uses what it needs.

#![allow(
    dead_code,
    reason = "each test file uses a different part of the helpers"
)]

use std::time::Duration;
use std::time::Instant;

use anyhow::anyhow;
use anyhow::ensure;
use qemu_test::console::ConsoleRules;
use qemu_test::qmp::BALLOON_QOM_PATH;
use qemu_test::scaled;
use qemu_test::Driver;
use qemu_test::GuestShell;
use qemu_test::Result;
use qemu_test::Vm;
use qemu_test::VmConfig;
use qemu_test::MIB;
use serde_json::Value;

/// Guest RAM of the standard test VM, in MiB.
pub const GUEST_MIB: u64 = 2048;

/// Time a 1 GiB inflate or deflate may take under TCG on the test kernel
/// (the C driver needs about one second); see [`balloon_timeout`].
pub const BALLOON_TIMEOUT: Duration = Duration::from_secs(60);

/// [`BALLOON_TIMEOUT`] for the kernel under test.
pub fn balloon_timeout() -> Duration {
    scaled(BALLOON_TIMEOUT)
}

/// Boots a guest with our module in its initramfs (not loaded) and no C
/// driver.
pub fn boot(config: VmConfig) -> Result<Vm> {
    Vm::boot(config.only(Driver::Rs))
}

/// [`boot`], then loads our module.
pub fn boot_loaded(config: VmConfig) -> Result<Vm> {
    let mut vm = boot(config)?;
    vm.load(Driver::Rs)?;
    Ok(vm)
}

/// Asks for a guest size of `mib` MiB and waits until `actual` gets there.
pub fn balloon_to_mib(vm: &mut Vm, mib: u64) -> Result<Duration> {
    vm.qmp().balloon_and_wait(mib * MIB, balloon_timeout())
}

/// The balloon's `actual` in MiB.
pub fn actual_mib(vm: &mut Vm) -> Result<u64> {
    Ok(vm.qmp().query_balloon()? / MIB)
}

/// Checks that `MemTotal` is exactly `expected_kb`.
pub fn expect_memtotal(vm: &mut Vm, expected_kb: u64) -> Result<()> {
    let memtotal = vm.meminfo("MemTotal")?;
    if memtotal == expected_kb {
        Ok(())
    } else {
        Err(anyhow!(
            "MemTotal is {memtotal} kB, expected {expected_kb} kB (off by {} kB)",
            memtotal as i64 - expected_kb as i64
        ))
    }
}

/// Waits until `actual` is `target_mib` exactly (the target must already be
/// set), then checks it stays there and that `MemTotal` (from its boot
/// value `memtotal_kb`) and `Balloon:` dropped by exactly the ballooned
/// size; returns how long the wait took.
pub fn expect_exact_target(vm: &mut Vm, memtotal_kb: u64, target_mib: u64) -> Result<Duration> {
    let took = vm.qmp().wait_actual(target_mib * MIB, balloon_timeout())?;
    // Settled, not just passing through.
    std::thread::sleep(Duration::from_millis(300));
    let actual = vm.qmp().query_balloon()?;
    ensure!(
        actual == target_mib * MIB,
        "actual {actual} bytes, target {} bytes",
        target_mib * MIB
    );
    let ballooned_kb = (GUEST_MIB - target_mib) * 1024;
    expect_memtotal(vm, memtotal_kb - ballooned_kb)?;
    let balloon = vm.meminfo("Balloon")?;
    ensure!(
        balloon == ballooned_kb,
        "meminfo Balloon: {balloon} kB, expected {ballooned_kb} kB"
    );
    Ok(took)
}

/// Guest pages in `mib` MiB, at the guest kernel's page size (vmstat's
/// balloon events count guest pages: 256 a MiB with 4 KiB pages, 16 with
/// 64 KiB).
pub fn guest_pages(mib: u64) -> Result<u64> {
    Ok(mib * MIB / qemu_test::kernel::guest_kernel()?.config.page_size())
}

/// Reads a `/proc/vmstat` counter, after folding the per-CPU deltas.
pub fn vmstat(vm: &mut Vm, counter: &str) -> Result<u64> {
    let text = vm.sh_ok("echo 1 >/proc/sys/vm/stat_refresh 2>/dev/null; cat /proc/vmstat")?;
    text.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(' ')?;
            (name == counter).then(|| value.trim().parse().ok())?
        })
        .ok_or_else(|| anyhow!("/proc/vmstat has no {counter}"))
}

/// The `virtioN` name of the balloon device bound to our driver.
pub fn bound_device(vm: &mut Vm) -> Result<String> {
    let listing = vm.sh_ok("ls /sys/bus/virtio/drivers/virtio_balloon_rs/")?;
    listing
        .split_whitespace()
        .find(|name| name.starts_with("virtio"))
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no device bound to virtio_balloon_rs: {listing:?}"))
}

/// Our module's debugfs directory.
pub const DEBUGFS: &str = "/sys/kernel/debug/virtio_balloon_rs";

/// A number from the bound device's debugfs directory.
pub fn debugfs(vm: &mut Vm, file: &str) -> Result<u64> {
    let dev = bound_device(vm)?;
    let text = vm.sh_ok(&format!("cat {DEBUGFS}/{dev}/{file}"))?;
    text.trim()
        .parse()
        .map_err(|_| anyhow!("debugfs {file}: not a number: {text:?}"))
}

/// The feature bits negotiated with the bound device, from sysfs (a string
/// of '0'/'1', bit 0 first).
pub fn negotiated_features(vm: &mut Vm) -> Result<u64> {
    let dev = bound_device(vm)?;
    let bits = vm.sh_ok(&format!("cat /sys/bus/virtio/devices/{dev}/features"))?;
    Ok(bits
        .trim()
        .chars()
        .take(64)
        .enumerate()
        .filter(|(_, c)| *c == '1')
        .fold(0, |acc, (i, _)| acc | 1 << i))
}

/// Unloads our driver, checks that every page came back (`MemTotal` as
/// `memtotal_kb`, when given) and that the kernel log is clean (and, on a
/// debug kernel, that kmemleak finds no leak), and powers the guest off
/// (which checks the log of the shutdown too).
pub fn unload_and_power_off(vm: Vm, memtotal_kb: Option<u64>) -> Result<()> {
    unload_and_power_off_with(vm, memtotal_kb, ConsoleRules::strict())
}

/// [`unload_and_power_off`], checking the kernel log with `rules`.
pub fn unload_and_power_off_with(
    mut vm: Vm,
    memtotal_kb: Option<u64>,
    rules: ConsoleRules,
) -> Result<()> {
    vm.rmmod(Driver::Rs.module_name())?;
    if let Some(kb) = memtotal_kb {
        expect_memtotal(&mut vm, kb)?;
    }
    vm.check_console(rules)?;
    vm.shutdown()
}

/// The balloon's `guest-stats` QOM property (stats the guest last pushed).
pub fn guest_stats(vm: &mut Vm) -> Result<Value> {
    vm.qmp().qom_get(BALLOON_QOM_PATH, "guest-stats")
}

/// `last-update` of `guest-stats`: when the guest last pushed stats (0: never).
pub fn last_update(stats: &Value) -> u64 {
    stats["last-update"].as_u64().unwrap_or(0)
}

/// One figure of `guest-stats`, e.g. `stat-total-memory`.
pub fn stat(stats: &Value, name: &str) -> Result<u64> {
    stats["stats"][name]
        .as_u64()
        .ok_or_else(|| anyhow!("guest-stats has no {name}: {stats}"))
}

/// Starts `memhog <mib> <hold_secs>` in the background (output in `log`)
/// and waits until it holds its memory; returns the MiB it got.
pub fn start_hog(vm: &mut Vm, mib: u64, hold_secs: u64, log: &str) -> Result<u64> {
    vm.spawn(&format!("memhog {mib} {hold_secs}"), log)?;
    let timeout = scaled(Duration::from_secs(60));
    let start = std::time::Instant::now();
    loop {
        let out = vm.sh_ok(&format!("cat {log}"))?;
        if let Some(got) = out
            .split("memhog: got ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
        {
            return Ok(got);
        }
        ensure!(
            start.elapsed() < timeout,
            "memhog {mib} did not get its memory in {timeout:?}: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls `actual` until it has not moved for `quiet`, and returns it (MiB).
pub fn wait_settled(vm: &mut Vm, quiet: Duration, timeout: Duration) -> Result<u64> {
    let start = Instant::now();
    let mut last = actual_mib(vm)?;
    let mut since = Instant::now();
    while start.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(200));
        let now = actual_mib(vm)?;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return Ok(last);
        }
    }
    Err(anyhow!(
        "actual still moving after {timeout:?} (last {last} MiB)"
    ))
}

/// Asks for a 10 MiB balloon target, more than the guest can give, and
/// returns where `actual` settles (MiB): where the driver's reserve stops it.
pub fn settle_at_impossible_target(vm: &mut Vm) -> Result<u64> {
    vm.qmp().balloon(10 * MIB)?;
    wait_settled(vm, Duration::from_secs(4), scaled(Duration::from_secs(120)))
}
