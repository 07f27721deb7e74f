// SPDX-License-Identifier: GPL-2.0

//! VM tests that only make sense on a distribution kernel: Debian's
//! unmodified `vmlinuz` with this module built for it (`make test-stock`,
//! which points `VBRS_BZIMAGE` and `VBRS_MODULE` at them and also runs the
//! generic VM tests there).
//!
//! They are `#[ignore]`d in `make test`: the project's own test kernel has
//! no RTC and is not what they check. `make test-stock` runs them with
//! `--ignored`.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::balloon_to_mib;
use common::bound_device;
use common::ensure;
use common::expect_memtotal;
use common::unload_and_power_off;
use common::Driver;
use common::GUEST_MIB;
use qemu_test::artifacts;
use qemu_test::err;
use qemu_test::Result;
use qemu_test::Vm;
use qemu_test::VmConfig;
use qemu_test::MIB;
use serde_json::json;

const STOCK_ONLY: &str = "needs the stock Debian kernel: make test-stock";

/// The kernel release a module was built for: the first word of its
/// `vermagic=` string.
fn module_release(module: &[u8]) -> Option<String> {
    let needle = b"vermagic=";
    let at = module.windows(needle.len()).position(|w| w == needle)? + needle.len();
    let rest = &module[at..];
    let end = rest.iter().position(|&b| b == 0 || b == b' ')?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

/// Boots the stock guest without any balloon driver loaded.
fn boot(config: VmConfig) -> Result<Vm> {
    Vm::boot(config.c_module(false))
}

#[test]
#[ignore = "needs the stock Debian kernel: make test-stock"]
fn debians_kernel_loads_the_module_built_for_it() -> Result<()> {
    let module = artifacts::rs_module()?;
    let bytes = std::fs::read(&module).map_err(|e| err!("reading {}: {e}", module.display()))?;
    let release = module_release(&bytes)
        .ok_or_else(|| err!("{} has no vermagic ({STOCK_ONLY})", module.display()))?;
    let mut vm = boot(VmConfig::new("stock_loads"))?;
    let running = vm.sh_ok("uname -r")?;
    ensure(running.trim() == release, || {
        format!(
            "the guest runs {:?}, the module is for {release:?} ({STOCK_ONLY})",
            running.trim()
        )
    })?;
    // Debian's own driver is a module and is not in the initramfs: nothing
    // is bound to the balloon before ours.
    let modules = vm.sh_ok("cat /proc/modules")?;
    ensure(modules.trim().is_empty(), || {
        format!("modules loaded before insmod: {modules}")
    })?;
    let memtotal = vm.meminfo("MemTotal")?;
    Driver::Rs.insmod(&mut vm)?;
    let dev = bound_device(&mut vm)?;
    let dmesg = vm.dmesg()?;
    ensure(dmesg.contains(&format!("{dev}: bound: features")), || {
        format!("no bind line for {dev}:\n{dmesg}")
    })?;
    balloon_to_mib(&mut vm, 1024)?;
    expect_memtotal(&mut vm, memtotal - 1024 * 1024)?;
    unload_and_power_off(vm, Some(memtotal))
}

#[test]
#[ignore = "needs the stock Debian kernel: make test-stock"]
fn suspend_to_idle_woken_by_the_rtc_keeps_the_target() -> Result<()> {
    // Debian has no CONFIG_PM_DEBUG (no pm_test): suspend for real, to
    // idle, and let the RTC alarm wake the guest.
    let mut vm = boot(VmConfig::new("stock_suspend"))?;
    let memtotal = vm.meminfo("MemTotal")?;
    Driver::Rs.insmod(&mut vm)?;
    balloon_to_mib(&mut vm, 1024)?;
    vm.sh_ok("echo 0 >/sys/class/rtc/rtc0/wakealarm; echo +5 >/sys/class/rtc/rtc0/wakealarm")?;
    let (code, output) = vm.run("echo freeze >/sys/power/state", Duration::from_secs(120))?;
    ensure(code == 0, || format!("echo freeze: {code}: {output}"))?;
    vm.qmp().wait_actual(1024 * MIB, common::BALLOON_TIMEOUT)?;
    expect_memtotal(&mut vm, memtotal - 1024 * 1024)?;
    let dmesg = vm.dmesg()?;
    ensure(dmesg.contains("PM: suspend exit"), || {
        format!("the guest did not go through a suspend:\n{dmesg}")
    })?;
    ensure(dmesg.matches("bound: features").count() == 2, || {
        format!("expected a restore after the suspend:\n{dmesg}")
    })?;
    ensure(dmesg.contains("balloon empty"), || {
        "suspend did not empty the balloon".into()
    })?;
    unload_and_power_off(vm, Some(memtotal))
}

#[test]
#[ignore = "needs the stock Debian kernel: make test-stock"]
fn hot_unplug_while_inflating_gives_every_page_back() -> Result<()> {
    // The balloon on a PCIe root port, so that device_del can unplug it.
    let config = VmConfig::new("stock_unplug")
        .qemu_args(["-device", "pcie-root-port,id=rp0,bus=pcie.0,chassis=1"])
        .balloon_options("bus=rp0");
    let mut vm = boot(config)?;
    let memtotal = vm.meminfo("MemTotal")?;
    Driver::Rs.insmod(&mut vm)?;
    let dev = bound_device(&mut vm)?;
    vm.qmp().balloon(512 * MIB)?;
    // Unplug once the inflation is under way.
    let start = Instant::now();
    while vm.qmp().query_balloon()? == GUEST_MIB * MIB {
        ensure(start.elapsed() < common::BALLOON_TIMEOUT, || {
            "the inflation never started".into()
        })?;
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "device_del with actual at {} MiB",
        vm.qmp().query_balloon()? / MIB
    );
    vm.qmp()
        .execute("device_del", Some(json!({ "id": "balloon0" })))?;
    let start = Instant::now();
    loop {
        // Any command reads the events QEMU sent meanwhile.
        let pci = vm.qmp().execute("query-pci", None)?;
        let deleted = vm.qmp().events().iter().any(|event| {
            event.name == "DEVICE_DELETED" && event.json["data"]["device"] == "balloon0"
        });
        if deleted && !pci.to_string().contains("\"balloon0\"") {
            break;
        }
        ensure(start.elapsed() < Duration::from_secs(120), || {
            format!("no DEVICE_DELETED for balloon0; query-pci: {pci}")
        })?;
        std::thread::sleep(Duration::from_millis(200));
    }
    let dmesg = vm.dmesg()?;
    ensure(dmesg.contains(&format!("{dev}: balloon empty")), || {
        format!("the driver did not log the unbind of {dev}:\n{dmesg}")
    })?;
    expect_memtotal(&mut vm, memtotal)?;
    let balloon = vm.meminfo("Balloon")?;
    ensure(balloon == 0, || format!("Balloon: {balloon} kB left"))?;
    unload_and_power_off(vm, Some(memtotal))
}

#[test]
fn vermagic_is_read_from_the_module() {
    let module =
        b"\0license=GPL\0vermagic=7.3.4+deb13-cloud-amd64 SMP preempt mod_unload modversions \0";
    assert_eq!(
        module_release(module).as_deref(),
        Some("7.3.4+deb13-cloud-amd64")
    );
    assert_eq!(module_release(b"no magic here"), None);
}
