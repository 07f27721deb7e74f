// SPDX-License-Identifier: GPL-2.0

//! VM tests of the features beyond inflate/deflate: the stats queue,
//! deflate-on-OOM, free page reporting, page poison, suspend (freeze and
//! restore) and the debugfs view, each with the QEMU option that turns it on.

mod common;

use std::time::Duration;
use std::time::Instant;

use anyhow::anyhow;
use anyhow::ensure;
use common::actual_mib;
use common::balloon_timeout;
use common::balloon_to_mib;
use common::boot_loaded;
use common::bound_device;
use common::debugfs;
use common::expect_memtotal;
use common::guest_stats;
use common::last_update;
use common::negotiated_features;
use common::start_hog;
use common::stat;
use common::unload_and_power_off;
use common::vmstat;
use common::DEBUGFS;
use common::GUEST_MIB;
use qemu_test::console::ConsoleRules;
use qemu_test::migration::hint_vm_config;
use qemu_test::migration::migrate_to_nowhere;
use qemu_test::migration::HINT_BANDWIDTH;
use qemu_test::qmp::BALLOON_QOM_PATH;
use qemu_test::scaled;
use qemu_test::Driver;
use qemu_test::GuestShell;
use qemu_test::Result;
use qemu_test::Vm;
use qemu_test::VmConfig;
use qemu_test::MIB;
use serde_json::json;

/// Whether `a` and `b` (bytes) agree within 10 % or 150 MiB.
fn close(a: u64, b: u64) -> bool {
    let diff = a.abs_diff(b);
    diff <= 150 * MIB || diff * 10 <= a.max(b)
}

#[test]
fn stats_reach_the_host_and_follow_the_guest() -> Result<()> {
    let mut vm = boot_loaded(VmConfig::new("stats"))?;
    ensure!(
        negotiated_features(&mut vm)? & 1 << 1 != 0,
        "STATS_VQ not negotiated"
    );
    vm.qmp()
        .qom_set(BALLOON_QOM_PATH, "guest-stats-polling-interval", json!(2))?;
    let start = Instant::now();
    let mut stats = guest_stats(&mut vm)?;
    while last_update(&stats) == 0 {
        ensure!(
            start.elapsed() < scaled(Duration::from_secs(5)),
            "no guest-stats in time: {stats}"
        );
        std::thread::sleep(Duration::from_millis(100));
        stats = guest_stats(&mut vm)?;
    }
    eprintln!("first guest-stats after {:?}: {stats}", start.elapsed());
    let free = stat(&stats, "stat-free-memory")?;
    let caches = stat(&stats, "stat-disk-caches")?;
    let total = stat(&stats, "stat-total-memory")?;
    let available = stat(&stats, "stat-available-memory")?;
    let mem_free = vm.meminfo("MemFree")? * 1024;
    let cached = vm.meminfo("Cached")? * 1024;
    let mem_total = vm.meminfo("MemTotal")? * 1024;
    let mem_available = vm.meminfo("MemAvailable")? * 1024;
    ensure!(close(free, mem_free), "free {free} vs MemFree {mem_free}");
    ensure!(close(caches, cached), "caches {caches} vs Cached {cached}");
    ensure!(total == mem_total, "total {total} vs MemTotal {mem_total}");
    ensure!(
        close(available, mem_available),
        "available {available} vs MemAvailable {mem_available}"
    );
    // Counters the C driver sends are there too.
    for name in [
        "stat-minor-faults",
        "stat-major-faults",
        "stat-swap-in",
        "stat-oom-kills",
    ] {
        stat(&stats, name)?;
    }
    ensure!(
        stat(&stats, "stat-minor-faults")? > 0,
        "no minor faults counted"
    );

    // The figures follow the guest: inflating takes free memory away.
    balloon_to_mib(&mut vm, 1024)?;
    // A report newer than the latest one now was made after the target was
    // reached (the one read before the inflation may be followed by a
    // report from its middle, which a slow inflation makes likely).
    let before = last_update(&guest_stats(&mut vm)?);
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(250));
        stats = guest_stats(&mut vm)?;
        if last_update(&stats) > before + 1 {
            break;
        }
        ensure!(
            start.elapsed() < scaled(Duration::from_secs(8)),
            "last-update did not advance: {stats}"
        );
    }
    let free_after = stat(&stats, "stat-free-memory")?;
    ensure!(
        free_after + 800 * MIB < free,
        "free memory {free} -> {free_after} after inflating 1 GiB"
    );

    // Polling off: nothing new is pushed.
    vm.qmp()
        .qom_set(BALLOON_QOM_PATH, "guest-stats-polling-interval", json!(0))?;
    std::thread::sleep(Duration::from_secs(3));
    let frozen = last_update(&guest_stats(&mut vm)?);
    std::thread::sleep(Duration::from_secs(5));
    let later = last_update(&guest_stats(&mut vm)?);
    ensure!(
        later == frozen,
        "stats still updated with polling off: {frozen} -> {later}"
    );
    ensure!(
        debugfs(&mut vm, "stats_updates")? >= 2,
        "debugfs stats_updates"
    );
    unload_and_power_off(vm, None)
}

