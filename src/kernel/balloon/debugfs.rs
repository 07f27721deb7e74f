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
use kernel::debugfs::{
    Dir,
    Scope,
    ScopedDir, //
};
use kernel::new_spinlock;
use kernel::prelude::*;
use kernel::sync::atomic::{
    Atomic,
    Relaxed, //
};
use kernel::sync::SpinLock;

/// What the engine showed after its last step: every file reads one
/// consistent copy instead of a set of mirrored counters.
#[derive(Clone, Copy, Default)]
pub(super) struct EngineView {
    counters: Counters,
    target_pages: u32,
    actual_pages: u64,
    backoff_ms: u32,
    /// In balloon (4 KiB) pages.
    reserve_pages: u64,
    stalled: bool,
    /// Whole 2 MiB blocks in the balloon.
    blocks: u64,
}

/// Figures for the guest-side view in debugfs.
#[pin_data]
pub(super) struct DebugView {
    features: Features,
    /// Balloon (4 KiB) pages per guest page, to show the reserve in them.
    balloon_pages_per_page: u64,
    #[pin]
    engine: SpinLock<EngineView>,
    /// Stats buffers handed to the host.
    pub(super) stats_updates: Atomic<u64>,
    /// Free page reports the host acknowledged.
    pub(super) free_page_reports: Atomic<u64>,
    /// Free page hint rounds started.
    pub(super) hint_rounds: Atomic<u64>,
    /// Blocks hinted so far.
    pub(super) hinted_blocks: Atomic<u64>,
    /// Blocks held as hints now.
    pub(super) hint_blocks_held: Atomic<u64>,
    /// Balloon blocks that took compaction to make.
    pub(super) blocks_compacted: Atomic<u64>,
}

impl DebugView {
    pub(super) fn new(features: Features, geometry: PageGeometry) -> impl PinInit<Self> {
        pin_init!(Self {
            features,
            balloon_pages_per_page: u64::from(geometry.balloon_pages_per_page()),
            engine <- new_spinlock!(EngineView::default()),
            stats_updates: Atomic::new(0),
            free_page_reports: Atomic::new(0),
            hint_rounds: Atomic::new(0),
            hinted_blocks: Atomic::new(0),
            hint_blocks_held: Atomic::new(0),
            blocks_compacted: Atomic::new(0),
        })
    }

    /// Publishes the engine's figures.
    pub(super) fn update(&self, engine: &Engine) {
        *self.engine.lock() = EngineView {
            counters: engine.counters(),
            target_pages: engine.last_target(),
            actual_pages: engine.pages(),
            backoff_ms: engine.backoff_ms(),
            reserve_pages: engine.reserve() * self.balloon_pages_per_page,
            stalled: engine.is_stalled(),
            blocks: engine.blocks(),
        };
    }

    fn engine(&self) -> EngineView {
        *self.engine.lock()
    }
}

/// Defines a debugfs read callback per engine figure: `name(view, f)`
/// prints `expr` of the engine snapshot `e`.
macro_rules! engine_files {
    ($($name:ident => |$e:ident| $expr:expr;)*) => {
        $(
            fn $name(view: &DebugView, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let $e = view.engine();
                writeln!(f, "{}", $expr)
            }
        )*
    };
}

engine_files! {
    target_pages => |e| e.target_pages;
    actual_pages => |e| e.actual_pages;
    inflated_pages => |e| e.counters.inflated;
    deflated_pages => |e| e.counters.deflated;
    migrated_pages => |e| e.counters.migrated;
    oom_deflated_pages => |e| e.counters.oom_deflated;
    reserve_pages => |e| e.reserve_pages;
    alloc_failures => |e| e.counters.alloc_failures;
    backoff_ms => |e| e.backoff_ms;
    host_stalled => |e| u8::from(e.stalled);
    late_buffers => |e| e.counters.late_buffers;
    balloon_blocks => |e| e.blocks;
    blocks_inflated => |e| e.counters.blocks_inflated;
    block_fallbacks => |e| e.counters.block_fallbacks;
}

