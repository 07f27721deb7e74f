// SPDX-License-Identifier: GPL-2.0

//! The module under a real libvirt, driven the way operators drive a
//! balloon: `virsh setmem --live`, `virsh dommemstat`, `virsh
//! qemu-monitor-command --hmp 'info balloon'`, with the domain's
//! `<memballoon autodeflate='on' freePageReporting='on'>` and a stats period.
//!
//! `#[ignore]`d in `make test`: they need `libvirtd`, which `make
//! test-libvirt` starts (and stops) before running them with `--ignored`.
//! Without a reachable `libvirtd` they fail.

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use anyhow::anyhow;
use anyhow::ensure;
use qemu_test::libvirt::Domain;
use qemu_test::libvirt::DomainConfig;
use qemu_test::GuestShell;
use qemu_test::Result;

/// Time one balloon change may take under TCG.
const BALLOON_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts a domain and loads our module in it.
fn start(name: &str) -> Result<(Domain, u64)> {
    start_with(DomainConfig::new(name))
}

/// [`start`] with a given configuration.
fn start_with(config: DomainConfig) -> Result<(Domain, u64)> {
    let mut domain = Domain::start(config)?;
    domain.sh_ok(&format!("insmod {}", qemu_test::initramfs::RS_MODULE_PATH))?;
    let memtotal = domain.meminfo("MemTotal")?;
    Ok((domain, memtotal))
}

/// Unloads the module (every page comes back) and powers off.
fn finish(mut domain: Domain, memtotal: u64) -> Result<()> {
    domain.sh_ok("rmmod virtio_balloon_rs")?;
    let now = domain.meminfo("MemTotal")?;
    ensure!(
        now == memtotal,
        "MemTotal {now} kB after rmmod, {memtotal} kB at boot"
    );
    qemu_test::check_clean_console(&domain.console_log()).map_err(anyhow::Error::msg)?;
    domain.shutdown()
}

/// Whether a host figure and the guest's agree: within 10 % or 150 MiB,
/// the tolerance the QMP stats test uses (the guest moves meanwhile).
fn agree(host_kib: u64, guest_kib: u64) -> bool {
    let diff = host_kib.abs_diff(guest_kib);
    diff <= 150 * 1024 || diff * 10 <= host_kib.max(guest_kib)
}

#[test]
#[ignore = "needs libvirtd: make test-libvirt"]
fn setmem_live_sets_memtotal_exactly_and_info_balloon_agrees() -> Result<()> {
    // With autodeflate the ballooned pages stay in MemTotal (they may come
    // back at any time, as with the C driver): off here, so MemTotal moves.
    let (mut domain, memtotal) = start_with(DomainConfig::new("setmem").autodeflate(false))?;
    for mib in [1024u64, 1536, 768] {
        let took = domain.setmem_and_wait(mib * 1024, BALLOON_TIMEOUT)?;
        eprintln!("setmem {mib} MiB: {took:?}");
        let now = domain.meminfo("MemTotal")?;
        let expected = memtotal - (2048 - mib) * 1024;
        ensure!(
            now == expected,
            "setmem {mib} MiB: MemTotal {now} kB, expected {expected} kB"
        );
        let ballooned = domain.meminfo("Balloon")?;
        ensure!(
            ballooned == (2048 - mib) * 1024,
            "setmem {mib} MiB: Balloon: {ballooned} kB"
        );
        let info = domain.hmp("info balloon")?;
        ensure!(
            info.trim() == format!("balloon: actual={mib}"),
            "info balloon after setmem {mib} MiB: {info:?}"
        );
    }
    domain.setmem_and_wait(2048 * 1024, BALLOON_TIMEOUT)?;
    let now = domain.meminfo("MemTotal")?;
    ensure!(
        now == memtotal,
        "MemTotal {now} kB back at 2 GiB, {memtotal} kB at boot"
    );
    finish(domain, memtotal)
}

