// SPDX-License-Identifier: GPL-2.0

//! Inflate and deflate speed: rounds of 2048 -> 1024 -> 2048 MiB in a fresh
//! 2 GiB guest per driver, each step timed from the QMP `balloon` request
//! until `query-balloon` (polled every 20 ms) reports the target; the guest's
//! `MemTotal` is read after each step. Round 1's samples are kept for the
//! plot.

use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use qemu_test::qmp::POLL_INTERVAL;
use qemu_test::Driver;
use qemu_test::GuestShell;
use qemu_test::Result;
use qemu_test::Vm;
use qemu_test::VmConfig;
use qemu_test::MIB;

use crate::median;
use crate::GUEST_MIB;
use crate::SMALL_MIB;
use crate::STEP_TIMEOUT;

/// One inflate + deflate round.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    pub inflate: Duration,
    pub memtotal_small_kb: u64,
    pub deflate: Duration,
    pub memtotal_full_kb: u64,
}

/// The balloon over time in one round: `query-balloon` samples, as
/// (seconds since the inflate request, balloon MiB), and when the deflate
/// was asked for.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    pub samples: Vec<(f64, f64)>,
    pub deflate_at: f64,
    pub end: f64,
}

/// The results of one driver.
#[derive(Debug)]
pub struct DriverResult {
    pub driver: Driver,
    pub boot: Duration,
    pub memtotal_kb: u64,
    pub rounds: Vec<Round>,
    pub trace: Trace,
}

impl DriverResult {
    pub fn inflate_median(&self) -> f64 {
        median(
            self.rounds
                .iter()
                .map(|r| r.inflate.as_secs_f64())
                .collect(),
        )
    }

    pub fn deflate_median(&self) -> f64 {
        median(
            self.rounds
                .iter()
                .map(|r| r.deflate.as_secs_f64())
                .collect(),
        )
    }
}