#[test]
fn debugfs_view_matches_the_host() -> Result<()> {
    let mut vm = boot_loaded(VmConfig::new("debugfs"))?;
    let dev = bound_device(&mut vm)?;
    let status = vm.sh_ok(&format!("cat {DEBUGFS}/{dev}/status"))?;
    eprintln!("{status}");
    ensure!(
        status.contains("actual:") && status.contains("STATS_VQ"),
        "status: {status}"
    );
    let features = vm.sh_ok(&format!("cat {DEBUGFS}/{dev}/features"))?;
    // debugfs shows the balloon bits and VERSION_1; sysfs adds the ring
    // transport bits (event index, ring reset) the virtio core keeps.
    let balloon_bits = ((1 << 6) - 1) | (1 << 32) | (1 << 33);
    let sysfs = negotiated_features(&mut vm)? & balloon_bits;
    ensure!(
        features.starts_with(&format!("{sysfs:#x} ")),
        "debugfs features {features:?}, sysfs {sysfs:#x}"
    );
    for (target_mib, inflated_mib, deflated_mib) in [
        (1024u64, 1024u64, 0u64),
        (1536, 1024, 512),
        (2048, 1024, 1024),
    ] {
        balloon_to_mib(&mut vm, target_mib)?;
        let host_actual = vm.qmp().query_balloon()?;
        let balloon_pages = (GUEST_MIB * MIB - host_actual) / 4096;
        ensure!(
            debugfs(&mut vm, "actual_pages")? == balloon_pages,
            "debugfs actual_pages vs host {balloon_pages}"
        );
        ensure!(
            debugfs(&mut vm, "target_pages")? == (GUEST_MIB - target_mib) * 256,
            "debugfs target_pages"
        );
        ensure!(
            debugfs(&mut vm, "inflated_pages")? == inflated_mib * 256,
            "debugfs inflated_pages"
        );
        ensure!(
            debugfs(&mut vm, "deflated_pages")? == deflated_mib * 256,
            "debugfs deflated_pages"
        );
    }
    ensure!(debugfs(&mut vm, "alloc_failures")? == 0, "alloc failures");
    ensure!(debugfs(&mut vm, "backoff_ms")? == 0, "backing off");
    ensure!(debugfs(&mut vm, "host_stalled")? == 0, "host stalled");
    vm.rmmod("virtio_balloon_rs")?;
    let left = vm.sh_ok(&format!("ls {DEBUGFS} 2>/dev/null | wc -l"))?;
    ensure!(
        left.trim() == "0",
        "debugfs entries left after rmmod: {left}"
    );
    vm.check_clean()?;
    vm.shutdown()
}

/// Runs memhog for `mib` MiB and returns its exit code and output.
fn hog(vm: &mut Vm, mib: u64) -> Result<(i32, String)> {
    vm.run(&format!("memhog {mib} 0"), scaled(Duration::from_secs(300)))
}

