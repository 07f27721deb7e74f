// SPDX-License-Identifier: GPL-2.0

//! Host memory returned per GiB ballooned, for each guest RAM backing, on a
//! fresh guest and on one whose free memory was first scattered.
//!
//! Guest RAM is preallocated (every guest page backed on the host before the
//! balloon runs, as in a guest that has used its memory): a balloon can
//! only give back what the host gave. Each scenario boots its own 2 GiB
//! guest, inflates to 1 GiB, deflates back, and reads on the host, before
//! the inflate, after it and after the deflate: the QEMU process's guest
//! RAM mapping walked page by page ([`RamResidency`]: what it holds, huge
//! pages counted whole), its `smaps_rollup`, and the host's `MemAvailable`
//! and `HugePages_Free` (both host-wide: other work on the host moves them).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::ensure;
use anyhow::Context;
use qemu_test::hostmem;
use qemu_test::hostmem::HugetlbPool;
use qemu_test::hostmem::RamResidency;
use qemu_test::initramfs;
use qemu_test::scatter;
use qemu_test::scatter::FreeMemory;
use qemu_test::Driver;
use qemu_test::GuestShell;
use qemu_test::Result;
use qemu_test::Vm;
use qemu_test::VmConfig;
use qemu_test::MIB;

use crate::GUEST_MIB;
use crate::SMALL_MIB;
use crate::STEP_TIMEOUT;

/// How the guest's RAM is backed on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// QEMU's default `-m` RAM: anonymous memory QEMU marks
    /// `MADV_HUGEPAGE` (transparent huge pages where the host allows them).
    AnonThp,
    /// `memory-backend-file` on a 2 MiB hugetlbfs.
    Hugetlbfs,
    /// `memory-backend-memfd` (shmem).
    Memfd,
    /// `memory-backend-memfd,hugetlb=on` (2 MiB hugetlb pages).
    MemfdHugetlb,
}

impl Backing {
    pub const ALL: [Backing; 4] = [
        Backing::AnonThp,
        Backing::Hugetlbfs,
        Backing::Memfd,
        Backing::MemfdHugetlb,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Backing::AnonThp => "anon THP",
            Backing::Hugetlbfs => "hugetlbfs 2M",
            Backing::Memfd => "memfd",
            Backing::MemfdHugetlb => "memfd hugetlb",
        }
    }

    /// The QEMU arguments for this backing (all preallocated).
    fn qemu_args(self, pool: Option<&HugetlbPool>) -> Result<Vec<String>> {
        let backend = match self {
            Backing::AnonThp => return Ok(vec!["-mem-prealloc".to_string()]),
            Backing::Hugetlbfs => {
                let dir = pool
                    .and_then(HugetlbPool::dir)
                    .context("hugetlbfs backing without a hugetlbfs mount")?;
                format!(
                    "memory-backend-file,id=ram0,size={GUEST_MIB}M,mem-path={},share=on,prealloc=on",
                    dir.display()
                )
            }
            Backing::Memfd => {
                format!("memory-backend-memfd,id=ram0,size={GUEST_MIB}M,share=on,prealloc=on")
            }
            Backing::MemfdHugetlb => format!(
                "memory-backend-memfd,id=ram0,size={GUEST_MIB}M,share=on,prealloc=on,hugetlb=on,hugetlbsize=2M"
            ),
        };
        Ok(vec![
            "-object".to_string(),
            backend,
            "-machine".to_string(),
            "memory-backend=ram0".to_string(),
        ])
    }
}

/// The guest's free memory before the balloon runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestState {
    /// Just booted: free memory in large blocks.
    Fresh,
    /// Most free memory taken page by page and given back but one page in
    /// [`scatter::KEEP_EVERY`], with proactive compaction off: no free 2 MiB block where it was.
    Scattered,
}

impl GuestState {
    pub fn label(self) -> &'static str {
        match self {
            GuestState::Fresh => "fresh",
            GuestState::Scattered => "scattered",
        }
    }
}

/// What the host shows at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostSnapshot {
    pub ram: RamResidency,
    pub rss_kib: u64,
    pub anon_huge_kib: u64,
    pub hugetlb_kib: u64,
    pub host_available_kib: u64,
    pub host_huge_free: u64,
    /// `query-balloon`: guest RAM minus the balloon, in MiB.
    pub actual_mib: u64,
}

