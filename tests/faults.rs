// SPDX-License-Identifier: GPL-2.0

//! Property test of the engine against hosts that are slow, dead, broken or
//! refuse buffers: random sequences of target changes, OOM deflates,
//! migrations, late buffers coming back, isolation by compaction,
//! freeze/restore and remove. After every step the model checks that no
//! page was lost or duplicated, that no page the host may still read was
//! freed or reused, that the host was told before any page went back, and
//! that `actual` never claims pages the host was not told of; every
//! teardown must end.
//!
//! Each case runs in one buffer format: `Compat` (4 KiB pages, 64-PFN
//! buffers, any VMM's rules) or `Full` (16 KiB pages so that a 2 MiB block
//! is 128 of them, 1024-PFN buffers, QEMU's or crosvm's rules), where block
//! allocation may fail or memory fragment, mixing blocks and single pages.
//! Compat cases also send one to three 256-PFN buffers at once.
//!
//! 10,000 cases by default; `BALLOON_PROPTEST_CASES=N` runs N.

mod model;

use balloon_logic::engine::{Engine, Step};
use balloon_logic::format::BufferFormat;
use model::{HostMode, Model, Vmm};
use proptest::prelude::*;

/// Guest pages of the model: small, so targets reach every corner.
const GUEST_PAGES: u64 = 512;
/// PFNs per buffer: small, so moves take several batches.
const BUFFER: usize = 64;

/// One case's buffer format, page size, PFN array and host rules.
#[derive(Debug, Clone, Copy)]
struct Profile {
    format: BufferFormat,
    page_shift: u32,
    buffer: usize,
    /// Buffers sent at once ([`Engine::set_in_flight`]).
    in_flight: usize,
    vmm: Vmm,
}

fn profile() -> impl Strategy<Value = Profile> {
    let compat = (
        prop_oneof![
            Just(Vmm::Reference),
            Just(Vmm::Qemu),
            Just(Vmm::Firecracker),
            Just(Vmm::CloudHypervisor),
            Just(Vmm::Crosvm),
        ],
        1usize..=3,
    )
        .prop_map(|(vmm, in_flight)| Profile {
            format: BufferFormat::Compat,
            page_shift: 12,
            // Several buffers in flight need room for them: 256 PFNs each.
            buffer: if in_flight == 1 {
                BUFFER
            } else {
                256 * in_flight
            },
            in_flight,
            vmm,
        });
    let full = prop_oneof![Just(Vmm::Qemu), Just(Vmm::Crosvm)].prop_map(|vmm| Profile {
        format: BufferFormat::Full,
        page_shift: 14,
        buffer: 1024,
        in_flight: 1,
        vmm,
    });
    prop_oneof![compat, full]
}

#[derive(Debug, Clone)]
enum Op {
    /// The host sets a new target (balloon pages).
    Target(u32),
    /// The host answers the next buffers this way.
    Mode(HostMode),
    /// The update work runs up to this many steps.
    Steps(u8),
    /// The host processes the buffer it sat on and hands it back.
    DeliverLate,
    /// The guest runs out of memory.
    Oom(u16),
    /// Compaction isolates a balloon page, then migrates it (or puts it back).
    Migrate(u16, bool),
    /// Compaction puts isolated pages back.
    Putback,
    /// Allocation starts failing after this many pages (or never).
    AllocLimit(Option<u16>),
    /// Memory is hot-plugged.
    Hotplug(u8),
    /// Block allocation starts failing after this many blocks (or never).
    BlockLimit(Option<u8>),
    /// No 2 MiB block is free any more.
    Fragment,
    /// Suspend: drain, reset, then a new engine on the same device.
    FreezeRestore,
    /// Remove: drain, reset, forget; then the driver is loaded again.
    Remove,
}

