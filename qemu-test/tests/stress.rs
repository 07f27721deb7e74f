// SPDX-License-Identifier: GPL-2.0

//! Stress and fault VM tests: the balloon inflating while the guest works,
//! while the module comes and goes, while page allocations fail, while the
//! guest suspends, while the device is hot-unplugged and while the VM is
//! stopped.
//!
//! They run on whatever kernel the harness boots (`make test`: the test
//! kernel; `make test-debug`: the debug kernel, with KASAN, lockdep and
//! kmemleak watching). Counts are small by default; `VBRS_STRESS=full` runs
//! the full counts. Targets and pauses are random: each test prints its
//! seed, and `VBRS_SEED=<seed>` replays it.

mod common;

use std::time::Duration;
use std::time::Instant;

use anyhow::anyhow;
use anyhow::ensure;
use anyhow::Context;
use common::boot;
use common::bound_device;
use common::expect_exact_target;
use common::expect_memtotal;
use common::guest_stats;
use common::last_update;
use common::stat;
use common::unload_and_power_off;
use common::unload_and_power_off_with;
use common::vmstat;
use common::DEBUGFS;
use common::GUEST_MIB;
use qapi::qmp;
use qemu_test::config::spare_root_port;
use qemu_test::console::ConsoleRules;
use qemu_test::kernel::guest_kernel;
use qemu_test::qmp::Event;
use qemu_test::qmp::BALLOON_QOM_PATH;
use qemu_test::scaled;
use qemu_test::Driver;
use qemu_test::GuestShell;
use qemu_test::Result;
use qemu_test::Vm;
use qemu_test::VmConfig;
use qemu_test::MIB;
use serde_json::json;

/// The module name, as `rmmod` and `/proc/modules` know it.
const MODULE: &str = "virtio_balloon_rs";

/// The fault-injection directory of the page allocator.
const FAIL_PAGE_ALLOC: &str = "/sys/kernel/debug/fail_page_alloc";

/// How many rounds a test runs: `quick` by default, `full` with
/// `VBRS_STRESS=full`.
fn rounds(quick: u64, full: u64) -> Result<u64> {
    match std::env::var("VBRS_STRESS").as_deref() {
        Err(_) | Ok("") | Ok("quick") => Ok(quick),
        Ok("full") => Ok(full),
        Ok(other) => Err(anyhow!("VBRS_STRESS={other}: expected quick or full")),
    }
}