fn snapshot(vm: &mut Vm, ram: (u64, u64)) -> Result<HostSnapshot> {
    let pid = vm.qemu_pid();
    let rollup = hostmem::smaps_rollup(pid)?;
    let source = format!("/proc/{pid}/smaps_rollup");
    let meminfo = hostmem::host_meminfo()?;
    Ok(HostSnapshot {
        ram: hostmem::ram_residency(pid, ram.0, ram.1)?,
        rss_kib: hostmem::field(&rollup, "Rss", &source)?,
        anon_huge_kib: hostmem::field(&rollup, "AnonHugePages", &source)?,
        hugetlb_kib: hostmem::field(&rollup, "Shared_Hugetlb", &source)?
            + hostmem::field(&rollup, "Private_Hugetlb", &source)?,
        host_available_kib: hostmem::field(&meminfo, "MemAvailable", "/proc/meminfo")?,
        host_huge_free: hostmem::field(&meminfo, "HugePages_Free", "/proc/meminfo")?,
        actual_mib: vm.qmp().query_balloon()? / MIB,
    })
}

/// One scenario: a backing, a guest state, a driver.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub backing: Backing,
    pub state: GuestState,
    pub driver: Driver,
    pub before: HostSnapshot,
    pub inflated: HostSnapshot,
    pub deflated: HostSnapshot,
    /// For a scattered guest: free memory, and free memory in blocks of
    /// 2 MiB or more, in MiB, before the inflate (from `/proc/buddyinfo`).
    pub guest_free: Option<FreeMemory>,
}

/// A difference in KiB as MiB (positive: the second is smaller).
fn drop_mib(before: u64, after: u64) -> f64 {
    (before as f64 - after as f64) / 1024.0
}

impl Scenario {
    pub fn ballooned_mib(&self) -> u64 {
        self.before
            .actual_mib
            .saturating_sub(self.inflated.actual_mib)
    }

    /// Host memory the guest RAM mapping stopped holding, in MiB.
    pub fn returned_mib(&self) -> f64 {
        drop_mib(self.before.ram.held_kib(), self.inflated.ram.held_kib())
    }

    pub fn per_gib(&self) -> f64 {
        let ballooned = self.ballooned_mib();
        if ballooned == 0 {
            f64::NAN
        } else {
            self.returned_mib() * 1024.0 / ballooned as f64
        }
    }

    /// Huge pages newly left partly mapped (split, still held whole).
    pub fn split_huge(&self) -> i64 {
        self.inflated.ram.partial_huge_pages as i64 - self.before.ram.partial_huge_pages as i64
    }
}

fn run_scenario(backing: Backing, state: GuestState, driver: Driver) -> Result<Scenario> {
    // Host huge pages for this guest alone, given back when it is gone.
    let pool = match backing {
        Backing::Hugetlbfs => Some(HugetlbPool::reserve(GUEST_MIB / 2, true)?),
        Backing::MemfdHugetlb => Some(HugetlbPool::reserve(GUEST_MIB / 2, false)?),
        Backing::AnonThp | Backing::Memfd => None,
    };
    let name = format!(
        "bench-mem-{}-{}-{}",
        backing.label().replace(' ', "-"),
        state.label(),
        driver.label()
    );
    let config = VmConfig::new(&name)
        .memory_mib(GUEST_MIB)
        .only(driver)
        .qemu_args(backing.qemu_args(pool.as_ref())?)
        .file("/bin/scatter", initramfs::scatter()?);
    let mut vm = Vm::boot(config)?;
    let ram = hostmem::find_ram_mapping(vm.qemu_pid(), GUEST_MIB * MIB)?;
    vm.load(driver)?;
    let guest_free = match state {
        GuestState::Fresh => None,
        GuestState::Scattered => Some(scatter::scatter_free_memory(&mut vm)?),
    };
    let before = snapshot(&mut vm, ram)?;
    ensure!(
        before.actual_mib == GUEST_MIB,
        "the balloon is not empty before the inflate: actual {} MiB",
        before.actual_mib
    );
    vm.qmp().balloon_and_wait(SMALL_MIB * MIB, STEP_TIMEOUT)?;
    // QEMU discards before it acknowledges a buffer; give the host's own
    // bookkeeping (huge page freeing) a moment anyway.
    std::thread::sleep(Duration::from_millis(500));
    let inflated = snapshot(&mut vm, ram)?;
    vm.qmp().balloon_and_wait(GUEST_MIB * MIB, STEP_TIMEOUT)?;
    let deflated = snapshot(&mut vm, ram)?;
    vm.check_clean()?;
    vm.shutdown()?;
    drop(pool);
    Ok(Scenario {
        backing,
        state,
        driver,
        before,
        inflated,
        deflated,
        guest_free,
    })
}

