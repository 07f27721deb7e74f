// SPDX-License-Identifier: GPL-2.0

//! Balloon speed bench: the C driver against ours, in fresh 2 GiB guests.
//!
//! `cargo run -p qemu-test --release --bin bench -- [--rounds N] [--driver c|rs|both]`
//!
//! Each round asks for 1 GiB (inflate) and then 2 GiB (deflate), timing from
//! the QMP `balloon` request until `query-balloon` (polled every 20 ms)
//! reports the target, and reads the guest's `MemTotal` after each step.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use anyhow::bail;
use qemu_test::Driver;
use qemu_test::Result;
use qemu_test::Vm;
use qemu_test::VmConfig;
use qemu_test::MIB;

/// Guest RAM in MiB.
const GUEST_MIB: u64 = 2048;

/// Guest size while inflated, in MiB.
const SMALL_MIB: u64 = 1024;

/// Time one inflate or deflate may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// One inflate + deflate round.
#[derive(Debug, Clone, Copy)]
struct Round {
    inflate: Duration,
    memtotal_small_kb: u64,
    deflate: Duration,
    memtotal_full_kb: u64,
}

/// The results of one driver.
#[derive(Debug)]
struct DriverResult {
    driver: Driver,
    boot: Duration,
    memtotal_kb: u64,
    rounds: Vec<Round>,
}

impl DriverResult {
    fn inflate_median(&self) -> f64 {
        median(
            self.rounds
                .iter()
                .map(|r| r.inflate.as_secs_f64())
                .collect(),
        )
    }

    fn deflate_median(&self) -> f64 {
        median(
            self.rounds
                .iter()
                .map(|r| r.deflate.as_secs_f64())
                .collect(),
        )
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

struct Args {
    rounds: usize,
    drivers: Vec<Driver>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        rounds: 5,
        drivers: vec![Driver::C, Driver::Rs],
    };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--rounds" => {
                let value = iter
                    .next()
                    .ok_or_else(|| anyhow!("--rounds needs a number"))?;
                args.rounds = value
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| anyhow!("--rounds: {value:?} is not a positive number"))?;
            }
            "--driver" => {
                let value = iter
                    .next()
                    .ok_or_else(|| anyhow!("--driver needs c, rs or both"))?;
                args.drivers = match value.as_str() {
                    "c" => vec![Driver::C],
                    "rs" => vec![Driver::Rs],
                    "both" => vec![Driver::C, Driver::Rs],
                    other => bail!("--driver: {other:?} is not c, rs or both"),
                };
            }
            "-h" | "--help" => {
                println!("usage: bench [--rounds N] [--driver c|rs|both]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(args)
}

fn run_driver(driver: Driver, rounds: usize) -> Result<DriverResult> {
    let config = VmConfig::new(&format!("bench-{}", driver.label()))
        .memory_mib(GUEST_MIB)
        .only(driver);
    let mut vm = Vm::boot(config)?;
    vm.load(driver)?;
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
    };
    for round in 1..=rounds {
        let inflate = vm.qmp().balloon_and_wait(SMALL_MIB * MIB, STEP_TIMEOUT)?;
        let memtotal_small_kb = vm.meminfo("MemTotal")?;
        let deflate = vm.qmp().balloon_and_wait(GUEST_MIB * MIB, STEP_TIMEOUT)?;
        let memtotal_full_kb = vm.meminfo("MemTotal")?;
        println!(
            "{round:>5}  {:>10.3}  {memtotal_small_kb:>14}  {:>10.3}  {memtotal_full_kb:>14}",
            inflate.as_secs_f64(),
            deflate.as_secs_f64()
        );
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

fn print_summary(results: &[DriverResult]) {
    let expected_small =
        |r: &DriverResult| r.memtotal_kb.saturating_sub((GUEST_MIB - SMALL_MIB) * 1024);
    println!(
        "\nsummary ({} -> {} -> {} MiB, query-balloon polled every 20 ms)",
        GUEST_MIB, SMALL_MIB, GUEST_MIB
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

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mut results = Vec::new();
    let mut failed = false;
    for &driver in &args.drivers {
        match run_driver(driver, args.rounds) {
            Ok(result) => results.push(result),
            Err(e) => {
                eprintln!("bench: driver {} failed: {e:#}", driver.label());
                failed = true;
            }
        }
    }
    print_summary(&results);
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
