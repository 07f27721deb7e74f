// SPDX-License-Identifier: GPL-2.0

//! VM tests of the inflate/deflate buffer format: what `buffer_format=0`
//! (auto) picks from QEMU's device identity, and that the format every VMM
//! reads (`buffer_format=1`, 256 PFNs per buffer) reaches each target and
//! gives every page back.

mod common;

use anyhow::ensure;
use common::balloon_to_mib;
use common::boot;
use common::expect_memtotal;
use common::unload_and_power_off;
use common::GUEST_MIB;
use qemu_test::Driver;
use qemu_test::GuestShell;
use qemu_test::Result;
use qemu_test::Vm;
use qemu_test::VmConfig;

/// [`boot`]s a guest and loads our module with `params`.
fn boot_with_params(config: VmConfig, params: &str) -> Result<Vm> {
    let mut vm = boot(config)?;
    vm.insmod(Driver::Rs.guest_path(), params)?;
    Ok(vm)
}

/// Checks the format the driver announced, then balloons 1 GiB and back.
fn check_format(mut vm: Vm, announced: &str) -> Result<()> {
    let memtotal = vm.meminfo("MemTotal")?;
    let dmesg = vm.dmesg()?;
    ensure!(
        dmesg.contains(announced),
        "expected {announced:?} in dmesg:\n{dmesg}"
    );
    balloon_to_mib(&mut vm, GUEST_MIB - 1024)?;
    expect_memtotal(&mut vm, memtotal - 1024 * 1024)?;
    balloon_to_mib(&mut vm, GUEST_MIB)?;
    expect_memtotal(&mut vm, memtotal)?;
    unload_and_power_off(vm, Some(memtotal))
}

#[test]
fn auto_gives_a_transitional_qemu_device_full_buffers() -> Result<()> {
    // On pcie.0 the balloon is transitional: subsystem 0x1af4:0x0005,
    // QEMU's or kvmtool's, both of which read a large buffer whole.
    let vm = boot_with_params(VmConfig::new("format_transitional"), "")?;
    check_format(vm, "Full buffers of 4096 pages")
}

#[test]
fn auto_gives_a_modern_qemu_device_full_buffers() -> Result<()> {
    // Behind a PCIe root port it is modern-only: QEMU's own subsystem
    // 0x1af4:0x1100.
    let vm = boot_with_params(
        VmConfig::new("format_modern").balloon_on_root_port(),
        "buffer_format=0",
    )?;
    check_format(vm, "Full buffers of 4096 pages")
}

#[test]
fn compat_buffers_reach_every_target_and_give_every_page_back() -> Result<()> {
    let vm = boot_with_params(VmConfig::new("format_compat"), "buffer_format=1")?;
    check_format(vm, "Compat buffers of 256 pages")
}

#[test]
fn an_unknown_buffer_format_is_reported_and_auto_is_used() -> Result<()> {
    let mut vm = boot_with_params(VmConfig::new("format_unknown"), "buffer_format=7")?;
    let dmesg = vm.dmesg()?;
    ensure!(
        dmesg.contains("buffer_format=7 unknown"),
        "no warning about buffer_format=7:\n{dmesg}"
    );
    check_format(vm, "Full buffers of 4096 pages")
}

#[test]
fn several_buffers_in_flight_reach_every_target() -> Result<()> {
    let vm = boot_with_params(VmConfig::new("format_in_flight"), "buffers_in_flight=4")?;
    check_format(vm, "Full buffers of 4096 pages (4 at once)")
}

#[test]
fn several_compat_buffers_in_flight_reach_every_target() -> Result<()> {
    let vm = boot_with_params(
        VmConfig::new("format_compat_in_flight"),
        "buffer_format=1 buffers_in_flight=16",
    )?;
    check_format(vm, "Compat buffers of 256 pages (16 at once)")
}
