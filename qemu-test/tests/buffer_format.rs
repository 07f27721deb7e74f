// SPDX-License-Identifier: GPL-2.0

//! VM tests of the inflate/deflate buffer format: what `buffer_format=0`
//! (auto) picks from QEMU's device identity, and that the format every VMM
//! reads (`buffer_format=1`, 256 PFNs per buffer) reaches each target and
//! gives every page back.

mod common;

use anyhow::anyhow;
use anyhow::ensure;
use common::balloon_to_mib;
use common::boot;
use common::debugfs;
use common::expect_memtotal;
use common::settle_at_impossible_target;
use common::unload_and_power_off;
use common::GUEST_MIB;
use qemu_test::kernel::guest_kernel;
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

/// Finding 7 of the fault review: with several buffers in flight, a
/// step's preallocated pages lowered `MemAvailable`, the step then
/// recomputed its budget from that live figure and backed off, up to
/// one step's capacity (16 buffers of 16 MiB here) above the reserve
/// floor. Against a target it cannot reach, 16 buffers in flight must
/// stop as close to the floor as one buffer does, within one buffer.
#[test]
fn many_buffers_in_flight_stop_at_the_reserve_floor() -> Result<()> {
    /// One full buffer: 4096 PFNs of 4 KiB.
    const BUFFER_KB: u64 = 16 * 1024;
    let mut vm = boot(VmConfig::new("in_flight_floor"))?;
    let memtotal = vm.meminfo("MemTotal")?;
    let mut floors = Vec::new();
    for in_flight in [1, 16] {
        vm.insmod(
            Driver::Rs.guest_path(),
            &format!("buffers_in_flight={in_flight}"),
        )?;
        let settled = settle_at_impossible_target(&mut vm)?;
        let available = vm.meminfo("MemAvailable")?;
        eprintln!("{in_flight} in flight: settled at {settled} MiB, MemAvailable {available} kB");
        floors.push(available);
        balloon_to_mib(&mut vm, GUEST_MIB)?;
        vm.rmmod(Driver::Rs.module_name())?;
        expect_memtotal(&mut vm, memtotal)?;
    }
    let (one, sixteen) = (floors[0], floors[1]);
    ensure!(
        sixteen <= one + BUFFER_KB,
        "16 buffers in flight stopped with MemAvailable {sixteen} kB, one buffer at {one} kB: \
         more than one buffer ({BUFFER_KB} kB) above the floor"
    );
    vm.check_clean()?;
    vm.shutdown()
}

/// Guest pages marked offline (`KPF_OFFLINE`, bit 23 of
/// `/proc/kpageflags`, one little-endian u64 per page frame).
fn offline_pages(vm: &mut Vm) -> Result<u64> {
    let out = vm
        .sh_ok("od -An -v -tx8 -w8 /proc/kpageflags | grep -c '[89a-f][0-9a-f]\\{5\\}$' || true")?;
    out.trim()
        .parse()
        .map_err(|_| anyhow!("counting offline pages: {out:?}"))
}

/// Finding 12 of the fault review: the pages of a ballooned 2 MiB block
/// are marked offline, as the balloon core marks its single pages, so
/// that dump tools (makedumpfile) skip memory the host may have
/// discarded; once deflated they are not offline any more.
#[test]
fn ballooned_blocks_are_offline_pages() -> Result<()> {
    let mut vm = boot_with_params(VmConfig::new("offline_blocks"), "buffer_format=2")?;
    let memtotal = vm.meminfo("MemTotal")?;
    let page_kb = guest_kernel()?.config.page_size() / 1024;
    let before = offline_pages(&mut vm)?;
    balloon_to_mib(&mut vm, GUEST_MIB - 1024)?;
    expect_memtotal(&mut vm, memtotal - 1024 * 1024)?;
    let blocks = debugfs(&mut vm, "balloon_blocks")?;
    ensure!(
        blocks > 0,
        "no 2 MiB block in the balloon: nothing to check"
    );
    let ballooned = vm.meminfo("Balloon")? / page_kb;
    let offline = offline_pages(&mut vm)?.saturating_sub(before);
    ensure!(
        offline == ballooned,
        "{offline} pages offline with {ballooned} ballooned ({blocks} blocks of 2 MiB)"
    );
    balloon_to_mib(&mut vm, GUEST_MIB)?;
    let after = offline_pages(&mut vm)?;
    ensure!(
        after == before,
        "{after} pages offline after the deflate, {before} before the balloon"
    );
    unload_and_power_off(vm, Some(memtotal))
}