/// The device's debugfs directory `name` under `root`, with its files.
///
/// A function of its own, not a closure in `probe`: the symbols of the
/// generic debugfs code instantiated for it stay short enough for objtool.
pub(super) fn directory<'a>(
    root: &'a Dir,
    name: &'a CStr,
    features: Features,
    geometry: PageGeometry,
) -> impl PinInit<Scope<DebugView>> + 'a {
    root.scope(DebugView::new(features, geometry), name, create_files)
}

fn create_files<'data>(view: &'data DebugView, dir: &ScopedDir<'data, '_>) {
    dir.read_callback_file(c"status", view, &write_status);
    dir.read_callback_file(c"features", view, &write_features);
    dir.read_callback_file(c"target_pages", view, &target_pages);
    dir.read_callback_file(c"actual_pages", view, &actual_pages);
    dir.read_callback_file(c"inflated_pages", view, &inflated_pages);
    dir.read_callback_file(c"deflated_pages", view, &deflated_pages);
    dir.read_callback_file(c"migrated_pages", view, &migrated_pages);
    dir.read_callback_file(c"oom_deflated_pages", view, &oom_deflated_pages);
    dir.read_callback_file(c"reserve_pages", view, &reserve_pages);
    dir.read_callback_file(c"alloc_failures", view, &alloc_failures);
    dir.read_callback_file(c"backoff_ms", view, &backoff_ms);
    dir.read_only_file(c"stats_updates", &view.stats_updates);
    dir.read_only_file(c"free_page_reports", &view.free_page_reports);
    dir.read_only_file(c"hint_rounds", &view.hint_rounds);
    dir.read_only_file(c"hinted_blocks", &view.hinted_blocks);
    dir.read_only_file(c"hint_blocks_held", &view.hint_blocks_held);
    dir.read_callback_file(c"host_stalled", view, &host_stalled);
    dir.read_callback_file(c"late_buffers", view, &late_buffers);
    dir.read_callback_file(c"balloon_blocks", view, &balloon_blocks);
    dir.read_callback_file(c"blocks_inflated", view, &blocks_inflated);
    dir.read_callback_file(c"block_fallbacks", view, &block_fallbacks);
    dir.read_only_file(c"blocks_compacted", &view.blocks_compacted);
}

fn write_features(view: &DebugView, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(
        f,
        "{:#x} {:?}",
        view.features.bits(),
        DisplayFeatures(view.features)
    )
}

fn write_status(view: &DebugView, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let e = view.engine();
    let count = |value: &Atomic<u64>| value.load(Relaxed);
    writeln!(f, "features:          {:?}", DisplayFeatures(view.features))?;
    writeln!(
        f,
        "target:            {} KiB",
        u64::from(e.target_pages) * 4
    )?;
    writeln!(f, "actual:            {} KiB", e.actual_pages * 4)?;
    writeln!(f, "inflated:          {} KiB", e.counters.inflated * 4)?;
    writeln!(f, "deflated:          {} KiB", e.counters.deflated * 4)?;
    writeln!(f, "migrated:          {} KiB", e.counters.migrated * 4)?;
    writeln!(f, "oom_deflated:      {} KiB", e.counters.oom_deflated * 4)?;
    writeln!(f, "reserve:           {} KiB", e.reserve_pages * 4)?;
    writeln!(f, "alloc_failures:    {}", e.counters.alloc_failures)?;
    writeln!(f, "backoff_ms:        {}", e.backoff_ms)?;
    writeln!(f, "stats_updates:     {}", count(&view.stats_updates))?;
    writeln!(f, "free_page_reports: {}", count(&view.free_page_reports))?;
    writeln!(f, "hint_rounds:       {}", count(&view.hint_rounds))?;
    writeln!(f, "hinted_blocks:     {}", count(&view.hinted_blocks))?;
    writeln!(f, "hint_blocks_held:  {}", count(&view.hint_blocks_held))?;
    writeln!(f, "host_stalled:      {}", u8::from(e.stalled))?;
    writeln!(f, "late_buffers:      {}", e.counters.late_buffers)?;
    writeln!(f, "balloon_blocks:    {}", e.blocks)?;
    writeln!(f, "blocks_inflated:   {}", e.counters.blocks_inflated)?;
    writeln!(f, "blocks_compacted:  {}", count(&view.blocks_compacted))?;
    writeln!(f, "block_fallbacks:   {}", e.counters.block_fallbacks)
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
