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
    /// Balloon (4 KiB) pages named by the buffer the host holds past its
    /// deadline: neither in the balloon nor the guest's until it comes
    /// back or the device is reset.
    late_pages: u64,
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
            late_pages: engine.late_pages(),
            blocks: engine.blocks(),
        };
    }

    fn engine(&self) -> EngineView {
        *self.engine.lock()
    }
}

/// The figures, each a file of its own and a line of `status`, in order:
/// `name => |engine, view| value`. Those named `*_pages` count 4 KiB pages
/// and show in KiB in `status`.
///
/// Why a macro of named functions rather than closures: 7.3's
/// `ScopedDir::read_callback_file` takes its callback as `&'static F` and
/// asserts at build time that `F` is zero-sized (the file keeps only the
/// data pointer), so each figure must be a function item of its own, which
/// the macro writes once for the file and once for its `status` line.
macro_rules! figures {
    ($($name:ident => |$e:tt, $v:tt| $value:expr;)*) => {
        $(
            fn $name(view: &DebugView, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let get = |$e: &EngineView, $v: &DebugView| $value;
                writeln!(f, "{}", get(&view.engine(), view))
            }
        )*

        fn create_files<'data>(view: &'data DebugView, dir: &ScopedDir<'data, '_>) {
            dir.read_callback_file(c"status", view, &write_status);
            dir.read_callback_file(c"features", view, &write_features);
            $(dir.read_callback_file(kernel::c_str!(stringify!($name)), view, &$name);)*
        }

        fn write_status(view: &DebugView, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            writeln!(f, "features:          {:?}", FeatureNames(view.features))?;
            let engine = view.engine();
            $(
                let get = |$e: &EngineView, $v: &DebugView| $value;
                status_line(f, stringify!($name), u64::from(get(&engine, view)))?;
            )*
            Ok(())
        }
    };
}

figures! {
    target_pages => |e, _| e.target_pages;
    actual_pages => |e, _| e.actual_pages;
    inflated_pages => |e, _| e.counters.inflated;
    deflated_pages => |e, _| e.counters.deflated;
    migrated_pages => |e, _| e.counters.migrated;
    oom_deflated_pages => |e, _| e.counters.oom_deflated;
    reserve_pages => |e, _| e.reserve_pages;
    alloc_failures => |e, _| e.counters.alloc_failures;
    backoff_ms => |e, _| e.backoff_ms;
    stats_updates => |_, v| v.stats_updates.load(Relaxed);
    free_page_reports => |_, v| v.free_page_reports.load(Relaxed);
    hint_rounds => |_, v| v.hint_rounds.load(Relaxed);
    hinted_blocks => |_, v| v.hinted_blocks.load(Relaxed);
    hint_blocks_held => |_, v| v.hint_blocks_held.load(Relaxed);
    host_stalled => |e, _| u8::from(e.stalled);
    late_buffers => |e, _| e.counters.late_buffers;
    late_pages => |e, _| e.late_pages;
    balloon_blocks => |e, _| e.blocks;
    blocks_inflated => |e, _| e.counters.blocks_inflated;
    blocks_compacted => |_, v| v.blocks_compacted.load(Relaxed);
    block_fallbacks => |e, _| e.counters.block_fallbacks;
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

fn write_features(view: &DebugView, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(
        f,
        "{:#x} {:?}",
        view.features.bits(),
        FeatureNames(view.features)
    )
}

/// One line of `status`, aligned: a figure in 4 KiB pages shows in KiB.
fn status_line(f: &mut fmt::Formatter<'_>, name: &str, value: u64) -> fmt::Result {
    let (label, value, unit) = match name.strip_suffix("_pages") {
        Some(label) => (label, value * 4, " KiB"),
        None => (name, value, ""),
    };
    let pad = 18usize.saturating_sub(label.len());
    writeln!(f, "{label}:{:pad$}{value}{unit}", "")
}

/// The negotiated feature names, for the probe line and debugfs.
pub(super) struct FeatureNames(pub(super) Features);

impl fmt::Debug for FeatureNames {
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