fn host_mode() -> impl Strategy<Value = HostMode> {
    prop_oneof![
        4 => Just(HostMode::Prompt),
        2 => Just(HostMode::Slow),
        1 => Just(HostMode::Dead),
        1 => Just(HostMode::Broken),
        1 => Just(HostMode::Refusing),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Balloon pages; scaled to the guest's page size in `run`.
        4 => (0u32..=(GUEST_PAGES as u32 + 64)).prop_map(Op::Target),
        2 => host_mode().prop_map(Op::Mode),
        6 => (1u8..20).prop_map(Op::Steps),
        2 => Just(Op::DeliverLate),
        1 => (1u16..200).prop_map(Op::Oom),
        2 => (any::<u16>(), any::<bool>()).prop_map(|(i, m)| Op::Migrate(i, m)),
        1 => Just(Op::Putback),
        1 => proptest::option::of(0u16..300).prop_map(Op::AllocLimit),
        1 => (1u8..64).prop_map(Op::Hotplug),
        1 => proptest::option::of(0u8..4).prop_map(Op::BlockLimit),
        1 => Just(Op::Fragment),
        1 => Just(Op::FreezeRestore),
        1 => Just(Op::Remove),
    ]
}

/// The driver: one engine on one device, and the PFN array it sends from.
struct Driver {
    engine: Engine,
    format: BufferFormat,
    buffer: Vec<u32>,
    /// The PFN array as it was when a buffer went late: the host may read
    /// it until the buffer comes back, so it must not change.
    late_snapshot: Option<(u64, Vec<u32>)>,
}

impl Driver {
    fn new(model: &Model, format: BufferFormat, buffer: usize, in_flight: usize) -> Self {
        let mut engine = Engine::new(model.geometry, true, false, 0);
        engine.set_format(format).expect("empty balloon");
        engine.set_in_flight(in_flight);
        Self {
            engine,
            format,
            buffer: vec![0; buffer],
            late_snapshot: None,
        }
    }

    /// Checks the array the host may still read, and remembers it when a
    /// buffer goes late.
    fn watch_buffer(&mut self, model: &Model) {
        match (&model.late, &self.late_snapshot) {
            (Some(late), Some((serial, snapshot))) if !late.returned && late.serial == *serial => {
                assert_eq!(
                    &self.buffer, snapshot,
                    "PFN array changed under a late buffer"
                );
            }
            (Some(late), _) if !late.returned => {
                self.late_snapshot = Some((late.serial, self.buffer.clone()));
            }
            _ => self.late_snapshot = None,
        }
    }

    fn step(&mut self, model: &mut Model) -> Step {
        let step = self.engine.step(model, &mut self.buffer);
        self.watch_buffer(model);
        step
    }

    /// Remove or freeze: drain, reset the device, forget the rest. Panics
    /// if it does not end.
    fn teardown(&mut self, model: &mut Model) {
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 10_000, "drain did not end");
            let step = self.engine.drain_step(model, &mut self.buffer);
            self.watch_buffer(model);
            model.check();
            match step {
                Step::Progress => {}
                Step::Backoff(_) => {
                    // Isolated pages come back; a refusing queue is retried.
                    if steps % 3 == 0 {
                        model.putback_isolated();
                    }
                }
                Step::Reached | Step::Stalled => break,
            }
        }
        model.reset();
        self.late_snapshot = None;
        let mut tries = 0;
        while !self.engine.forget_all(model) {
            tries += 1;
            assert!(tries < 100, "forget_all did not end");
            model.putback_isolated();
        }
        model.check();
        assert_eq!(self.engine.pages(), 0);
        let counters = self.engine.counters();
        assert_eq!(
            counters.inflated, counters.deflated,
            "the balloon count drifted from the pages"
        );
        assert_eq!(counters.blocks_inflated, counters.blocks_deflated);
        assert_eq!(self.engine.blocks(), 0);
        assert!(model.balloon.is_empty() && model.staged_deflate.is_empty());
        assert!(model.staged_inflate.is_empty() && model.held.is_empty());
        assert!(model.balloon_blocks.is_empty() && model.staged_deflate_blocks.is_empty());
        assert!(model.staged_inflate_blocks.is_empty());
        assert_eq!(
            (model.free.len() + model.pinned.len()) as u64,
            model.total(),
            "pages leaked"
        );
    }
}