#[test]
#[ignore = "needs libvirtd: make test-libvirt"]
fn dommemstat_fills_every_field_and_matches_the_guest() -> Result<()> {
    let (mut domain, memtotal) = start("dommemstat")?;
    domain.setmem_and_wait(1536 * 1024, BALLOON_TIMEOUT)?;
    // Two stats periods, so the first report with the new size is in.
    let start = Instant::now();
    let first = loop {
        let stats: BTreeMap<String, u64> = domain.dommemstat()?.into_iter().collect();
        if stats.get("last_update").is_some_and(|&t| t > 0) {
            break stats;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(30),
            "no guest stats after 30 s: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    std::thread::sleep(Duration::from_secs(5));
    let stats: BTreeMap<String, u64> = domain.dommemstat()?.into_iter().collect();
    eprintln!("dommemstat: {stats:?}");
    ensure!(
        stats["last_update"] > first["last_update"],
        "last_update did not move: {first:?} then {stats:?}"
    );
    // Every field libvirt knows and this guest can report.
    let fields = [
        "actual",
        "swap_in",
        "swap_out",
        "major_fault",
        "minor_fault",
        "unused",
        "available",
        "usable",
        "last_update",
        "disk_caches",
        "hugetlb_pgalloc",
        "hugetlb_pgfail",
        "rss",
    ];
    for field in fields {
        ensure!(
            stats.contains_key(field),
            "virsh dommemstat has no {field}: {stats:?}"
        );
    }
    ensure!(
        stats["actual"] == 1536 * 1024,
        "actual {} KiB",
        stats["actual"]
    );
    let meminfo = domain.sh_ok("cat /proc/meminfo")?;
    let vmstat = domain.sh_ok("cat /proc/vmstat")?;
    let guest = |field: &str| -> Result<u64> {
        qemu_test::shell_command::parse_meminfo(&meminfo, field)
            .ok_or_else(|| anyhow!("/proc/meminfo has no {field}"))
    };
    let counter = |name: &str| -> Result<u64> {
        vmstat
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(' ')?;
                (key == name).then(|| value.trim().parse().ok())?
            })
            .ok_or_else(|| anyhow!("/proc/vmstat has no {name}"))
    };
    for (field, guest_kib) in [
        ("available", guest("MemTotal")?),
        ("unused", guest("MemFree")?),
        ("usable", guest("MemAvailable")?),
        ("disk_caches", guest("Cached")?),
    ] {
        ensure!(
            agree(stats[field], guest_kib),
            "dommemstat {field} {} KiB, the guest says {guest_kib} kB",
            stats[field]
        );
    }
    // Event counters: what the guest counted up to now, at least what the
    // host saw (the host's copy is up to one stats period old).
    for (field, name) in [
        ("swap_in", "pswpin"),
        ("swap_out", "pswpout"),
        ("major_fault", "pgmajfault"),
        ("minor_fault", "pgfault"),
        ("hugetlb_pgalloc", "htlb_buddy_alloc_success"),
        ("hugetlb_pgfail", "htlb_buddy_alloc_fail"),
    ] {
        let guest_count = counter(name)?;
        ensure!(
            stats[field] <= guest_count,
            "dommemstat {field} {} above the guest's {name} {guest_count}",
            stats[field]
        );
    }
    ensure!(stats["minor_fault"] > 0, "minor_fault is 0");
    ensure!(stats["rss"] > 0, "rss is 0");
    domain.setmem_and_wait(2048 * 1024, BALLOON_TIMEOUT)?;
    finish(domain, memtotal)
}

#[test]
#[ignore = "needs libvirtd: make test-libvirt"]
fn setmem_far_below_what_the_guest_can_give_leaves_it_alive() -> Result<()> {
    let (mut domain, memtotal) = start("setmem_low")?;
    domain.virsh("setmem", &["16384", "--live"])?;
    // Wait until actual stops moving.
    let mut last = domain.actual_kib()?;
    let mut still_since = Instant::now();
    let start = Instant::now();
    while still_since.elapsed() < Duration::from_secs(5) {
        ensure!(
            start.elapsed() < BALLOON_TIMEOUT,
            "actual still moving after {BALLOON_TIMEOUT:?} (last {last} KiB)"
        );
        std::thread::sleep(Duration::from_millis(250));
        let actual = domain.actual_kib()?;
        if actual != last {
            last = actual;
            still_since = Instant::now();
        }
    }
    eprintln!("setmem 16 MiB: actual settled at {last} KiB");
    ensure!(
        last > 16384 && last < 2048 * 1024,
        "actual {last} KiB: expected the guest to give memory but keep a floor"
    );
    // The guest answers and can still run a program.
    domain.sh_ok("echo alive")?;
    domain.sh_ok("memhog 4 0")?;
    let info = domain.hmp("info balloon")?;
    ensure!(info.contains("actual="), "info balloon: {info:?}");
    domain.setmem_and_wait(2048 * 1024, BALLOON_TIMEOUT)?;
    finish(domain, memtotal)
}

#[test]
#[ignore = "needs libvirtd: make test-libvirt"]
fn autodeflate_gives_memory_back_under_guest_pressure() -> Result<()> {
    let (mut domain, memtotal) = start("autodeflate")?;
    domain.setmem_and_wait(1024 * 1024, BALLOON_TIMEOUT)?;
    // With autodeflate the ballooned pages may come back: MemTotal keeps them.
    let now = domain.meminfo("MemTotal")?;
    ensure!(
        now == memtotal,
        "MemTotal {now} kB with autodeflate, {memtotal} kB at boot"
    );
    let ballooned = domain.meminfo("Balloon")?;
    ensure!(
        ballooned == 1024 * 1024,
        "Balloon: {ballooned} kB after setmem 1 GiB"
    );
    let want = domain.meminfo("MemAvailable")? / 1024 + 300;
    let (code, output) = domain.run(&format!("memhog {want} 0"), Duration::from_secs(300))?;
    eprintln!("memhog {want}: {code}, {}", output.trim());
    ensure!(
        code == 0 && output.contains(&format!("got {want} MiB")),
        "memhog {want} MiB did not complete: {code}: {output}"
    );
    let vmstat = domain.sh_ok("cat /proc/vmstat")?;
    ensure!(
        vmstat.lines().any(|line| line == "oom_kill 0"),
        "an OOM kill while the balloon had pages"
    );
    let actual = domain.actual_kib()?;
    ensure!(
        actual >= (1024 + 250) * 1024,
        "the balloon did not give memory back: actual {actual} KiB"
    );
    domain.setmem_and_wait(2048 * 1024, BALLOON_TIMEOUT)?;
    finish(domain, memtotal)
}