#[test]
fn deflate_on_oom_gives_pages_back_instead_of_killing() -> Result<()> {
    let mut vm = boot_loaded(VmConfig::new("deflate_on_oom").balloon_options("deflate-on-oom=on"))?;
    ensure!(
        negotiated_features(&mut vm)? & 1 << 2 != 0,
        "DEFLATE_ON_OOM not negotiated"
    );
    let memtotal = vm.meminfo("MemTotal")?;
    balloon_to_mib(&mut vm, 1024)?;
    // The pages may come back at any time: they stay in MemTotal.
    expect_memtotal(&mut vm, memtotal)?;
    let available_mib = vm.meminfo("MemAvailable")? / 1024;
    let want = available_mib + 300;
    let (rc, out) = hog(&mut vm, want)?;
    eprintln!("memhog {want}: rc {rc}, {}", out.trim());
    ensure!(
        rc == 0 && out.contains(&format!("got {want} MiB")),
        "memhog {want} MiB did not complete: rc {rc}, {out}"
    );
    ensure!(
        vmstat(&mut vm, "oom_kill")? == 0,
        "OOM kill while the balloon had pages"
    );
    let actual = actual_mib(&mut vm)?;
    ensure!(
        actual >= 1024 + 250,
        "balloon did not shrink: actual {actual} MiB"
    );
    let oom_deflated = debugfs(&mut vm, "oom_deflated_pages")?;
    ensure!(
        oom_deflated >= 250 * 256,
        "oom_deflated_pages {oom_deflated}"
    );
    // The balloon stays down until the host asks again.
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        actual_mib(&mut vm)? == actual,
        "re-inflated without a new target"
    );
    balloon_to_mib(&mut vm, 1536)?;
    unload_and_power_off(vm, Some(memtotal))
}

#[test]
fn without_deflate_on_oom_the_balloon_holds() -> Result<()> {
    let mut vm = boot_loaded(VmConfig::new("no_deflate_on_oom"))?;
    ensure!(
        negotiated_features(&mut vm)? & 1 << 2 == 0,
        "DEFLATE_ON_OOM negotiated"
    );
    balloon_to_mib(&mut vm, 1024)?;
    let available_mib = vm.meminfo("MemAvailable")? / 1024;
    let (rc, out) = hog(&mut vm, available_mib + 300)?;
    eprintln!("memhog: rc {rc}, {}", out.trim());
    ensure!(rc != 0, "memhog got more than the guest had");
    ensure!(vmstat(&mut vm, "oom_kill")? >= 1, "expected the OOM killer");
    ensure!(
        actual_mib(&mut vm)? == 1024,
        "balloon shrank without deflate-on-oom"
    );
    vm.rmmod("virtio_balloon_rs")?;
    vm.check_console(ConsoleRules::allowing_oom_kills())?;
    vm.shutdown()
}