fn run(profile: Profile, ops: &[Op]) {
    let mut model = Model::for_vmm(profile.vmm, profile.page_shift, GUEST_PAGES);
    let scale = model.geometry.balloon_pages_per_page();
    let mut driver = Driver::new(&model, profile.format, profile.buffer, profile.in_flight);
    for op in ops {
        match op {
            Op::Target(pages) => model.num_pages = pages * scale,
            Op::Mode(mode) => model.mode = *mode,
            Op::Steps(count) => {
                for _ in 0..*count {
                    if driver.step(&mut model) != Step::Progress {
                        break;
                    }
                }
            }
            Op::DeliverLate => model.deliver_late(),
            Op::Oom(max) => {
                driver
                    .engine
                    .oom_deflate(&mut model, &mut driver.buffer, u64::from(*max));
                driver.watch_buffer(&model);
            }
            Op::Migrate(index, migrate) => {
                if let Some(old) = model.isolate(usize::from(*index)) {
                    if *migrate {
                        let Driver { engine, buffer, .. } = &mut driver;
                        let _ = model.migrate_with(old, |model, new| {
                            engine.migrate(model, buffer, new, old)
                        });
                        driver.watch_buffer(&model);
                    }
                }
            }
            Op::Putback => model.putback_isolated(),
            Op::AllocLimit(limit) => model.alloc_left = limit.map(u64::from),
            Op::Hotplug(pages) => model.hotplug(u64::from(*pages)),
            Op::BlockLimit(limit) => model.block_alloc_left = limit.map(u64::from),
            Op::Fragment => model.fragment(),
            Op::FreezeRestore | Op::Remove => {
                driver.teardown(&mut model);
                model.mode = HostMode::Prompt;
                driver = Driver::new(&model, driver.format, profile.buffer, profile.in_flight);
            }
        }
        model.check();
        assert!(
            driver.engine.pages() <= model.total() * u64::from(scale),
            "balloon larger than the guest"
        );
        let per_block = model.block_pages() * u64::from(scale);
        assert_eq!(
            driver.engine.blocks(),
            (model.balloon_blocks.len() + model.staged_deflate_blocks.len()) as u64,
            "the engine's block count drifted"
        );
        assert!(driver.engine.blocks() * per_block <= driver.engine.pages());
    }
    // Whatever happened, the driver can always be removed.
    model.putback_isolated();
    driver.teardown(&mut model);
}

fn cases() -> u32 {
    std::env::var("BALLOON_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_host_loses_hangs_or_corrupts_the_balloon(
        profile in profile(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        run(profile, &ops);
    }
}

/// A recovered slow host always lets the balloon reach a reachable target.
#[test]
fn every_host_mode_then_prompt_reaches_the_target() {
    for mode in [
        HostMode::Slow,
        HostMode::Dead,
        HostMode::Broken,
        HostMode::Refusing,
    ] {
        let mut model = Model::new(12, GUEST_PAGES);
        let mut driver = Driver::new(&model, BufferFormat::Compat, BUFFER, 1);
        model.num_pages = 300;
        model.mode = mode;
        for _ in 0..20 {
            driver.step(&mut model);
        }
        model.check();
        model.mode = HostMode::Prompt;
        model.deliver_late();
        let reached = (0..100).any(|_| driver.step(&mut model) == Step::Reached);
        match mode {
            // Late buffers come back; refusals are retried.
            HostMode::Slow | HostMode::Refusing => {
                assert!(reached, "{mode:?}: target not reached after recovery");
                assert_eq!(model.actual, 300);
            }
            // A dead or broken device needs a reset: remove ends cleanly.
            HostMode::Dead | HostMode::Broken => {
                assert!(!reached, "{mode:?}: moved without a reset");
                driver.teardown(&mut model);
            }
            HostMode::Prompt => unreachable!(),
        }
    }
}
