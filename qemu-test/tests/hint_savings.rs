// SPDX-License-Identifier: GPL-2.0

//! Free page hinting against the C driver: what a live migration sends
//! with each driver's hints (issue 16).
//!
//! Each driver gets a fresh 2 GiB guest with QEMU's `free-page-hint=on`
//! that writes 1200 MiB of random data to a tmpfs and frees it, then is
//! migrated at 256 MiB/s twice: with no driver loaded (the baseline, about
//! all of the freed data) and with the driver. Both guests run side by
//! side, their migrations started together, so that both drivers hint
//! under the same load ([`qemu_test::migration::measure_hint_savings`]);
//! which guest starts first is drawn at random. Ours must send no more
//! than the C driver, within a margin taken from the baseline this run
//! measured, on whatever kernel the harness boots (`make test`, `make
//! test-stock`, `make test-debug`).

use anyhow::anyhow;
use anyhow::ensure;
use qemu_test::migration::measure_hint_savings;
use qemu_test::migration::HintSavings;
use qemu_test::Driver;
use qemu_test::Result;

/// Ours may send this share (1/10) of the baseline beyond the C driver:
/// the noise between two guests side by side. Where the hint rate decides
/// (Debian's kernel zeroes every block it hints, the debug kernel checks
/// it), ours sent from 98 MiB less to 124 MiB more than C's (9.4 % of a
/// 1314 MiB baseline) in nine side-by-side runs here (the same hint
/// mechanism), part of it the first guest's advantage; on the test kernel
/// they differ by under 1 %. The bug this guards against cost 56 to 99 %
/// of the baseline.
const MARGIN_OF_BASELINE: u64 = 10;

fn print(result: &HintSavings) {
    eprintln!(
        "{:>2}: no hints {} MiB ({} syncs), with hints {} MiB ({} syncs, {:.1} s), saved {} MiB {:?}",
        result.driver.label(),
        result.baseline.transferred_mib(),
        result.baseline.dirty_syncs,
        result.hinted.transferred_mib(),
        result.hinted.dirty_syncs,
        result.hinted.duration.as_secs_f64(),
        result.saved_mib(),
        result.counters
    );
    for window in &result.windows {
        eprintln!("    {window}");
    }
}

#[test]
fn hints_save_as_much_as_the_c_driver() -> Result<()> {
    // The guest started first tends to do better (on Debian's kernel by
    // about 50 MiB either way round): which one it is, is drawn.
    let c_first = fastrand::bool();
    let order = if c_first {
        [Driver::C, Driver::Rs]
    } else {
        [Driver::Rs, Driver::C]
    };
    eprintln!("{} started first", order[0].label());
    let [first, second]: [HintSavings; 2] = measure_hint_savings(&order)?
        .try_into()
        .map_err(|_| anyhow!("two results expected"))?;
    let (c, rs) = if c_first {
        (first, second)
    } else {
        (second, first)
    };
    print(&c);
    print(&rs);
    let baseline = c
        .baseline
        .transferred_mib()
        .min(rs.baseline.transferred_mib());
    let margin = baseline / MARGIN_OF_BASELINE;
    ensure!(
        rs.hinted.transferred_mib() <= c.hinted.transferred_mib() + margin,
        "with hints ours sent {} MiB, the C driver {} MiB (margin {margin} MiB, \
         {}% of the {baseline} MiB sent without hints)",
        rs.hinted.transferred_mib(),
        c.hinted.transferred_mib(),
        100 / MARGIN_OF_BASELINE
    );
    Ok(())
}
