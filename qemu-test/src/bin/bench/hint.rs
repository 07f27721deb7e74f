// SPDX-License-Identifier: GPL-2.0

//! Free page hinting: MiB a live migration sends with each driver's hints,
//! in the scenario of [`qemu_test::migration::measure_hint_savings`] (a
//! 2 GiB guest frees 1200 MiB of random data, then is migrated at
//! 256 MiB/s without a driver and with it; the drivers' guests side by
//! side, the first one started taking turns), `rounds` times.
//! With `VBRS_HINT_TRACE` set (e.g. to
//! [`qemu_test::migration::HINT_TRACE_EVENTS`]) each round's hint windows
//! are printed as QEMU saw them.

use qemu_test::migration::measure_hint_savings;
use qemu_test::migration::HintSavings;
use qemu_test::Driver;

use crate::median;

/// Runs the scenario `rounds` times for each driver; failures are added
/// to `failures` and the other runs go on.
pub fn run_all(drivers: &[Driver], rounds: usize, failures: &mut Vec<String>) -> Vec<HintSavings> {
    let mut results = Vec::new();
    for round in 1..=rounds {
        // The guest started first tends to do better: take turns.
        let mut order = drivers.to_vec();
        if round % 2 == 0 {
            order.reverse();
        }
        match measure_hint_savings(&order) {
            Ok(round_results) => {
                for result in round_results {
                    eprintln!(
                        "hint {} round {round}: {} MiB without hints, {} MiB with",
                        result.driver.label(),
                        result.baseline.transferred_mib(),
                        result.hinted.transferred_mib()
                    );
                    for window in &result.windows {
                        eprintln!("    {window}");
                    }
                    results.push(result);
                }
            }
            Err(e) => {
                eprintln!("bench: FAILED hint round {round}: {e:#}");
                failures.push(format!("hint round {round}: {e:#}"));
            }
        }
    }
    results
}

/// Prints each driver's runs and medians.
pub fn print_summary(results: &[HintSavings]) {
    println!("\nfree page hinting: MiB sent by a migration at 256 MiB/s after 1200 MiB were freed");
    println!(
        "{:<18} {:>4} {:>20} {:>20} {:>10}",
        "driver", "runs", "no hints (median)", "with hints (median)", "saved"
    );
    for driver in [Driver::C, Driver::Rs] {
        let runs: Vec<&HintSavings> = results.iter().filter(|r| r.driver == driver).collect();
        if runs.is_empty() {
            continue;
        }
        let mib = |f: fn(&HintSavings) -> u64| median(runs.iter().map(|r| f(r) as f64).collect());
        let baseline = mib(|r| r.baseline.transferred_mib());
        let hinted = mib(|r| r.hinted.transferred_mib());
        let all: Vec<String> = runs
            .iter()
            .map(|r| r.hinted.transferred_mib().to_string())
            .collect();
        println!(
            "{:<18} {:>4} {:>16.0} MiB {:>16.0} MiB {:>6.0} MiB   (with hints: {})",
            driver.module_name(),
            runs.len(),
            baseline,
            hinted,
            baseline - hinted,
            all.join(", ")
        );
    }
}