/// One line of the detailed table.
pub fn row(s: &Scenario) -> String {
    let mut line = format!(
        "{:<13} {:<9} {:>3} {:>9} {:>8.0} {:>8.0} {:>7.0} {:>8.0} {:>8.0} {:>6} {:>9.0} {:>9.0} {:>9.0}",
        s.backing.label(),
        s.state.label(),
        s.driver.label(),
        s.ballooned_mib(),
        s.before.ram.held_kib() as f64 / 1024.0,
        s.returned_mib(),
        s.per_gib(),
        drop_mib(
            s.before.rss_kib + s.before.hugetlb_kib,
            s.inflated.rss_kib + s.inflated.hugetlb_kib,
        ),
        drop_mib(s.before.anon_huge_kib, s.inflated.anon_huge_kib),
        s.split_huge(),
        -drop_mib(
            s.before.host_huge_free * 2048,
            s.inflated.host_huge_free * 2048,
        ),
        -drop_mib(s.before.host_available_kib, s.inflated.host_available_kib),
        drop_mib(s.before.ram.held_kib(), s.deflated.ram.held_kib()),
    );
    if let Some(free) = s.guest_free {
        let _ = write!(
            line,
            "  (guest free {} MiB, {} MiB of it in 2 MiB blocks)",
            free.free_mib, free.block_mib
        );
    }
    line
}

pub const HEADER: &str = "backing       guest     drv ballooned  held MiB returned per GiB  Rss+HT AnonHuge  split HugeFree+ MemAvail+ after def
                              MiB    before      MiB    MiB drop MiB     drop   huge       MiB       MiB  returned";

pub fn run_all(
    backings: &[Backing],
    drivers: &[Driver],
    failures: &mut Vec<String>,
) -> Vec<Scenario> {
    let mut results = Vec::new();
    println!(
        "\nhost memory: guest {GUEST_MIB} MiB (preallocated on the host), inflate to {SMALL_MIB} MiB, deflate back"
    );
    println!("{HEADER}");
    for &backing in backings {
        for state in [GuestState::Fresh, GuestState::Scattered] {
            for &driver in drivers {
                match run_scenario(backing, state, driver) {
                    Ok(scenario) => {
                        println!("{}", row(&scenario));
                        results.push(scenario);
                    }
                    Err(e) => {
                        let message = format!(
                            "{} {} {}: {e:#}",
                            backing.label(),
                            state.label(),
                            driver.label()
                        );
                        eprintln!("bench: FAILED {message}");
                        failures.push(message);
                    }
                }
            }
        }
    }
    results
}

/// The summary: MiB returned per 1024 MiB ballooned, C and ours side by side.
pub fn print_summary(results: &[Scenario]) {
    println!("\nhost memory returned per 1024 MiB ballooned (guest RAM mapping, huge pages counted whole)");
    println!(
        "{:<13} {:<9} {:>8} {:>8} {:>10} {:>10}",
        "backing", "guest", "c", "rs", "c split", "rs split"
    );
    for backing in Backing::ALL {
        for state in [GuestState::Fresh, GuestState::Scattered] {
            let find = |driver| {
                results
                    .iter()
                    .find(|s| s.backing == backing && s.state == state && s.driver == driver)
            };
            let (c, rs) = (find(Driver::C), find(Driver::Rs));
            if c.is_none() && rs.is_none() {
                continue;
            }
            let per_gib =
                |s: Option<&Scenario>| s.map_or("-".to_string(), |s| format!("{:.0}", s.per_gib()));
            let split =
                |s: Option<&Scenario>| s.map_or("-".to_string(), |s| s.split_huge().to_string());
            println!(
                "{:<13} {:<9} {:>8} {:>8} {:>10} {:>10}",
                backing.label(),
                state.label(),
                per_gib(c),
                per_gib(rs),
                split(c),
                split(rs)
            );
        }
    }
}
