// SPDX-License-Identifier: GPL-2.0

//! The guest-side view: `/sys/kernel/debug/virtio_balloon_rs/<dev>/`.

use core::fmt;

use balloon_logic::engine::{
    Counters,
    Engine, //
};
use balloon_logic::features::{
    self,
    Features, //
};
use balloon_logic::pfn::PageGeometry;
use kernel::sync::atomic::{
    Atomic,
    Relaxed, //
};

/// Figures for the guest-side view in debugfs.
pub(super) struct DebugView {
    pub(super) features: Features,
    pub(super) target_pages: Atomic<u64>,
    pub(super) actual_pages: Atomic<u64>,
    pub(super) inflated_pages: Atomic<u64>,
    pub(super) deflated_pages: Atomic<u64>,
    pub(super) alloc_failures: Atomic<u64>,
    pub(super) backoff_ms: Atomic<u64>,
    pub(super) migrated_pages: Atomic<u64>,
    pub(super) oom_deflated_pages: Atomic<u64>,
    pub(super) reserve_pages: Atomic<u64>,
    pub(super) stats_updates: Atomic<u64>,
    pub(super) free_page_reports: Atomic<u64>,
    pub(super) hint_rounds: Atomic<u64>,
    pub(super) hinted_blocks: Atomic<u64>,
    pub(super) hint_blocks_held: Atomic<u64>,
    pub(super) host_stalled: Atomic<u64>,
    pub(super) late_buffers: Atomic<u64>,
    /// Balloon (4 KiB) pages per guest page, to show the reserve in them.
    pub(super) balloon_pages_per_page: u64,
}

impl DebugView {
    pub(super) fn new(features: Features, geometry: PageGeometry) -> Self {
        Self {
            features,
            late_buffers: Atomic::new(0),
            balloon_pages_per_page: u64::from(geometry.balloon_pages_per_page()),
            target_pages: Atomic::new(0),
            actual_pages: Atomic::new(0),
            inflated_pages: Atomic::new(0),
            deflated_pages: Atomic::new(0),
            alloc_failures: Atomic::new(0),
            backoff_ms: Atomic::new(0),
            migrated_pages: Atomic::new(0),
            oom_deflated_pages: Atomic::new(0),
            reserve_pages: Atomic::new(0),
            stats_updates: Atomic::new(0),
            free_page_reports: Atomic::new(0),
            hint_rounds: Atomic::new(0),
            hinted_blocks: Atomic::new(0),
            hint_blocks_held: Atomic::new(0),
            host_stalled: Atomic::new(0),
        }
    }

    /// Publishes the engine's figures.
    pub(super) fn update(&self, engine: &Engine) {
        let Counters {
            inflated,
            deflated,
            alloc_failures,
            migrated,
            oom_deflated,
            late_buffers,
            ..
        } = engine.counters();
        self.late_buffers.store(late_buffers, Relaxed);
        self.target_pages
            .store(u64::from(engine.last_target()), Relaxed);
        self.actual_pages.store(engine.pages(), Relaxed);
        self.inflated_pages.store(inflated, Relaxed);
        self.deflated_pages.store(deflated, Relaxed);
        self.alloc_failures.store(alloc_failures, Relaxed);
        self.backoff_ms
            .store(u64::from(engine.backoff_ms()), Relaxed);
        self.migrated_pages.store(migrated, Relaxed);
        self.oom_deflated_pages.store(oom_deflated, Relaxed);
        self.reserve_pages
            .store(engine.reserve() * self.balloon_pages_per_page, Relaxed);
        self.host_stalled
            .store(u64::from(engine.is_stalled()), Relaxed);
    }
}

pub(super) fn write_features(view: &DebugView, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(
        f,
        "{:#x} {:?}",
        view.features.bits(),
        DisplayFeatures(view.features)
    )
}

pub(super) fn write_status(view: &DebugView, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let kib = |value: &Atomic<u64>| value.load(Relaxed) * 4;
    writeln!(f, "features:          {:?}", DisplayFeatures(view.features))?;
    writeln!(f, "target:            {} KiB", kib(&view.target_pages))?;
    writeln!(f, "actual:            {} KiB", kib(&view.actual_pages))?;
    writeln!(f, "inflated:          {} KiB", kib(&view.inflated_pages))?;
    writeln!(f, "deflated:          {} KiB", kib(&view.deflated_pages))?;
    writeln!(f, "migrated:          {} KiB", kib(&view.migrated_pages))?;
    writeln!(
        f,
        "oom_deflated:      {} KiB",
        kib(&view.oom_deflated_pages)
    )?;
    writeln!(f, "reserve:           {} KiB", kib(&view.reserve_pages))?;
    writeln!(
        f,
        "alloc_failures:    {}",
        view.alloc_failures.load(Relaxed)
    )?;
    writeln!(f, "backoff_ms:        {}", view.backoff_ms.load(Relaxed))?;
    writeln!(f, "stats_updates:     {}", view.stats_updates.load(Relaxed))?;
    writeln!(
        f,
        "free_page_reports: {}",
        view.free_page_reports.load(Relaxed)
    )?;
    writeln!(f, "hint_rounds:       {}", view.hint_rounds.load(Relaxed))?;
    writeln!(f, "hinted_blocks:     {}", view.hinted_blocks.load(Relaxed))?;
    writeln!(
        f,
        "hint_blocks_held:  {}",
        view.hint_blocks_held.load(Relaxed)
    )?;
    writeln!(f, "host_stalled:      {}", view.host_stalled.load(Relaxed))?;
    writeln!(f, "late_buffers:      {}", view.late_buffers.load(Relaxed))
}

/// The negotiated feature names, for the probe line and debugfs.
pub(super) struct DisplayFeatures(pub(super) Features);

impl fmt::Debug for DisplayFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for name in features::describe(self.0) {
            if !first {
                f.write_str("|")?;
            }
            f.write_str(name)?;
            first = false;
        }
        Ok(())
    }
}