#[test]
fn free_page_reporting_returns_memory_to_the_host() -> Result<()> {
    /// What the hog takes: half of the guest.
    const HOG_MIB: u64 = 2048;
    let mut vm = boot_loaded(
        VmConfig::new("free_page_reporting")
            .memory_mib(4096)
            // A host running KSM would merge the hog's pages (each MiB holds
            // the same bytes) and hide them from QEMU's RSS.
            .qemu_args(["-machine", "mem-merge=off"])
            .balloon_options("free-page-reporting=on"),
    )?;
    ensure!(
        negotiated_features(&mut vm)? & 1 << 5 != 0,
        "REPORTING not negotiated"
    );
    let before = vm.qemu_rss_kib()?;
    // Measure while the hog holds its memory: once it exits, reporting
    // starts giving that memory back.
    let got = start_hog(&mut vm, HOG_MIB, 3600, "/tmp/hog.log")?;
    ensure!(got == HOG_MIB, "memhog got {got} of {HOG_MIB} MiB");
    let held = vm.qemu_rss_kib()?;
    eprintln!("QEMU RSS {before} KiB before the hog, {held} KiB while it holds {HOG_MIB} MiB");
    // Every page the hog wrote is backed by the host.
    ensure!(
        held >= HOG_MIB * 1024,
        "guest memory not touched: RSS {held} KiB while the hog holds {HOG_MIB} MiB"
    );
    vm.sh_ok("killall memhog; while pidof memhog > /dev/null; do sleep 0.1; done")?;
    // The hog's memory is free in the guest now: reporting must give at
    // least half of what the hog added to the host's RSS back.
    let added = held.saturating_sub(before);
    let want = added / 2;
    let timeout = scaled(Duration::from_secs(120));
    let start = Instant::now();
    let mut rss = held;
    while held.saturating_sub(rss) < want {
        ensure!(
            start.elapsed() < timeout,
            "QEMU RSS only fell from {held} to {rss} KiB in {timeout:?}; the hog added {added} KiB"
        );
        std::thread::sleep(Duration::from_secs(1));
        rss = vm.qemu_rss_kib()?;
    }
    eprintln!(
        "RSS fell {held} -> {rss} KiB in {:?} (the hog added {added} KiB)",
        start.elapsed()
    );
    ensure!(
        debugfs(&mut vm, "free_page_reports")? > 0,
        "no reports counted"
    );
    unload_and_power_off(vm, None)
}

#[test]
fn page_poison_follows_the_guest_and_gates_reporting() -> Result<()> {
    // Without poisoning or init_on_free the bit is withdrawn; reporting stays.
    let mut vm = boot_loaded(VmConfig::new("no_poison").balloon_options("free-page-reporting=on"))?;
    let bits = negotiated_features(&mut vm)?;
    ensure!(
        bits & 1 << 4 == 0 && bits & 1 << 5 != 0,
        "features {bits:#x}"
    );
    vm.rmmod("virtio_balloon_rs")?;
    vm.check_clean()?;
    vm.shutdown()?;
    // Zeroing freed pages: the host is told (poison value 0) and reporting stays.
    let mut vm = boot_loaded(
        VmConfig::new("init_on_free")
            .cmdline("init_on_free=1")
            .balloon_options("free-page-reporting=on"),
    )?;
    let bits = negotiated_features(&mut vm)?;
    ensure!(
        bits & 1 << 4 != 0 && bits & 1 << 5 != 0,
        "features {bits:#x}"
    );
    balloon_to_mib(&mut vm, 1536)?;
    vm.rmmod("virtio_balloon_rs")?;
    vm.check_clean()?;
    vm.shutdown()?;
    // A device that cannot be told the poison value gets no free page reports.
    let mut vm = boot_loaded(
        VmConfig::new("poison_off")
            .cmdline("init_on_free=1")
            .balloon_options("free-page-reporting=on,page-poison=off"),
    )?;
    let bits = negotiated_features(&mut vm)?;
    ensure!(
        bits & 1 << 4 == 0 && bits & 1 << 5 == 0,
        "features {bits:#x}"
    );
    unload_and_power_off(vm, None)
}

