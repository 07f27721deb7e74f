// SPDX-License-Identifier: GPL-2.0

//! VM tests that only make sense on a distribution kernel: Debian's
//! unmodified `vmlinuz` with this module built for it (`make test-stock`,
//! which points `VBRS_BZIMAGE` and `VBRS_MODULE` at them and also runs the
//! generic VM tests there), or Debian's arm64 kernel under
//! qemu-system-aarch64 (`make test-stock-arm64`, which leaves the S3 test
//! out by name: QEMU's virt has no suspend to RAM).
//!
//! They are `#[ignore]`d in `make test` (they check the stock kernel, not
//! the project's test kernel); `make test-stock` runs them with `--ignored`.
//! Hot unplug on the stock kernel is `stress.rs`'s test, run there too.

mod common;

use std::time::Duration;
use std::time::Instant;

use anyhow::anyhow;
use anyhow::ensure;
use common::balloon_to_mib;
use common::boot;
use common::bound_device;
use common::expect_memtotal;
use common::unload_and_power_off;
use qapi::qmp;
use qapi::qmp::RunState;
use qemu_test::artifacts;
use qemu_test::Driver;
use qemu_test::GuestShell;
use qemu_test::Result;
use qemu_test::VmConfig;
use qemu_test::MIB;

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

#[test]
#[ignore = "needs the stock Debian kernel: make test-stock"]
fn debians_kernel_loads_the_module_built_for_it() -> Result<()> {
    let module = artifacts::rs_module()?;
    let bytes = std::fs::read(&module).map_err(|e| anyhow!("reading {}: {e}", module.display()))?;
    let release = module_release(&bytes)
        .ok_or_else(|| anyhow!("{} has no vermagic ({STOCK_ONLY})", module.display()))?;
    let mut vm = boot(VmConfig::new("stock_loads"))?;
    let running = vm.sh_ok("uname -r")?;
    ensure!(
        running.trim() == release,
        "the guest runs {:?}, the module is for {release:?} ({STOCK_ONLY})",
        running.trim()
    );
    // Debian's own driver is a module and is not in the initramfs: nothing
    // is bound to the balloon before ours.
    let modules = vm.sh_ok("cat /proc/modules")?;
    ensure!(
        modules.trim().is_empty(),
        "modules loaded before insmod: {modules}"
    );
    let memtotal = vm.meminfo("MemTotal")?;
    vm.load(Driver::Rs)?;
    let dev = bound_device(&mut vm)?;
    let dmesg = vm.dmesg()?;
    ensure!(
        dmesg.contains(&format!("{dev}: bound: features")),
        "no bind line for {dev}:\n{dmesg}"
    );
    balloon_to_mib(&mut vm, 1024)?;
    expect_memtotal(&mut vm, memtotal - 1024 * 1024)?;
    unload_and_power_off(vm, Some(memtotal))
}

#[test]
#[ignore = "needs the stock Debian kernel: make test-stock"]
fn suspend_to_ram_and_wakeup_keep_the_target() -> Result<()> {
    // Debian has no CONFIG_PM_DEBUG (no pm_test): suspend for real, to RAM
    // (ACPI S3, which QEMU sees), and wake the guest with QMP system_wakeup.
    let mut vm = boot(VmConfig::new("stock_suspend"))?;
    let memtotal = vm.meminfo("MemTotal")?;
    vm.load(Driver::Rs)?;
    balloon_to_mib(&mut vm, 1024)?;
    let sleep_states = vm.sh_ok("cat /sys/power/mem_sleep")?;
    ensure!(
        sleep_states.contains("deep"),
        "no S3 in /sys/power/mem_sleep: {sleep_states:?}"
    );
    // The shell would block in the write until the wakeup: run it behind.
    vm.sh_ok(
        "echo deep >/sys/power/mem_sleep; \
         (echo mem >/sys/power/state; echo $? >/tmp/suspend.rc) >/dev/null 2>&1 &",
    )?;
    let start = Instant::now();
    loop {
        let status = vm.qmp().execute(&qmp::query_status {})?;
        if status.status == RunState::suspended {
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(120),
            "the guest did not suspend: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    vm.qmp().execute(&qmp::system_wakeup {})?;
    // Input sent while the serial port resumes is lost: wait for the end.
    vm.wait_console("PM: suspend exit", Duration::from_secs(120))?;
    let rc = vm.run(
        "while [ ! -f /tmp/suspend.rc ]; do sleep 0.2; done; cat /tmp/suspend.rc",
        Duration::from_secs(120),
    )?;
    ensure!(
        rc.0 == 0 && rc.1.trim() == "0",
        "echo mem >/sys/power/state: {rc:?}"
    );
    vm.qmp().wait_actual(1024 * MIB, common::BALLOON_TIMEOUT)?;
    expect_memtotal(&mut vm, memtotal - 1024 * 1024)?;
    let dmesg = vm.dmesg()?;
    ensure!(
        dmesg.contains("PM: suspend exit"),
        "the guest did not go through a suspend:\n{dmesg}"
    );
    ensure!(
        dmesg.matches("bound: features").count() == 2,
        "expected a restore after the suspend:\n{dmesg}"
    );
    ensure!(
        dmesg.contains("balloon empty"),
        "suspend did not empty the balloon"
    );
    vm.rmmod(Driver::Rs.module_name())?;
    expect_memtotal(&mut vm, memtotal)?;
    vm.check_clean()?;
    // After an S3 resume QEMU 10.0 did not power this guest off on the ACPI
    // S5 write ("reboot: Power down", then a WARN in do_exit 10 s later,
    // seen with the module already unloaded): the host ends it instead.
    vm.qmp().execute(&qmp::quit {})?;
    vm.shutdown()
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
