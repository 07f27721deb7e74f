// SPDX-License-Identifier: GPL-2.0

//! A `log` backend that forwards the pure-logic crate's messages to printk.

use kernel::prelude::*;

struct Printk;

impl log::Log for Printk {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        // The messages carry their own trailing newline; `pr_*!` adds the
        // module name as prefix.
        match record.level() {
            log::Level::Error => pr_err!("{}", record.args()),
            log::Level::Warn => pr_warn!("{}", record.args()),
            log::Level::Info => pr_info!("{}", record.args()),
            log::Level::Debug | log::Level::Trace => pr_debug!("{}", record.args()),
        }
    }

    fn flush(&self) {}
}

static PRINTK: Printk = Printk;

/// Routes `log` messages to printk, at info level and above.
pub(crate) fn init() {
    // Fails only if a logger is already set, which in this module's own copy
    // of `log` means init ran before: keep the first one.
    let _ = log::set_logger(&PRINTK);
    log::set_max_level(log::LevelFilter::Info);
}
