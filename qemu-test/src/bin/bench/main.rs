// SPDX-License-Identifier: GPL-2.0

//! The balloon bench: the C driver against ours, in one run.
//!
//! `cargo run -p qemu-test --release --bin bench -- [--rounds N] [--driver c|rs|both] [--part speed|memory|hint|all] [--backing anon|hugetlbfs|memfd|memfd-hugetlb|all]`
//!
//! - speed ([`speed`]): inflate/deflate medians over N rounds (default 5, or
//!   `VBRS_BENCH_ROUNDS`) of 2048 -> 1024 -> 2048 MiB, and ours / C;
//! - host memory ([`memory`]): MiB returned to the host per 1024 MiB
//!   ballooned, for each guest RAM backing, on fresh and scattered guests
//!   (the hugetlb backings reserve host huge pages and mount a hugetlbfs for
//!   the run: root only);
//! - free page hinting ([`hint`], `--part hint`, not in `all`: it
//!   migrates): MiB a live migration sends after the guest freed 1200 MiB,
//!   without hints and with each driver's, `--rounds` runs (default 1);
//! - a plot ([`plot`]) of round 1's balloon over time for each driver, in
//!   `<target>/bench/balloon.svg`.
//!
//! It reports figures and checks none, but a VM that cannot start or a
//! measurement that cannot be made fails the run (exit status 1), after the
//! other parts have run.

mod hint;
mod memory;
mod plot;
mod speed;

use std::process::ExitCode;
use std::time::Duration;
use std::time::Instant;

use anyhow::anyhow;
use anyhow::bail;
use qemu_test::Driver;
use qemu_test::Result;

use crate::memory::Backing;

/// Guest RAM in MiB.
pub const GUEST_MIB: u64 = 2048;

/// Guest size while inflated, in MiB.
pub const SMALL_MIB: u64 = 1024;

/// Time one inflate or deflate may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(120);

pub fn median(mut values: Vec<f64>) -> f64 {
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
    speed: bool,
    memory: bool,
    hint: bool,
    /// Whether `--rounds` was given (the hint part runs once by default).
    rounds_given: bool,
    backings: Vec<Backing>,
    /// `buffers_in_flight` values to time our driver at (speed part).
    in_flight: Vec<usize>,
}

const USAGE: &str =
    "usage: bench [--rounds N] [--driver c|rs|both] [--part speed|memory|hint|all] \
[--backing anon|hugetlbfs|memfd|memfd-hugetlb|all] [--in-flight 1,2,4,8,16]\n\
(VBRS_BENCH_ROUNDS=N sets the default of --rounds, 5)";

fn parse_rounds(value: &str, what: &str) -> Result<usize> {
    value
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| anyhow!("{what}: {value:?} is not a positive number"))
}

fn parse_args() -> Result<Args> {
    let rounds = match std::env::var("VBRS_BENCH_ROUNDS") {
        Ok(value) => parse_rounds(&value, "VBRS_BENCH_ROUNDS")?,
        Err(_) => 5,
    };
    let mut args = Args {
        rounds,
        drivers: vec![Driver::C, Driver::Rs],
        speed: true,
        memory: true,
        hint: false,
        rounds_given: false,
        backings: Backing::ALL.to_vec(),
        in_flight: Vec::new(),
    };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        let mut value = |what: &str| {
            iter.next()
                .ok_or_else(|| anyhow!("{arg} needs {what} (try --help)"))
        };
        match arg.as_str() {
            "--rounds" => {
                args.rounds = parse_rounds(&value("a number")?, "--rounds")?;
                args.rounds_given = true;
            }
            "--driver" => {
                args.drivers = match value("c, rs or both")?.as_str() {
                    "c" => vec![Driver::C],
                    "rs" => vec![Driver::Rs],
                    "both" => vec![Driver::C, Driver::Rs],
                    other => bail!("--driver: {other:?} is not c, rs or both"),
                };
            }
            "--part" => {
                (args.speed, args.memory, args.hint) =
                    match value("speed, memory, hint or all")?.as_str() {
                        "speed" => (true, false, false),
                        "memory" => (false, true, false),
                        "hint" => (false, false, true),
                        "all" => (true, true, false),
                        other => bail!("--part: {other:?} is not speed, memory, hint or all"),
                    };
            }
            "--backing" => {
                args.backings = match value("a backing")?.as_str() {
                    "anon" => vec![Backing::AnonThp],
                    "hugetlbfs" => vec![Backing::Hugetlbfs],
                    "memfd" => vec![Backing::Memfd],
                    "memfd-hugetlb" => vec![Backing::MemfdHugetlb],
                    "all" => Backing::ALL.to_vec(),
                    other => bail!("--backing: {other:?} is not one of {USAGE}"),
                };
            }
            "--in-flight" => {
                args.in_flight = value("a list such as 1,2,4,8,16")?
                    .split(',')
                    .map(|n| parse_rounds(n.trim(), "--in-flight"))
                    .collect::<Result<_>>()?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let mut failures = Vec::new();

    if args.speed {
        let mut results = Vec::new();
        for &driver in &args.drivers {
            match speed::run_driver(driver, args.rounds, "") {
                Ok(result) => results.push(result),
                Err(e) => {
                    eprintln!("bench: FAILED speed, driver {}: {e:#}", driver.label());
                    failures.push(format!("speed {}: {e:#}", driver.label()));
                }
            }
        }
        speed::print_summary(&results);
        if !args.in_flight.is_empty() {
            let mut sweep = Vec::new();
            for &n in &args.in_flight {
                let params = format!("buffers_in_flight={n}");
                match speed::run_driver(Driver::Rs, args.rounds, &params) {
                    Ok(result) => sweep.push((n, result)),
                    Err(e) => {
                        eprintln!("bench: FAILED speed, {params}: {e:#}");
                        failures.push(format!("speed {params}: {e:#}"));
                    }
                }
            }
            let c = results.iter().find(|r| r.driver == Driver::C);
            speed::print_in_flight(c, &sweep);
        }
        if !results.is_empty() {
            let dir = qemu_test::target_dir().join("bench");
            let path = dir.join("balloon.svg");
            let traces: Vec<_> = results.iter().map(|r| (r.driver, &r.trace)).collect();
            let drawn = std::fs::create_dir_all(&dir)
                .map_err(anyhow::Error::from)
                .and_then(|()| plot::draw(&path, &traces));
            match drawn {
                Ok(()) => println!("\nplot: {}", path.display()),
                Err(e) => {
                    eprintln!("bench: FAILED plot: {e:#}");
                    failures.push(format!("plot: {e:#}"));
                }
            }
        }
    }

    if args.memory {
        let results = memory::run_all(&args.backings, &args.drivers, &mut failures);
        memory::print_summary(&results);
    }

    if args.hint {
        let rounds = if args.rounds_given { args.rounds } else { 1 };
        let results = hint::run_all(&args.drivers, rounds, &mut failures);
        hint::print_summary(&results);
    }

    println!("\nbench took {:.0} s", started.elapsed().as_secs_f64());
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("\nbench: {} part(s) FAILED:", failures.len());
        for failure in &failures {
            eprintln!("  - {}", failure.lines().next().unwrap_or(""));
        }
        ExitCode::FAILURE
    }
}
