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
//! kernel. `make test-faults` runs them (they are `#[ignore]`d in `make
//! test`: x86_64 only, and written to fail until the driver's findings
//! they reproduce are fixed; `make test-debug` includes them).

mod common;

use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::ensure;
use anyhow::Context;
use common::expect_memtotal;
use qemu_test::console::ConsoleRules;
use qemu_test::fault_device::number;
use qemu_test::fault_device::Counters;
use qemu_test::scaled;
use qemu_test::Driver;
use qemu_test::FaultOptions;
use qemu_test::FaultVm;
use qemu_test::GuestShell;
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
    // The test device is QEMU's modern-only virtio-pci function: its
    // identity is QEMU's (0x1af4:0x1100), never crosvm's,
    // cloud-hypervisor's or Firecracker's (0x1af4:0x1045).
    let identity = fvm.vm.sh_ok(
        "d=$(readlink -f /sys/bus/virtio/devices/virtio0)/..; \
         cat $d/subsystem_vendor $d/subsystem_device",
    )?;
    ensure!(
        identity.split_whitespace().collect::<Vec<_>>() == ["0x1af4", "0x1100"],
        "PCI subsystem of the vhost-user balloon: {identity:?}"
    );
    let device = &fvm.device;
    // Both drivers send a stats buffer at probe.
    device.wait_counters("the first stats buffer", step_timeout(), |c| {
        Ok(number(c, "stats_received")? >= 1)
    })?;

    // Touch most of the guest's memory (three quarters of what is
    // available: a debug kernel keeps more for itself), so that the memfd
    // holds it on the host and only holes punched by the balloon can give
    // it back.
    let available_mib = fvm.vm.meminfo("MemAvailable")? / KB_PER_MIB;
    fvm.vm
        .sh_ok(&format!("memhog {} 0", available_mib * 3 / 4))?;
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
#[ignore = "the fault tests: make test-faults"]
fn default_host_follows_targets_rs() -> Result<()> {
    default_host_follows_targets(Driver::Rs)
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn default_host_follows_targets_c() -> Result<()> {
    default_host_follows_targets(Driver::C)
}

/// `host_timeout_ms` given to our driver in the fault scenarios: short, so
/// that a late buffer is late within a test's time.
const HOST_TIMEOUT_MS: u64 = 1000;

/// Lines of the kernel log (the serial console) that contain `text`.
fn console_lines(fvm: &FaultVm, text: &str) -> usize {
    fvm.vm
        .console_log()
        .lines()
        .filter(|line| line.contains(text))
        .count()
}

/// Waits until the kernel log has `count` lines with `text`.
fn wait_console_lines(fvm: &FaultVm, text: &str, count: usize, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while console_lines(fvm, text) < count {
        if start.elapsed() > timeout {
            bail!(
                "the kernel log has {} lines with {text:?} after {timeout:?}, expected {count}",
                console_lines(fvm, text)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The balloon in the guest's view, in 4 KiB pages (`Balloon:` of
/// /proc/meminfo).
fn guest_balloon_pages(fvm: &mut FaultVm) -> Result<u64> {
    Ok(fvm.vm.meminfo("Balloon")? / 4)
}

/// The virtio interrupt handlers the guest has registered.
fn virtio_interrupts(fvm: &mut FaultVm) -> Result<String> {
    fvm.vm.sh_ok("grep virtio /proc/interrupts || true")
}

/// Whether a device is bound to `driver`.
fn bound(fvm: &mut FaultVm, driver: Driver) -> Result<bool> {
    let out = fvm.vm.sh_ok(&format!(
        "ls /sys/bus/virtio/drivers/{}/ 2>/dev/null | grep -c '^virtio' || true",
        driver.module_name()
    ))?;
    Ok(out.trim() != "0")
}

/// (b) Finding 2: an inflate buffer the host returns after
/// `host_timeout_ms`. The driver must finish the step when it comes back
/// and go on to the target, whenever it comes. A return in the window
/// between the wait's timeout and the driver noting that it waits for the
/// host is a lost wakeup: the balloon stays stuck until the next config
/// change. That window is short and where it falls jitters (the timeout
/// ends on a jiffy, the host's delay counts from when it took the buffer,
/// several ms after the guest's notification under TCG), so the test
/// makes many attempts: with the shortest timeout (100 ms), it first
/// finds the delay where buffers start to be late (1 ms steps up from
/// the timeout until the driver logs a late buffer), then returns buffers
/// from 6 ms before it to 9 ms after, 1 ms apart, [`LATE_ROUNDS`] times
/// (1 MiB, one buffer, per step). Each step must reach its target, and
/// every "host did not return" line must be followed by a resume line.
#[test]
#[ignore = "the fault tests: make test-faults"]
fn late_inflate_buffers_then_returned_let_updates_resume() -> Result<()> {
    /// The driver's shortest `host_timeout_ms`.
    const TIMEOUT_MS: u64 = 100;
    let driver = Driver::Rs;
    let mut fvm = boot("late-buffer", driver, &FaultOptions::default())?;
    let memtotal = fvm.vm.meminfo("MemTotal")?;
    load(&mut fvm, driver, &format!("host_timeout_ms={TIMEOUT_MS}"))?;
    let mut round = 0u64;
    let mut step = |fvm: &mut FaultVm, delay: u64| -> Result<bool> {
        let late_before = console_lines(fvm, "host did not return the");
        fvm.device
            .command(&format!("fault inflate:late={delay}@1"))?;
        round += 1;
        fvm.device.set_target_pages(round * PAGES_PER_MIB)?;
        fvm.device
            .wait_actual(round * PAGES_PER_MIB, step_timeout())
            .with_context(|| {
                format!(
                    "step {round}: inflate buffer returned {delay} ms late \
                     ({TIMEOUT_MS} ms timeout): the balloon is stuck; kernel log:\n{}",
                    qemu_test::console::last_lines(&fvm.vm.console_log(), 10)
                )
            })?;
        Ok(console_lines(fvm, "host did not return the") > late_before)
    };
    let mut boundary = None;
    for delay in TIMEOUT_MS..TIMEOUT_MS + 200 {
        if step(&mut fvm, delay)? {
            boundary = Some(delay);
            break;
        }
    }
    let boundary = boundary.with_context(|| {
        format!("no buffer returned up to 200 ms after the {TIMEOUT_MS} ms timeout was late")
    })?;
    for i in 0..LATE_ROUNDS {
        step(&mut fvm, boundary - 6 + i % 16)?;
    }
    // The serial console may lag the device's socket (a debug kernel
    // prints slowly): give the last lines time to arrive before counting.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (late, resumed) = loop {
        let late = console_lines(&fvm, "host did not return the");
        let resumed = console_lines(&fvm, "balloon updates resume");
        if resumed == late || Instant::now() > deadline {
            break (late, resumed);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "late from {boundary} ms on; {late} late buffers, {resumed} resumes in {round} steps"
    );
    ensure!(
        resumed == late,
        "kernel log: {late} late-buffer lines, {resumed} resume lines"
    );
    expect_memtotal(&mut fvm.vm, memtotal - round * KB_PER_MIB)?;
    fvm.vm.rmmod(driver.module_name())?;
    expect_memtotal(&mut fvm.vm, memtotal)?;
    expect_host_balloon_empty(&fvm.device.counters()?)?;
    fvm.vm.check_clean()?;
    fvm.vm.shutdown()
}

/// Steps of [`late_inflate_buffers_then_returned_let_updates_resume`]
/// around the delay where buffers become late.
const LATE_ROUNDS: u64 = 160;

/// The C driver with inflate buffers returned late: it has no deadline
/// (it waits for every buffer as long as it takes), so each step only
/// takes longer. 20 steps of 1 MiB, each buffer held 100 to 290 ms.
#[test]
#[ignore = "the fault tests: make test-faults"]
fn late_inflate_buffers_c_wait_without_a_deadline() -> Result<()> {
    let driver = Driver::C;
    let mut fvm = boot("late-buffer", driver, &FaultOptions::default())?;
    let memtotal = fvm.vm.meminfo("MemTotal")?;
    load(&mut fvm, driver, "")?;
    for round in 1..=20u64 {
        let delay = 100 + 10 * (round - 1);
        fvm.device
            .command(&format!("fault inflate:late={delay}@1"))?;
        fvm.device.set_target_pages(round * PAGES_PER_MIB)?;
        fvm.device
            .wait_actual(round * PAGES_PER_MIB, step_timeout())
            .with_context(|| format!("step {round}: buffer returned {delay} ms late"))?;
    }
    fvm.vm.rmmod(driver.module_name())?;
    expect_memtotal(&mut fvm.vm, memtotal)?;
    fvm.vm.check_clean()?;
    fvm.vm.shutdown()
}

/// (b) A dead inflate queue: the host takes the first buffer and never
/// returns it. The balloon stops short, the log says the host is late,
/// and rmmod still gives every page back (the device is reset first).
fn dead_inflate_queue(driver: Driver) -> Result<()> {
    let mut fvm = boot(
        "dead-inflate",
        driver,
        &FaultOptions::default().fault("inflate:never"),
    )?;
    let memtotal = fvm.vm.meminfo("MemTotal")?;
    load(
        &mut fvm,
        driver,
        &format!("host_timeout_ms={HOST_TIMEOUT_MS}"),
    )?;
    fvm.device.set_target_pages(256 * PAGES_PER_MIB)?;
    fvm.device
        .wait_counters("a held inflate buffer", step_timeout(), |c| {
            Ok(number(c, "inflate.held")? >= 1)
        })?;
    if driver == Driver::Rs {
        wait_console_lines(&fvm, "host did not return the", 1, step_timeout())?;
    }
    let actual = fvm.device.actual_pages()?;
    ensure!(
        actual < 256 * PAGES_PER_MIB,
        "actual reached {actual} pages with no inflate buffer returned"
    );
    fvm.vm.rmmod(driver.module_name())?;
    expect_memtotal(&mut fvm.vm, memtotal)?;
    let counters = fvm.device.counters()?;
    let stops = number(&counters, "vring_stops")?;
    ensure!(
        stops > 0,
        "rmmod gave the pages back without a device reset"
    );
    fvm.vm.check_clean()?;
    fvm.vm.shutdown()
}

/// The C driver's rmmod against a host that stopped answering: C waits
/// for the inflate buffer without a deadline (`wait_event` in
/// `tell_host`), holding its update work, and its remove cancels that
/// work, so rmmod never returns. This checks that C does so (for the
/// README's table; the test passes when C hangs), then kills the guest:
/// a power-off would wait for the same device lock.
fn expect_c_rmmod_hangs(mut fvm: FaultVm) -> Result<()> {
    /// How long an rmmod that should return at once may take.
    const RMMOD_GRACE: Duration = Duration::from_secs(10);
    fvm.vm.spawn("rmmod virtio_balloon", "/tmp/rmmod.log")?;
    std::thread::sleep(qemu_test::scaled(RMMOD_GRACE));
    let modules = fvm.vm.sh_ok("cat /proc/modules")?;
    let state = modules
        .lines()
        .find(|line| line.starts_with("virtio_balloon "))
        .map(str::to_string);
    eprintln!("C driver {RMMOD_GRACE:?} after rmmod: {state:?}");
    ensure!(
        state
            .as_deref()
            .is_some_and(|line| line.contains("Unloading")),
        "C's rmmod did not hang against a host that stopped answering: {state:?}"
    );
    fvm.vm.abandon();
    Ok(())
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn dead_inflate_queue_c_hangs_in_rmmod() -> Result<()> {
    let driver = Driver::C;
    let mut fvm = boot(
        "dead-inflate",
        driver,
        &FaultOptions::default().fault("inflate:never"),
    )?;
    load(&mut fvm, driver, "")?;
    fvm.device.set_target_pages(256 * PAGES_PER_MIB)?;
    fvm.device
        .wait_counters("a held inflate buffer", step_timeout(), |c| {
            Ok(number(c, "inflate.held")? >= 1)
        })?;
    expect_c_rmmod_hangs(fvm)
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn dead_inflate_queue_rmmod_returns_every_page_rs() -> Result<()> {
    dead_inflate_queue(Driver::Rs)
}

/// (b) Finding 1 and tiny queues: every queue of `size` descriptors
/// (QEMU's `vq_size` is one value for all), with STATS_VQ and
/// FREE_PAGE_HINT. A hint queue of one descriptor cannot hold the command
/// id and a hint: our driver refuses the device. A size that is not a
/// power of two cannot make a split ring: the ring code refuses it.
/// Whatever a driver does, a device it bound must follow a target, and
/// one it did not bind must leave nothing behind: no interrupt handler,
/// no virtqueue handle left out, no splat; unload and reload (twice) must
/// be clean. (No config interrupt can be sent to a failed device: QEMU
/// 11.1 crashes on a backend's config change while the device is not
/// started, see the fault device's `config_changed`.)
fn small_queues(driver: Driver, size: u32) -> Result<()> {
    let options = FaultOptions::default()
        .features("stats,free-page-hint")
        .queue_size(size);
    let mut fvm = boot(&format!("queues-of-{size}"), driver, &options)?;
    let memtotal = fvm.vm.meminfo("MemTotal")?;
    for round in 0..2 {
        load(&mut fvm, driver, "")?;
        // The driver probes synchronously in insmod.
        let is_bound = bound(&mut fvm, driver)?;
        let interrupts = virtio_interrupts(&mut fvm)?;
        eprintln!("round {round}: bound {is_bound}, interrupts:\n{interrupts}");
        if driver == Driver::Rs && size == 1 {
            ensure!(
                !is_bound && console_lines(&fvm, "free page hint queue too small") == round + 1,
                "round {round}: our driver bound a device whose hint queue has one descriptor"
            );
        }
        if is_bound {
            balloon_mib(&fvm, 16 * (round as u64 + 1))?;
        } else {
            ensure!(
                interrupts.trim().is_empty(),
                "round {round}: probe failed but the device's interrupt handlers stay:\n{interrupts}"
            );
        }
        fvm.vm.rmmod(driver.module_name())?;
        expect_memtotal(&mut fvm.vm, memtotal)?;
        ensure!(
            virtio_interrupts(&mut fvm)?.trim().is_empty(),
            "round {round}: interrupt handlers left after rmmod"
        );
    }
    ensure!(
        console_lines(&fvm, "a handle is still out") == 0,
        "virtqueues leaked (a handle is still out)"
    );
    fvm.vm.check_clean()?;
    fvm.vm.shutdown()
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn hint_queue_of_one_fails_probe_cleanly_rs() -> Result<()> {
    small_queues(Driver::Rs, 1)
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn hint_queue_of_one_c() -> Result<()> {
    small_queues(Driver::C, 1)
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn queues_of_two_work_rs() -> Result<()> {
    small_queues(Driver::Rs, 2)
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn queues_of_two_c() -> Result<()> {
    small_queues(Driver::C, 2)
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn queues_of_three_fail_probe_cleanly_rs() -> Result<()> {
    small_queues(Driver::Rs, 3)
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn queues_of_three_c() -> Result<()> {
    small_queues(Driver::C, 3)
}

/// Balloons 64 MiB, has the host answer the next inflate buffer with
/// `fault`, sets a target of 128 MiB, waits for that faulty return and
/// then past the driver's timeout, for it to notice and act.
fn break_inflate_queue(fvm: &FaultVm, fault: &str) -> Result<()> {
    balloon_mib(fvm, 64)?;
    // Read before the target is set: the faulty return may come at once.
    let returned = fvm.device.counter("inflate.returned")?;
    fvm.device.command(&format!("fault inflate:{fault}@1"))?;
    fvm.device.set_target_pages(128 * PAGES_PER_MIB)?;
    fvm.device
        .wait_counters("the faulty return", step_timeout(), |c| {
            Ok(number(c, "inflate.returned")? > returned)
        })?;
    std::thread::sleep(Duration::from_millis(3 * HOST_TIMEOUT_MS));
    Ok(())
}

/// (b) Finding 6: the host returns an inflate buffer with an id that is
/// not in flight (`bogus-id`), or its id twice (`twice`, the second one no
/// longer in flight); the guest's ring code marks the queue broken. The
/// host has read that buffer (its pages are holes in the memfd, and it
/// counts them as ballooned), so until the device is reset those pages
/// must not go back to the guest: whenever the guest's balloon holds
/// fewer pages than the host was given, the host must have seen a reset.
/// rmmod then gives everything back.
fn broken_inflate_queue(fault: &str) -> Result<()> {
    let driver = Driver::Rs;
    let mut fvm = boot(
        &format!("broken-inflate-{fault}"),
        driver,
        &FaultOptions::default(),
    )?;
    let memtotal = fvm.vm.meminfo("MemTotal")?;
    load(
        &mut fvm,
        driver,
        &format!("host_timeout_ms={HOST_TIMEOUT_MS}"),
    )?;
    break_inflate_queue(&fvm, fault)?;
    let counters = fvm.device.counters()?;
    let host_pages = number(&counters, "balloon_pages")?;
    // Pages the guest withholds: its balloon, and those a late buffer
    // names (kept from the allocator until the host returns the buffer or
    // the device is reset).
    let balloon = guest_balloon_pages(&mut fvm)?;
    let late = fvm
        .vm
        .sh_ok("cat /sys/kernel/debug/virtio_balloon_rs/virtio0/late_pages")?
        .trim()
        .parse::<u64>()
        .context("late_pages")?;
    let guest_pages = balloon + late;
    let stops = number(&counters, "vring_stops")?;
    eprintln!(
        "host holds {host_pages} pages, the guest withholds {guest_pages} \
         ({balloon} ballooned, {late} named by a late buffer), {stops} queue stops"
    );
    ensure!(
        guest_pages >= host_pages || stops > 0,
        "the guest withholds {guest_pages} pages, the host was given {host_pages}, \
         and the device was never reset: {} pages the host holds are back in the guest",
        host_pages.saturating_sub(guest_pages)
    );
    fvm.vm.rmmod(driver.module_name())?;
    expect_memtotal(&mut fvm.vm, memtotal)?;
    fvm.vm.check_clean()?;
    fvm.vm.shutdown()
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn broken_inflate_queue_keeps_pages_until_reset_rs() -> Result<()> {
    broken_inflate_queue("bogus-id")
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn inflate_id_returned_twice_keeps_pages_until_reset_rs() -> Result<()> {
    broken_inflate_queue("twice")
}

/// The C driver when the inflate queue breaks (a used id never sent): the
/// ring code marks the queue broken, `virtqueue_get_buf` returns nothing
/// from then on, and C's `tell_host` waits for ever: the balloon stops
/// short of the target and rmmod hangs.
#[test]
#[ignore = "the fault tests: make test-faults"]
fn broken_inflate_queue_c_stops_and_hangs_in_rmmod() -> Result<()> {
    let driver = Driver::C;
    let fault = "bogus-id";
    let mut fvm = boot(
        &format!("broken-inflate-{fault}"),
        driver,
        &FaultOptions::default(),
    )?;
    load(&mut fvm, driver, "")?;
    break_inflate_queue(&fvm, fault)?;
    let actual = fvm.device.actual_pages()?;
    eprintln!("C driver after the broken queue: actual {actual} pages");
    ensure!(
        actual < 128 * PAGES_PER_MIB,
        "C reached the target through a broken inflate queue ({actual} pages)"
    );
    expect_c_rmmod_hangs(fvm)
}

/// The C driver with an inflate buffer's id returned twice: C sends one
/// buffer at a time from the same descriptor, so the duplicate reads as
/// the return of its next buffer; the balloon reaches the target and
/// rmmod gives every page back.
#[test]
#[ignore = "the fault tests: make test-faults"]
fn inflate_id_returned_twice_c() -> Result<()> {
    let driver = Driver::C;
    let mut fvm = boot("inflate-twice", driver, &FaultOptions::default())?;
    let memtotal = fvm.vm.meminfo("MemTotal")?;
    load(&mut fvm, driver, "")?;
    balloon_mib(&fvm, 64)?;
    fvm.device.command("fault inflate:twice@1")?;
    balloon_mib(&fvm, 128)?;
    fvm.vm.rmmod(driver.module_name())?;
    expect_memtotal(&mut fvm.vm, memtotal)?;
    fvm.vm.check_clean()?;
    fvm.vm.shutdown()
}

/// Inflates to `mib` with the host following `rule` (an inflate fault)
/// and our driver's `buffer_format`; returns whether the balloon got
/// there, with the host's counters.
fn inflate_under_rule(
    rule: &str,
    driver: Driver,
    buffer_format: u32,
    mib: u64,
) -> Result<(FaultVm, bool, Counters)> {
    let mut fvm = boot(
        &format!("{rule}-format{buffer_format}"),
        driver,
        &FaultOptions::default().fault(&format!("inflate:{rule}")),
    )?;
    load(
        &mut fvm,
        driver,
        &format!("host_timeout_ms={HOST_TIMEOUT_MS} buffer_format={buffer_format}"),
    )?;
    fvm.device.set_target_pages(mib * PAGES_PER_MIB)?;
    let reached = fvm
        .device
        .wait_actual(mib * PAGES_PER_MIB, scaled(Duration::from_secs(20)))
        .is_ok();
    let counters = fvm.device.counters()?;
    Ok((fvm, reached, counters))
}

/// Unloads `driver`, checks `MemTotal` is back and the log clean, powers off.
fn unload_clean(mut fvm: FaultVm, driver: Driver, memtotal: u64) -> Result<()> {
    fvm.vm.rmmod(driver.module_name())?;
    expect_memtotal(&mut fvm.vm, memtotal)?;
    fvm.vm.check_clean()?;
    fvm.vm.shutdown()
}

/// (b) Firecracker's rule (an inflate descriptor of more than 256 PFNs is
/// dropped, never returned). `buffer_format=1` (compat) and the C driver
/// never stall and the host learns every page; `buffer_format=2` (full)
/// shows the stall: the first buffer is dropped and the balloon stops
/// short; rmmod still gives every page back.
fn firecracker_rule(driver: Driver, buffer_format: u32) -> Result<()> {
    let (mut fvm, reached, counters) =
        inflate_under_rule("firecracker", driver, buffer_format, 64)?;
    let memtotal = fvm.vm.meminfo("MemTotal")? + 64 * KB_PER_MIB;
    let dropped = number(&counters, "inflate.dropped")?;
    let held = number(&counters, "balloon_pages")?;
    if buffer_format == 2 {
        ensure!(
            !reached && dropped >= 1,
            "full buffers under Firecracker's rule: reached {reached}, {dropped} dropped; {counters:?}"
        );
        // The pages of the dropped buffer never reached the balloon.
        let memtotal = fvm.vm.meminfo("MemTotal")? + guest_balloon_pages(&mut fvm)? * 4;
        return unload_clean(fvm, driver, memtotal);
    }
    ensure!(
        reached && dropped == 0 && held == 64 * PAGES_PER_MIB,
        "under Firecracker's rule: reached {reached}, {dropped} buffers dropped, the host holds \
         {held} pages of {}; {counters:?}",
        64 * PAGES_PER_MIB
    );
    unload_clean(fvm, driver, memtotal)
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn firecracker_rule_compat_never_stalls_rs() -> Result<()> {
    firecracker_rule(Driver::Rs, 1)
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn firecracker_rule_full_stalls_rs() -> Result<()> {
    firecracker_rule(Driver::Rs, 2)
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn firecracker_rule_c() -> Result<()> {
    firecracker_rule(Driver::C, 1)
}

/// (b) cloud-hypervisor's rule (a descriptor of more than 256 PFNs is
/// skipped unread, the buffer returned): compat and the C driver reach
/// the target with the host holding every page; full reaches it with the
/// host ignorant of the pages (the loss).
fn cloud_hypervisor_rule(driver: Driver, buffer_format: u32) -> Result<()> {
    let (mut fvm, reached, counters) =
        inflate_under_rule("cloud-hypervisor", driver, buffer_format, 64)?;
    let memtotal = fvm.vm.meminfo("MemTotal")? + 64 * KB_PER_MIB;
    let held = number(&counters, "balloon_pages")?;
    let want = 64 * PAGES_PER_MIB;
    if buffer_format == 2 {
        ensure!(
            reached && held < want,
            "full buffers under cloud-hypervisor's rule: reached {reached}, the host holds {held} \
             of {want} pages; {counters:?}"
        );
    } else {
        ensure!(
            reached && held == want,
            "under cloud-hypervisor's rule: reached {reached}, the host holds {held} of {want} \
             pages; {counters:?}"
        );
    }
    let _ = guest_balloon_pages(&mut fvm)?;
    unload_clean(fvm, driver, memtotal)
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn cloud_hypervisor_rule_compat_host_learns_every_page_rs() -> Result<()> {
    cloud_hypervisor_rule(Driver::Rs, 1)
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn cloud_hypervisor_rule_full_loses_pages_rs() -> Result<()> {
    cloud_hypervisor_rule(Driver::Rs, 2)
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn cloud_hypervisor_rule_c() -> Result<()> {
    cloud_hypervisor_rule(Driver::C, 1)
}

/// The kernel's printk rate limit (`DEFAULT_RATELIMIT_BURST` lines per
/// `DEFAULT_RATELIMIT_INTERVAL`, 10 per 5 s): the most lines a
/// rate-limited message may print in `elapsed`.
fn rate_limited_lines(elapsed: Duration) -> usize {
    10 * (elapsed.as_secs() as usize / 5 + 1)
}

/// Waits until `driver`'s lines in the kernel log stop coming (none new
/// for two seconds); the time from `start` to the last new line seen.
fn wait_log_settles(fvm: &FaultVm, driver: Driver, start: Instant) -> Result<Duration> {
    let mut count = module_lines(fvm, driver);
    let mut last = start.elapsed();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
        let now = module_lines(fvm, driver);
        if now != count {
            count = now;
            last = start.elapsed();
            quiet_since = Instant::now();
        }
        if start.elapsed() > step_timeout() {
            bail!("the kernel log still grows after {:?}", step_timeout());
        }
    }
    Ok(last)
}

/// Lines our module printed (`virtio_balloon_rs` in the console log).
fn module_lines(fvm: &FaultVm, driver: Driver) -> usize {
    console_lines(fvm, driver.module_name())
}

/// Targets of [`config_storm`] that flip between absurd and sane.
const ABSURD_FLIPS: u64 = 100;

/// (b) Finding 13: a host that asks for an absurd balloon (num_pages
/// 2^32-1), then sends a storm of config changes, then flips between an
/// absurd and a sane target [`ABSURD_FLIPS`] times, 100 ms apart. The driver may say
/// once (or rate-limited) that it aims lower, but the storm must not
/// flood the log, and the guest must stay usable.
fn config_storm(driver: Driver) -> Result<()> {
    let mut fvm = boot("config-storm", driver, &FaultOptions::default())?;
    load(&mut fvm, driver, "")?;
    let memtotal = fvm.vm.meminfo("MemTotal")?;
    // A target the guest cannot give: both drivers take what they can.
    fvm.device.set_target_pages(u64::from(u32::MAX))?;
    std::thread::sleep(Duration::from_secs(2));
    let before = module_lines(&fvm, driver);
    let start = Instant::now();
    const STORM: u64 = 2000;
    fvm.device.command(&format!("config-storm {STORM}"))?;
    // And a host that flips between an absurd and a sane target, 10 times
    // a second: each absurd one is clamped again.
    for i in 0..ABSURD_FLIPS {
        let pages = if i % 2 == 0 {
            u64::from(u32::MAX)
        } else {
            16 * PAGES_PER_MIB
        };
        fvm.device.set_target_pages(pages)?;
        std::thread::sleep(Duration::from_millis(100));
    }
    // Back to a sane target: the storm is over when it is reached and the
    // log is quiet.
    balloon_mib(&fvm, 64)?;
    let elapsed = wait_log_settles(&fvm, driver, start)?;
    let added = module_lines(&fvm, driver) - before;
    let limit = rate_limited_lines(elapsed);
    eprintln!(
        "{STORM} config changes and {ABSURD_FLIPS} flips: {added} lines in {elapsed:?} (limit {limit})"
    );
    ensure!(
        added <= limit,
        "{STORM} config changes and {ABSURD_FLIPS} absurd/sane flips printed {added} lines in \
         {elapsed:?} (a rate-limited message: at most {limit}):\n{}",
        qemu_test::console::last_lines(&fvm.vm.console_log(), 20)
    );
    fvm.vm.sh_ok("true")?;
    unload_clean(fvm, driver, memtotal)
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn config_storm_with_an_absurd_target_does_not_flood_the_log_rs() -> Result<()> {
    config_storm(Driver::Rs)
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn config_storm_with_an_absurd_target_c() -> Result<()> {
    config_storm(Driver::C)
}

/// (b) A stats request storm: the host returns every stats buffer as soon
/// as it comes, [`STATS_STORM`] times. Each request must be answered
/// (one buffer each, no more, no fewer), with no log line.
fn stats_storm(driver: Driver) -> Result<()> {
    const STATS_STORM: u64 = 500;
    let mut fvm = boot("stats-storm", driver, &FaultOptions::default())?;
    load(&mut fvm, driver, "")?;
    let memtotal = fvm.vm.meminfo("MemTotal")?;
    fvm.device
        .wait_counters("the first stats buffer", step_timeout(), |c| {
            Ok(number(c, "stats_received")? >= 1)
        })?;
    let before_lines = module_lines(&fvm, driver);
    let before = fvm.device.counter("stats_received")?;
    fvm.device.command(&format!("stats-storm {STATS_STORM}"))?;
    // The held buffer and the next STATS_STORM are returned: as many new
    // buffers come, the last one held.
    let want = before + STATS_STORM + 1;
    let counters =
        fvm.device
            .wait_counters("every stats request answered", step_timeout(), |c| {
                Ok(number(c, "stats_received")? >= want)
            })?;
    std::thread::sleep(Duration::from_secs(1));
    let got = fvm.device.counter("stats_received")?;
    ensure!(
        got == want,
        "{got} stats buffers after a storm of {STATS_STORM} requests, expected {want}; {counters:?}"
    );
    let added = module_lines(&fvm, driver) - before_lines;
    ensure!(added == 0, "the stats storm printed {added} lines");
    unload_clean(fvm, driver, memtotal)
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn stats_request_storm_is_answered_quietly_rs() -> Result<()> {
    stats_storm(Driver::Rs)
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn stats_request_storm_c() -> Result<()> {
    stats_storm(Driver::C)
}

/// Waits until the number of buffers held on `queue` stays the same for
/// two seconds (the guest has filled what it will); returns it.
fn wait_held_settles(fvm: &FaultVm, queue: &str) -> Result<u64> {
    let key = format!("{queue}.held");
    let start = Instant::now();
    let mut last = (number(&fvm.device.counters()?, &key)?, Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let held = number(&fvm.device.counters()?, &key)?;
        if held != last.0 {
            last = (held, Instant::now());
        } else if held > 0 && last.1.elapsed() > Duration::from_secs(2) {
            return Ok(held);
        }
        if start.elapsed() > step_timeout() {
            bail!("{key} did not settle in {:?} (now {held})", step_timeout());
        }
    }
}

/// (b) Finding 3: a free page hint round whose host stops consuming the
/// hint queue. The guest has put hint blocks on the ring and waits; a
/// workload then needs memory that only those blocks can give. The hint
/// blocks are the guest's free memory lent for a hint, so the shrinker
/// must give them back: the workload (half the hinted memory more than
/// what is free) must get all its memory, with no OOM kill.
fn hint_ring_full_then_memory_pressure(driver: Driver) -> Result<()> {
    let options = FaultOptions::default()
        .features("stats,free-page-hint")
        .fault("hint:never");
    let mut fvm = boot("hint-shrinker", driver, &options)?;
    load(&mut fvm, driver, "")?;
    let memtotal = fvm.vm.meminfo("MemTotal")?;
    let free_before = fvm.vm.meminfo("MemFree")?;
    let id = fvm.device.command("hint-start")?;
    let held = wait_held_settles(&fvm, "hint")?;
    let free_after = fvm.vm.meminfo("MemFree")?;
    let hinted_mib = free_before.saturating_sub(free_after) / KB_PER_MIB;
    eprintln!("hint round {id}: {held} buffers on the ring, {hinted_mib} MiB hinted");
    ensure!(
        hinted_mib >= 64,
        "the hint round took only {hinted_mib} MiB ({held} buffers): nothing to test"
    );
    let hog_mib = free_after / KB_PER_MIB + hinted_mib / 2;
    let out = fvm.vm.sh_ok(&format!("memhog {hog_mib} 0; echo rc=$?"))?;
    let oom = console_lines(&fvm, "invoked oom-killer");
    ensure!(
        out.contains(&format!("memhog: got {hog_mib} MiB")) && oom == 0,
        "memhog {hog_mib} MiB (free {} MiB + half of {hinted_mib} MiB hinted) with the hint \
         ring full: {out:?}, {oom} OOM kills",
        free_after / KB_PER_MIB
    );
    if driver == Driver::C {
        // The C driver's rmmod hangs here (more than 60 s, before it
        // resets the device; also when the host first gives the hint
        // buffers back): its variant checks the shrinker only.
        fvm.vm.check_clean()?;
        return fvm.vm.shutdown();
    }
    fvm.vm.rmmod(driver.module_name())?;
    expect_memtotal(&mut fvm.vm, memtotal)?;
    fvm.vm.check_clean()?;
    fvm.vm.shutdown()
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn hint_ring_full_then_memory_pressure_shrinker_frees_hints_rs() -> Result<()> {
    hint_ring_full_then_memory_pressure(Driver::Rs)
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn hint_ring_full_then_memory_pressure_c() -> Result<()> {
    hint_ring_full_then_memory_pressure(Driver::C)
}

/// (b) Finding 13: free page hint start/stop storms against a host that
/// never consumes the hint queue (so the driver cannot send the command
/// ids): whatever the driver says about it must be rate-limited. (The C
/// driver floods too, "Failed to send a start id" and "a stop id" each
/// time: no C variant.)
fn hint_storm(driver: Driver) -> Result<()> {
    let options = FaultOptions::default()
        .features("stats,free-page-hint")
        .fault("hint:never");
    let mut fvm = boot("hint-storm", driver, &options)?;
    load(&mut fvm, driver, "")?;
    let memtotal = fvm.vm.meminfo("MemTotal")?;
    fvm.device.command("hint-start")?;
    wait_held_settles(&fvm, "hint")?;
    let before = module_lines(&fvm, driver);
    let start = Instant::now();
    const ROUNDS: u64 = 200;
    for _ in 0..ROUNDS {
        fvm.device.command("hint-start")?;
        fvm.device.command("hint-stop")?;
    }
    // The guest has handled the storm once it reached a target set after
    // it and the log is quiet.
    balloon_mib(&fvm, 16)?;
    let elapsed = wait_log_settles(&fvm, driver, start)?;
    let added = module_lines(&fvm, driver) - before;
    let limit = rate_limited_lines(elapsed);
    eprintln!(
        "{} driver: {ROUNDS} hint start/stop rounds: {added} lines in {elapsed:?} (limit {limit})",
        driver.label()
    );
    if driver == Driver::C {
        // C's lines are not limited (counted above, for the README's
        // table), and its rmmod after this storm did not return within
        // 60 s in 1 of 4 runs here (a host that never consumes the hint
        // queue), so the C variant ends with the target reached after the
        // storm, and kills the guest.
        fvm.vm.abandon();
        return Ok(());
    }
    ensure!(
        added <= limit,
        "{ROUNDS} hint start/stop rounds printed {added} lines in {elapsed:?} (at most {limit}):\n{}",
        qemu_test::console::last_lines(&fvm.vm.console_log(), 20)
    );
    fvm.vm.rmmod(driver.module_name())?;
    expect_memtotal(&mut fvm.vm, memtotal)?;
    fvm.vm.check_clean()?;
    fvm.vm.shutdown()
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn hint_start_stop_storm_c() -> Result<()> {
    hint_storm(Driver::C)
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn hint_start_stop_storm_does_not_flood_the_log_rs() -> Result<()> {
    hint_storm(Driver::Rs)
}

/// What our driver gives back per OOM event.
const OOM_DEFLATE_KIB: u64 = 16 * 1024;
/// A balloon block (2 MiB, a host huge page), which is never split.
const BLOCK_KIB: u64 = 2 * 1024;

/// The KiB each OOM event gave back, from our driver's "guest out of
/// memory: gave back N KiB" lines.
fn oom_deflates_kib(fvm: &FaultVm) -> Vec<u64> {
    fvm.vm
        .console_log()
        .lines()
        .filter_map(|line| {
            let rest = line.split("guest out of memory: gave back ").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// (b) Findings 9 and 11: DEFLATE_ON_OOM. With three quarters of what is
/// available ballooned (a debug kernel keeps more for itself), a workload
/// needs more than is free, so the OOM notifier deflates. The host holds
/// the first deflate buffer for 2 s and sets a new target meanwhile,
/// [`NEW_TARGET_MORE_MIB`] above the old one (a target
/// below where the OOM deflates leave the balloon would be reached
/// anyway). Each OOM event must give back 16 MiB (the README's
/// rule, whatever the buffer format: finding 11 is 1 MiB per buffer in
/// flight under compat), the workload must get its memory, and once it
/// is gone the balloon must reach the new target (finding 9: a target set
/// while the OOM deflate runs is ignored).
fn oom_deflate(driver: Driver, buffer_format: u32) -> Result<()> {
    /// How far above the old target the host sets the new one during the
    /// first OOM deflate.
    const NEW_TARGET_MORE_MIB: u64 = 32;
    let options = FaultOptions::default().features("stats,deflate-on-oom");
    let mut fvm = boot(&format!("oom-format{buffer_format}"), driver, &options)?;
    load(&mut fvm, driver, &format!("buffer_format={buffer_format}"))?;
    let old_target_mib = fvm.vm.meminfo("MemAvailable")? / KB_PER_MIB * 3 / 4;
    let new_target_mib = old_target_mib + NEW_TARGET_MORE_MIB;
    balloon_mib(&fvm, old_target_mib)?;
    let free_mib = fvm.vm.meminfo("MemAvailable")? / KB_PER_MIB;
    let hog_mib = free_mib + 64;
    // The first OOM deflate is held for a while: the new target comes
    // while it is in flight.
    fvm.device.command("fault deflate:late=2000@1")?;
    let deflated_before = fvm.device.counter("pages_deflated")?;
    fvm.vm
        .spawn(&format!("memhog {hog_mib} 3"), "/tmp/memhog.log")?;
    fvm.device
        .wait_counters("an OOM deflate", step_timeout(), |c| {
            Ok(number(c, "pages_deflated")? > deflated_before)
        })?;
    fvm.device
        .set_target_pages(new_target_mib * PAGES_PER_MIB)?;
    let start = Instant::now();
    loop {
        let log = fvm.vm.sh_ok("cat /tmp/memhog.log")?;
        if log.contains(&format!("memhog: got {hog_mib} MiB")) {
            break;
        }
        ensure!(
            console_lines(&fvm, "Killed process") == 0,
            "the workload was OOM-killed with {} MiB in a deflate-on-OOM balloon: {log:?}",
            fvm.device.actual_pages()? / PAGES_PER_MIB
        );
        ensure!(
            start.elapsed() < step_timeout(),
            "memhog {hog_mib} did not get its memory: {log:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // memhog holds for 3 s, then exits; the new target must be reached.
    // Both findings are checked before either fails the test.
    let mut problems = Vec::new();
    if let Err(e) = fvm
        .device
        .wait_actual(new_target_mib * PAGES_PER_MIB, step_timeout())
    {
        problems.push(format!("the target set during the OOM deflate: {e:#}"));
    }
    if driver == Driver::Rs {
        // 16 MiB each; a 2 MiB block the host backs with a huge page is
        // never split, so an event that ends in one gives back up to
        // 2 MiB less one page more.
        let events = oom_deflates_kib(&fvm);
        let most = OOM_DEFLATE_KIB + BLOCK_KIB - 4;
        if events.is_empty()
            || events
                .iter()
                .any(|kib| !(OOM_DEFLATE_KIB..=most).contains(kib))
        {
            problems.push(format!(
                "OOM events gave back {events:?} KiB, expected {OOM_DEFLATE_KIB}-{most} each"
            ));
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    let memtotal = fvm.vm.meminfo("MemTotal")?;
    fvm.vm.rmmod(driver.module_name())?;
    expect_memtotal(&mut fvm.vm, memtotal)?;
    fvm.vm.check_console(ConsoleRules::allowing_oom_kills())?;
    fvm.vm.shutdown()
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn oom_deflate_compat_gives_16_mib_and_keeps_new_target_rs() -> Result<()> {
    oom_deflate(Driver::Rs, 1)
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn oom_deflate_full_gives_16_mib_and_keeps_new_target_rs() -> Result<()> {
    oom_deflate(Driver::Rs, 2)
}

#[test]
#[ignore = "the fault tests: make test-faults"]
fn oom_deflate_keeps_new_target_c() -> Result<()> {
    oom_deflate(Driver::C, 0)
}

/// (b) Finding 8: after the inflate queue broke (and, once finding 6 is
/// fixed, the device was reset), balloon page migration (compaction) and
/// free page reporting must not use the device as if nothing happened:
/// the guest stays usable, rmmod gives every page back, the log stays
/// clean (and free page reports sent after a reset would never come back:
/// rmmod would hang on one).
#[test]
#[ignore = "the fault tests: make test-faults"]
fn migration_and_reporting_after_a_broken_queue_stay_clean_rs() -> Result<()> {
    let driver = Driver::Rs;
    let options = FaultOptions::default().features("stats,reporting");
    let mut fvm = boot("after-broken", driver, &options)?;
    let memtotal = fvm.vm.meminfo("MemTotal")?;
    load(
        &mut fvm,
        driver,
        &format!("host_timeout_ms={HOST_TIMEOUT_MS}"),
    )?;
    balloon_mib(&fvm, 128)?;
    fvm.device.command("fault inflate:bogus-id@1")?;
    fvm.device.set_target_pages(192 * PAGES_PER_MIB)?;
    fvm.device
        .wait_counters("the bogus id returned", step_timeout(), |c| {
            Ok(number(c, "inflate.dropped")? >= 1)
        })?;
    std::thread::sleep(Duration::from_millis(3 * HOST_TIMEOUT_MS));
    let reported_before = fvm.device.counter("reported_bytes")?;
    // Free memory for reporting (the kernel reports free blocks about 2 s
    // after they are freed), and compaction for migration.
    fvm.vm.sh_ok(&format!("memhog {} 0", GUEST_MIB / 2))?;
    fvm.vm.sh_ok("echo 1 > /proc/sys/vm/compact_memory")?;
    std::thread::sleep(Duration::from_secs(4));
    let counters = fvm.device.counters()?;
    eprintln!(
        "after the break: {} bytes reported before, {} after, {} queue stops",
        reported_before,
        number(&counters, "reported_bytes")?,
        number(&counters, "vring_stops")?
    );
    fvm.vm.sh_ok("true")?;
    fvm.vm.rmmod(driver.module_name())?;
    expect_memtotal(&mut fvm.vm, memtotal)?;
    fvm.vm.check_clean()?;
    fvm.vm.shutdown()
}