/// A random number generator seeded from `VBRS_SEED` or the clock; prints
/// the seed so a failure can be replayed.
fn rng(test: &str) -> Result<fastrand::Rng> {
    let seed = match std::env::var("VBRS_SEED") {
        Ok(text) if !text.is_empty() => text
            .parse()
            .map_err(|_| anyhow!("VBRS_SEED={text}: expected a number"))?,
        _ => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    eprintln!("{test}: seed {seed} (VBRS_SEED={seed} replays it)");
    Ok(fastrand::Rng::with_seed(seed))
}

/// A random pause of up to `max_ms` milliseconds.
fn pause(rng: &mut fastrand::Rng, max_ms: u64) {
    std::thread::sleep(Duration::from_millis(rng.u64(0..=max_ms)));
}

/// [`boot`]s a guest; returns it and its boot `MemTotal`.
fn boot_measured(config: VmConfig) -> Result<(Vm, u64)> {
    let mut vm = boot(config)?;
    let memtotal = vm.meminfo("MemTotal")?;
    Ok((vm, memtotal))
}

/// Checks that nothing is ballooned: `MemTotal` at its boot value, an
/// empty `Balloon:`, the host's `actual` the whole guest.
fn expect_empty_balloon(vm: &mut Vm, memtotal: u64) -> Result<()> {
    expect_memtotal(vm, memtotal)?;
    let balloon = vm.meminfo("Balloon")?;
    ensure!(balloon == 0, "Balloon: {balloon} kB left");
    let actual = vm.qmp().query_balloon()?;
    ensure!(
        actual == GUEST_MIB * MIB,
        "actual {} MiB, expected the whole guest",
        actual / MIB
    );
    Ok(())
}

/// Checks that every page ever inflated was deflated (vmstat).
fn expect_no_lost_page(vm: &mut Vm) -> Result<()> {
    let inflated = vmstat(vm, "balloon_inflate")?;
    let deflated = vmstat(vm, "balloon_deflate")?;
    ensure!(
        inflated == deflated,
        "pages lost: inflated {inflated}, deflated {deflated}"
    );
    Ok(())
}

#[test]
fn random_targets_under_a_workload_end_exact() -> Result<()> {
    let mut rng = rng("random_targets")?;
    let targets = rounds(30, 1000)?;
    let (mut vm, memtotal) = boot_measured(VmConfig::new("stress_targets"))?;
    vm.load(Driver::Rs)?;
    vm.qmp()
        .qom_set(BALLOON_QOM_PATH, "guest-stats-polling-interval", json!(1))?;
    // The workload, not the test shell, is what the OOM killer may take
    // when a target leaves the guest short: anonymous memory, page cache
    // churn on tmpfs, and compaction every few seconds.
    vm.sh_ok("echo -1000 > /proc/self/oom_score_adj")?;
    // Each job logs a line per round, to show it ran.
    let jobs = [
        ("hog", "while :; do memhog 192 1; done", "memhog: got"),
        (
            "churn",
            "while :; do dd if=/dev/zero of=/tmp/churn bs=1M count=64 && rm -f /tmp/churn; done",
            "records out",
        ),
        (
            "compact",
            "while :; do echo 1 > /proc/sys/vm/compact_memory && echo compacted; sleep 3; done",
            "compacted",
        ),
    ];
    for (name, job, _) in jobs {
        let pid = vm.spawn(
            &format!("( echo 1000 > /proc/self/oom_score_adj; {job} )"),
            &format!("/tmp/{name}.log"),
        )?;
        vm.sh_ok(&format!("echo {pid} >> /tmp/workload.pids"))?;
    }
    // The targets start once every job has done a round.
    let timeout = scaled(Duration::from_secs(60));
    let start = Instant::now();
    for (name, _, done) in jobs {
        loop {
            let log = vm.sh_ok(&format!("cat /tmp/{name}.log"))?;
            if log.contains(done) {
                break;
            }
            ensure!(
                start.elapsed() < timeout,
                "workload {name} did not complete a round in {timeout:?}: {log}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let first_update = last_update(&guest_stats(&mut vm)?);
    for round in 0..targets {
        let target = rng.u64(64..=GUEST_MIB);
        vm.qmp().balloon(target * MIB)?;
        pause(&mut rng, 500);
        if round % 10 == 0 {
            // The guest still answers, and the stats still come.
            vm.sh_ok("true")?;
            let stats = guest_stats(&mut vm)?;
            stat(&stats, "stat-free-memory")?;
        }
    }
    let workload_update = last_update(&guest_stats(&mut vm)?);
    vm.sh_ok(
        "kill $(cat /tmp/workload.pids); killall memhog dd; \
         while pidof memhog dd > /dev/null; do sleep 0.1; done; rm -f /tmp/churn",
    )?;
    // The guest needs room for itself: the last target is in the upper half.
    let last = rng.u64(GUEST_MIB / 2..=GUEST_MIB);
    vm.qmp().balloon(last * MIB)?;
    eprintln!("{targets} random targets, the last {last} MiB");
    expect_exact_target(&mut vm, memtotal, last)?;
    // Stats kept coming under the workload, and the next ones show the
    // guest's new size.
    ensure!(
        workload_update > first_update,
        "guest-stats not updated during the workload ({first_update} -> {workload_update})"
    );
    let settled = last_update(&guest_stats(&mut vm)?);
    let timeout = scaled(Duration::from_secs(10));
    let start = Instant::now();
    let stats = loop {
        let stats = guest_stats(&mut vm)?;
        if last_update(&stats) > settled {
            break stats;
        }
        ensure!(
            start.elapsed() < timeout,
            "no guest-stats in {timeout:?} after the last target: {stats}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let total = stat(&stats, "stat-total-memory")?;
    let expected = (memtotal - (GUEST_MIB - last) * 1024) * 1024;
    ensure!(
        total == expected,
        "stat-total-memory {total}, MemTotal says {expected}"
    );
    unload_and_power_off_with(vm, Some(memtotal), ConsoleRules::allowing_oom_kills())
}

#[test]
fn insmod_rmmod_cycles_while_inflating_lose_no_page() -> Result<()> {
    let mut rng = rng("insmod_rmmod")?;
    let cycles = rounds(5, 100)?;
    let (mut vm, memtotal) = boot_measured(VmConfig::new("stress_reload"))?;
    for cycle in 0..cycles {
        vm.load(Driver::Rs)?;
        let target = rng.u64(256..=1536);
        vm.qmp().balloon(target * MIB)?;
        pause(&mut rng, 300);
        let inflating = vm.qmp().query_balloon()? / MIB;
        vm.rmmod(MODULE)?;
        expect_empty_balloon(&mut vm, memtotal).with_context(|| {
            format!("cycle {cycle} (target {target} MiB, actual {inflating} MiB at rmmod)")
        })?;
    }
    expect_no_lost_page(&mut vm)?;
    vm.check_clean()?;
    vm.shutdown()
}

/// The address range of a loaded module's memory, from `/proc/modules`
/// (the address is the start of its text, the size covers all its parts).
fn module_range(vm: &mut Vm, module: &str) -> Result<(u64, u64)> {
    let line = vm.sh_ok(&format!("grep '^{module} ' /proc/modules"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let size = fields.get(1).and_then(|s| s.parse::<u64>().ok());
    let base = fields
        .iter()
        .find_map(|f| u64::from_str_radix(f.strip_prefix("0x")?, 16).ok());
    match (base, size) {
        (Some(base), Some(size)) if base != 0 => Ok((base, base + size)),
        _ => Err(anyhow!(
            "no address range for {module} in /proc/modules: {line:?}"
        )),
    }
}

/// Reads a number from a `fail_page_alloc` file.
fn fail_attr(vm: &mut Vm, file: &str) -> Result<i64> {
    let text = vm.sh_ok(&format!("cat {FAIL_PAGE_ALLOC}/{file}"))?;
    text.trim()
        .parse()
        .map_err(|_| anyhow!("{FAIL_PAGE_ALLOC}/{file}: not a number: {text:?}"))
}

#[test]
#[ignore = "needs the debug kernel's fail_page_alloc: make test-debug"]
fn page_allocation_failures_during_inflation_lose_no_page() -> Result<()> {
    /// Failures allowed before the injection stops by itself.
    const BUDGET: i64 = 100_000;
    let kernel = guest_kernel()?;
    ensure!(
        kernel.config.has_fail_page_alloc(),
        "this kernel has no fail_page_alloc with a stack filter \
         (FAIL_PAGE_ALLOC, FAULT_INJECTION_DEBUG_FS, FAULT_INJECTION_STACKTRACE_FILTER): \
         run this test with `make test-debug`"
    );
    let mut rng = rng("fail_page_alloc")?;
    let (mut vm, memtotal) = boot_measured(VmConfig::new("stress_fail_page_alloc"))?;
    vm.load(Driver::Rs)?;
    let (start, end) = module_range(&mut vm, MODULE)?;
    // 10 % of the page allocations made from the module's code fail, of
    // every kind (sleeping, highmem, order 0), without a log line each.
    vm.sh_ok(&format!(
        "cd {FAIL_PAGE_ALLOC} && echo 0 > probability && echo N > task-filter && \
         echo N > ignore-gfp-wait && echo N > ignore-gfp-highmem && echo 0 > min-order && \
         echo 0 > verbose && echo 0 > space && echo 1 > interval && \
         echo 32 > stacktrace-depth && echo {start:#x} > require-start && \
         echo {end:#x} > require-end && echo {BUDGET} > times && echo 10 > probability; cd /tmp"
    ))?;
    for _ in 0..rounds(4, 20)? {
        let target = rng.u64(512..=1792);
        vm.qmp().balloon(target * MIB)?;
        std::thread::sleep(Duration::from_secs(2) + Duration::from_millis(rng.u64(0..=2000)));
    }
    let injected = BUDGET - fail_attr(&mut vm, "times")?;
    vm.sh_ok(&format!("echo 0 > {FAIL_PAGE_ALLOC}/probability"))?;
    eprintln!("{injected} page allocations of the module failed");
    ensure!(
        injected > 0,
        "no allocation of the module failed: the injection missed the driver"
    );
    // With allocations working again, the driver reaches a new target.
    let last = rng.u64(512..=1536);
    vm.qmp().balloon(last * MIB)?;
    expect_exact_target(&mut vm, memtotal, last)?;
    let dev = bound_device(&mut vm)?;
    eprintln!("{}", vm.sh_ok(&format!("cat {DEBUGFS}/{dev}/status"))?);
    vm.rmmod(MODULE)?;
    expect_empty_balloon(&mut vm, memtotal)?;
    expect_no_lost_page(&mut vm)?;
    // An injected failure of an allocation that may warn prints a report.
    vm.check_console(ConsoleRules::allowing_allocation_failures())?;
    vm.shutdown()
}

#[test]
fn suspend_resume_cycles_while_inflating_keep_the_target() -> Result<()> {
    let mut rng = rng("suspend")?;
    let cycles = rounds(3, 20)?;
    let (mut vm, memtotal) = boot_measured(VmConfig::new("stress_suspend"))?;
    vm.load(Driver::Rs)?;
    // pm_test "devices": freeze tasks, run every device's freeze callback,
    // wait pm_test_delay seconds, run the restore callbacks.
    vm.sh_ok(
        "echo devices > /sys/power/pm_test; \
         echo 1 > /sys/module/suspend/parameters/pm_test_delay",
    )?;
    for cycle in 0..cycles {
        let target = rng.u64(512..=1792);
        vm.qmp().balloon(target * MIB)?;
        pause(&mut rng, 300);
        let (rc, out) = vm.run(
            "echo freeze > /sys/power/state",
            scaled(Duration::from_secs(120)),
        )?;
        ensure!(rc == 0, "cycle {cycle}: freeze failed ({rc}): {out}");
        expect_exact_target(&mut vm, memtotal, target)
            .with_context(|| format!("after freeze/restore {cycle} (target {target} MiB)"))?;
    }
    let dmesg = vm.dmesg()?;
    let binds = dmesg.matches("bound: features").count() as u64;
    ensure!(
        binds == cycles + 1,
        "expected {} binds (insmod and each restore), got {binds}",
        cycles + 1
    );
    unload_and_power_off(vm, Some(memtotal))
}

/// Hot-unplugs the balloon device `id` (`device_del`), waits until QEMU
/// says it is gone (`DEVICE_DELETED`, and no longer in `query-pci`), then
/// checks that the guest answers, the driver logged one more unbind of the
/// device it had bound, holds no device, and gave every page back.
fn unplug_balloon(vm: &mut Vm, id: &str, memtotal: u64) -> Result<()> {
    let dev = bound_device(vm)?;
    let unbind = format!("{MODULE} {dev}: balloon empty");
    let unbinds = vm.dmesg()?.matches(&unbind).count();
    vm.qmp().execute(&qmp::device_del { id: id.into() })?;
    let timeout = scaled(Duration::from_secs(60));
    let start = Instant::now();
    let quoted = format!("\"{id}\"");
    loop {
        // Any command reads the events QEMU sent meanwhile.
        let pci = vm.qmp().execute(&qmp::query_pci {})?;
        let deleted = vm.qmp().events().iter().any(|event| {
            matches!(event, Event::DEVICE_DELETED { data, .. }
                if data.device.as_deref() == Some(id))
        });
        // The device may sit behind a bridge: look through the whole reply.
        let pci = serde_json::to_string(&pci)?;
        if deleted && !pci.contains(&quoted) {
            break;
        }
        ensure!(
            start.elapsed() < timeout,
            "no DEVICE_DELETED for {id} in {timeout:?}; query-pci: {pci}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("{id} ({dev}) unplugged in {:?}", start.elapsed());
    vm.sh_ok("echo alive")?;
    let dmesg = vm.dmesg()?;
    ensure!(
        dmesg.matches(&unbind).count() == unbinds + 1,
        "the driver did not log the unbind of {dev}:\n{dmesg}"
    );
    let bound = vm.sh_ok(&format!("ls /sys/bus/virtio/drivers/{MODULE}/"))?;
    ensure!(
        !bound.contains("virtio"),
        "a device is still bound: {bound}"
    );
    expect_memtotal(vm, memtotal)?;
    let balloon = vm.meminfo("Balloon")?;
    ensure!(balloon == 0, "Balloon: {balloon} kB left");
    expect_no_lost_page(vm)
}

#[test]
fn hot_unplug_while_inflating_gives_every_page_back() -> Result<()> {
    let mut rng = rng("hot_unplug")?;
    let (mut vm, memtotal) = boot_measured(VmConfig::new("stress_unplug").balloon_on_root_port())?;
    vm.load(Driver::Rs)?;
    vm.qmp().balloon(512 * MIB)?;
    pause(&mut rng, 300);
    let inflating = vm.qmp().query_balloon()? / MIB;
    eprintln!("device_del with actual at {inflating} MiB");
    unplug_balloon(&mut vm, "balloon0", memtotal)?;
    unload_and_power_off(vm, Some(memtotal))
}

#[test]
fn hot_plugged_balloons_bind_follow_targets_and_unplug_cleanly() -> Result<()> {
    // A balloon device added while the module is loaded binds and works;
    // taken away while inflated, it gives everything back; twice, as
    // virt test suites plug and unplug it. Each goes into a root port of
    // its own, empty since boot (see `VmConfig::spare_root_ports` for why).
    let config = VmConfig::new("stress_hotplug")
        .balloon_on_root_port()
        .spare_root_ports(2);
    let (mut vm, memtotal) = boot_measured(config)?;
    vm.load(Driver::Rs)?;
    unplug_balloon(&mut vm, "balloon0", memtotal)?;
    for round in 1..=2u32 {
        let port = spare_root_port(round);
        let id = format!("hotballoon{round}");
        vm.qmp().execute(&qmp::device_add {
            driver: "virtio-balloon-pci".into(),
            bus: Some(port),
            id: Some(id.clone()),
            arguments: Default::default(),
        })?;
        let timeout = scaled(Duration::from_secs(60));
        let start = Instant::now();
        let dev = loop {
            match bound_device(&mut vm) {
                Ok(dev) => break dev,
                Err(err) => ensure!(
                    start.elapsed() < timeout,
                    "{id} was plugged but not bound in {timeout:?} ({err:#}):\n{}",
                    vm.dmesg()?
                ),
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        eprintln!("{id} bound as {dev} in {:?}", start.elapsed());
        let target = GUEST_MIB - 256 * u64::from(round);
        vm.qmp().balloon(target * MIB)?;
        expect_exact_target(&mut vm, memtotal, target)?;
        unplug_balloon(&mut vm, &id, memtotal)?;
    }
    unload_and_power_off(vm, Some(memtotal))
}

#[test]
fn stop_and_cont_mid_inflation_reach_the_target() -> Result<()> {
    let mut rng = rng("stop_cont")?;
    let cycles = rounds(3, 20)?;
    let (mut vm, memtotal) = boot_measured(VmConfig::new("stress_stop_cont"))?;
    vm.load(Driver::Rs)?;
    for cycle in 0..cycles {
        let target = rng.u64(512..=1792);
        vm.qmp().balloon(target * MIB)?;
        pause(&mut rng, 300);
        vm.qmp().execute(&qmp::stop {})?;
        let status = vm.qmp().execute(&qmp::query_status {})?;
        ensure!(
            !status.running,
            "cycle {cycle}: still running after stop: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(rng.u64(500..=3000)));
        vm.qmp().execute(&qmp::cont {})?;
        expect_exact_target(&mut vm, memtotal, target)
            .with_context(|| format!("after stop/cont {cycle} (target {target} MiB)"))?;
    }
    unload_and_power_off(vm, Some(memtotal))
}