/// Asks for a guest of `target` bytes and polls `query-balloon` until it
/// is there; returns the time since `origin`'s request and adds each sample
/// to `trace` (seconds since `origin`).
fn balloon_traced(
    vm: &mut Vm,
    target: u64,
    origin: Instant,
    trace: &mut Trace,
) -> Result<Duration> {
    let start = Instant::now();
    vm.qmp().balloon(target)?;
    let ram = GUEST_MIB * MIB;
    loop {
        let actual = vm.qmp().query_balloon()?;
        let at = origin.elapsed().as_secs_f64();
        trace
            .samples
            .push((at, ram.saturating_sub(actual) as f64 / MIB as f64));
        if actual == target {
            trace.end = at;
            return Ok(start.elapsed());
        }
        if start.elapsed() >= STEP_TIMEOUT {
            bail!(
                "balloon actual did not reach {} MiB in {STEP_TIMEOUT:?}: last actual {} MiB",
                target / MIB,
                actual / MIB
            );
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Boots a guest with `driver` (loaded with `params`) and times `rounds`
/// inflate/deflate rounds.
pub fn run_driver(driver: Driver, rounds: usize, params: &str) -> Result<DriverResult> {
    let config = VmConfig::new(&format!("bench-{}", driver.label()))
        .memory_mib(GUEST_MIB)
        .only(driver);
    let mut vm = Vm::boot(config)?;
    vm.insmod(driver.guest_path(), params)?;
    let memtotal_kb = vm.meminfo("MemTotal")?;
    println!(
        "\ndriver {}: booted in {:.1} s, MemTotal {memtotal_kb} kB after insmod",
        driver.label(),
        vm.boot_time().as_secs_f64()
    );
    println!(
        "{:>5}  {:>10}  {:>14}  {:>10}  {:>14}",
        "round", "inflate s", "MemTotal kB", "deflate s", "MemTotal kB"
    );
    let mut result = DriverResult {
        driver,
        boot: vm.boot_time(),
        memtotal_kb,
        rounds: Vec::new(),
        trace: Trace::default(),
    };
    for round in 1..=rounds {
        let origin = Instant::now();
        let mut trace = Trace::default();
        let inflate = balloon_traced(&mut vm, SMALL_MIB * MIB, origin, &mut trace)?;
        let memtotal_small_kb = vm.meminfo("MemTotal")?;
        trace.deflate_at = origin.elapsed().as_secs_f64();
        let deflate = balloon_traced(&mut vm, GUEST_MIB * MIB, origin, &mut trace)?;
        let memtotal_full_kb = vm.meminfo("MemTotal")?;
        println!(
            "{round:>5}  {:>10.3}  {memtotal_small_kb:>14}  {:>10.3}  {memtotal_full_kb:>14}",
            inflate.as_secs_f64(),
            deflate.as_secs_f64()
        );
        if round == 1 {
            result.trace = trace;
        }
        result.rounds.push(Round {
            inflate,
            memtotal_small_kb,
            deflate,
            memtotal_full_kb,
        });
    }
    println!(
        "{:>5}  {:>10.3}  {:>14}  {:>10.3}",
        "med",
        result.inflate_median(),
        "",
        result.deflate_median()
    );
    vm.check_clean()?;
    vm.shutdown()?;
    Ok(result)
}

pub fn print_summary(results: &[DriverResult]) {
    let expected_small =
        |r: &DriverResult| r.memtotal_kb.saturating_sub((GUEST_MIB - SMALL_MIB) * 1024);
    println!(
        "\nspeed summary ({GUEST_MIB} -> {SMALL_MIB} -> {GUEST_MIB} MiB, query-balloon polled every 20 ms)"
    );
    println!(
        "{:>6}  {:>7}  {:>16}  {:>16}  {:>9}  MemTotal full -> inflated",
        "driver", "boot s", "inflate median s", "deflate median s", "rounds"
    );
    for r in results {
        let exact = r.rounds.iter().all(|round| {
            round.memtotal_small_kb == expected_small(r) && round.memtotal_full_kb == r.memtotal_kb
        });
        println!(
            "{:>6}  {:>7.1}  {:>16.3}  {:>16.3}  {:>9}  {} -> {} kB ({})",
            r.driver.label(),
            r.boot.as_secs_f64(),
            r.inflate_median(),
            r.deflate_median(),
            r.rounds.len(),
            r.memtotal_kb,
            expected_small(r),
            if exact {
                "exact every round"
            } else {
                "NOT exact, see rounds"
            }
        );
    }
    let find = |driver| results.iter().find(|r| r.driver == driver);
    if let (Some(c), Some(rs)) = (find(Driver::C), find(Driver::Rs)) {
        println!(
            "{:>6}  {:>7}  {:>16.2}  {:>16.2}",
            "rs/c",
            "",
            rs.inflate_median() / c.inflate_median(),
            rs.deflate_median() / c.deflate_median()
        );
    }
}

/// The `buffers_in_flight` sweep: our driver at each value against the C
/// driver of the same run.
pub fn print_in_flight(c: Option<&DriverResult>, sweep: &[(usize, DriverResult)]) {
    println!(
        "
buffers in flight ({GUEST_MIB} -> {SMALL_MIB} -> {GUEST_MIB} MiB, medians)"
    );
    println!(
        "{:>9}  {:>9}  {:>9}  {:>11}  {:>11}",
        "in flight", "inflate s", "deflate s", "c/rs infl.", "c/rs defl."
    );
    for (in_flight, r) in sweep {
        let (inflate, deflate) = (r.inflate_median(), r.deflate_median());
        let ratio = |c: f64, rs: f64| format!("{:.2}x", c / rs);
        println!(
            "{:>9}  {:>9.3}  {:>9.3}  {:>11}  {:>11}",
            in_flight,
            inflate,
            deflate,
            c.map_or("-".into(), |c| ratio(c.inflate_median(), inflate)),
            c.map_or("-".into(), |c| ratio(c.deflate_median(), deflate)),
        );
    }
}