#[test]
fn adjustments_hold_the_devices_wakeup_source() -> Result<()> {
    let mut vm = boot_loaded(VmConfig::new("wakeup"))?;
    let dev = bound_device(&mut vm)?;
    let power = format!("/sys/bus/virtio/devices/{dev}/power");
    // Like the C driver, the device is wakeup capable; user space enables it.
    let wakeup = vm.sh_ok(&format!("cat {power}/wakeup"))?;
    ensure!(
        wakeup.trim() == "disabled",
        "{power}/wakeup: {wakeup:?} (not wakeup capable?)"
    );
    vm.sh_ok(&format!("echo enabled > {power}/wakeup"))?;
    let active_count = |vm: &mut Vm| -> Result<u64> {
        let text = vm.sh_ok(&format!("cat {power}/wakeup_active_count"))?;
        text.trim()
            .parse()
            .map_err(|_| anyhow!("wakeup_active_count: {text:?}"))
    };
    let before = active_count(&mut vm)?;
    balloon_to_mib(&mut vm, 1536)?;
    balloon_to_mib(&mut vm, GUEST_MIB)?;
    let after = active_count(&mut vm)?;
    ensure!(
        after > before,
        "the wakeup source was never activated ({before} -> {after})"
    );
    // Held only while adjusting: released once the work sees the target
    // reached (just after `actual` got there).
    let active = vm.sh_ok(&format!(
        "for i in $(seq 50); do [ $(cat {power}/wakeup_active) = 0 ] && break; sleep 0.1; done; cat {power}/wakeup_active"
    ))?;
    ensure!(
        active.trim() == "0",
        "wakeup source still active 5 s after the adjustment: {active:?}"
    );
    unload_and_power_off(vm, None)
}

#[test]
fn suspend_and_resume_keep_the_target() -> Result<()> {
    let mut vm = boot_loaded(VmConfig::new("suspend"))?;
    let memtotal = vm.meminfo("MemTotal")?;
    balloon_to_mib(&mut vm, 1024)?;
    // pm_test "devices": freeze tasks, run every device's freeze callback,
    // wait, run the restore callbacks, as a real s2idle cycle does.
    vm.sh_ok("echo devices > /sys/power/pm_test")?;
    vm.run(
        "echo freeze > /sys/power/state",
        scaled(Duration::from_secs(120)),
    )?;
    vm.qmp().wait_actual(1024 * MIB, balloon_timeout())?;
    expect_memtotal(&mut vm, memtotal - 1024 * 1024)?;
    let dmesg = vm.dmesg()?;
    ensure!(
        dmesg.matches("bound: features").count() == 2,
        "expected a restore after the freeze:\n{dmesg}"
    );
    ensure!(
        dmesg.contains("balloon empty"),
        "freeze did not empty the balloon"
    );
    unload_and_power_off(vm, Some(memtotal))
}

#[test]
fn free_page_hints_during_migration() -> Result<()> {
    let mut vm = boot_loaded(hint_vm_config("free_page_hint", Driver::Rs))?;
    ensure!(
        negotiated_features(&mut vm)? & 1 << 3 != 0,
        "FREE_PAGE_HINT not negotiated"
    );
    // Dirty most of the guest's memory and free it again, and cap the
    // bandwidth, so the migration takes seconds (zero pages cost a
    // migration almost nothing).
    let (rc, out) = hog(&mut vm, 1500)?;
    ensure!(rc == 0, "memhog: {out}");
    let free_before = vm.meminfo("MemFree")?;
    let migration = migrate_to_nowhere(&mut vm, HINT_BANDWIDTH)?;
    eprintln!(
        "migration completed in {:?}, {} MiB sent",
        migration.duration,
        migration.transferred_mib()
    );
    vm.sh_ok("echo alive")?;
    // QEMU opens a hinting window after each dirty-bitmap sync and closes
    // it at the next one; how many blocks fit in depends on timing, but
    // every round must be answered and finished.
    let rounds = debugfs(&mut vm, "hint_rounds")?;
    let hinted = debugfs(&mut vm, "hinted_blocks")?;
    eprintln!("{rounds} hint rounds, {hinted} blocks of 4 MiB hinted");
    ensure!(rounds >= 1, "the driver never started a hint round");
    // The host says done at the end of the migration: the blocks come back.
    let start = Instant::now();
    while debugfs(&mut vm, "hint_blocks_held")? > 0 {
        ensure!(
            start.elapsed() < scaled(Duration::from_secs(30)),
            "hinted blocks never came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let free_after = vm.meminfo("MemFree")?;
    ensure!(
        free_after + 64 * 1024 > free_before,
        "MemFree {free_before} kB before, {free_after} kB after the hints"
    );
    // The balloon itself still works.
    balloon_to_mib(&mut vm, 1536)?;
    unload_and_power_off(vm, None)
}
