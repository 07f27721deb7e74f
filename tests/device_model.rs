// SPDX-License-Identifier: GPL-2.0

//! Host tests of the inflate/deflate engine against a model of the balloon
//! device and of guest memory that checks every buffer the driver sends,
//! including hosts that are slow, dead, broken or refuse buffers.

mod model;

use balloon_logic::engine::{Engine, HostError, Late, Step, DRAIN_QUEUE_ATTEMPTS};
use balloon_logic::features::QueueRole;
use balloon_logic::format::BufferFormat;
use balloon_logic::pfn::PFNS_PER_BUFFER;
use model::{HostMode, Model};

fn engine_for(model: &Model, reserve: u64) -> Engine {
    Engine::new(model.geometry, true, false, reserve)
}

fn run_until_settled(engine: &mut Engine, model: &mut Model) -> Step {
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    for _ in 0..10_000 {
        match engine.step(model, &mut buffer) {
            Step::Progress => continue,
            other => return other,
        }
    }
    panic!("engine did not settle");
}

const MIB: u64 = 256; // balloon pages per MiB

#[test]
fn inflates_and_deflates_to_exact_targets() {
    for format in [BufferFormat::Compat, BufferFormat::Full] {
        let total = 512 * MIB;
        let mut model = Model::new(12, total);
        let mut engine = engine_for(&model, 0);
        engine.set_format(format).expect("empty balloon");
        for target_mib in [128u64, 256, 64, 0, 300] {
            model.num_pages = (target_mib * MIB) as u32;
            assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
            assert_eq!(u64::from(model.actual), target_mib * MIB);
            assert_eq!(engine.pages(), target_mib * MIB);
            assert_eq!(model.balloon_pages(), target_mib * MIB);
            model.check();
        }
        // Batches are full buffers of the format except the last one of a
        // move, and never larger.
        let room = format.pfns_per_buffer();
        assert!(model.buffers.iter().any(|(_, len)| *len == room));
        assert!(model.buffers.iter().all(|(_, len)| *len <= room));
        // `actual` is written after every batch, so the host sees progress.
        assert_eq!(model.actual_writes.len(), model.buffers.len());
    }
}

#[test]
fn the_engine_defaults_to_the_format_every_host_reads() {
    let model = Model::new(12, 64);
    assert_eq!(engine_for(&model, 0).format(), BufferFormat::Compat);
}

#[test]
fn sixteen_and_sixtyfour_kib_pages_use_whole_guest_pages() {
    for (shift, per) in [(14u32, 4u32), (16, 16)] {
        let guest_pages = 1024;
        let mut model = Model::new(shift, guest_pages);
        let mut engine = engine_for(&model, 0);
        // Not a multiple of the guest page: rounds up, never oscillates.
        model.num_pages = 1001;
        assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
        assert_eq!(model.actual, 1001u32.div_ceil(per) * per);
        assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
        model.num_pages = 0;
        assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
        assert_eq!(model.actual, 0);
        model.check();
    }
}

#[test]
fn target_above_ram_is_clamped() {
    let total = 64 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = engine_for(&model, 0);
    model.num_pages = u32::MAX;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    assert_eq!(u64::from(model.actual), total);
    assert_eq!(engine.counters().clamped_targets, 1);
    model.check();
}

#[test]
fn reserve_floor_stops_inflation_and_backs_off() {
    let total = 64 * MIB;
    let reserve = 16 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = engine_for(&model, reserve);
    model.num_pages = total as u32;
    let step = run_until_settled(&mut engine, &mut model);
    assert_eq!(step, Step::Backoff(200));
    assert_eq!(
        model.free.len() as u64,
        reserve,
        "inflated into the reserve"
    );
    assert_eq!(u64::from(model.actual), total - reserve);
    // Keeps backing off, longer each time, capped.
    let mut delays = vec![];
    for _ in 0..10 {
        delays.push(run_until_settled(&mut engine, &mut model));
    }
    assert_eq!(delays[0], Step::Backoff(400));
    assert_eq!(delays[9], Step::Backoff(10_000));
    // A new, reachable target is honoured at once and resets the back-off.
    model.num_pages = (8 * MIB) as u32;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    assert_eq!(u64::from(model.actual), 8 * MIB);
    assert_eq!(engine.backoff_ms(), 0);
    model.check();
}

#[test]
fn allocation_failure_keeps_what_it_got() {
    let total = 64 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = engine_for(&model, 0);
    model.alloc_left = Some(1000);
    model.num_pages = (32 * MIB) as u32;
    assert_eq!(
        run_until_settled(&mut engine, &mut model),
        Step::Backoff(200)
    );
    assert_eq!(model.actual, 1000);
    assert_eq!(engine.counters().alloc_failures, 1);
    model.alloc_left = None;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    assert_eq!(u64::from(model.actual), 32 * MIB);
    model.check();
}

#[test]
fn queue_error_undoes_the_batch() {
    let total = 16 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = engine_for(&model, 0);
    model.mode = HostMode::Refusing;
    model.num_pages = (4 * MIB) as u32;
    assert_eq!(
        run_until_settled(&mut engine, &mut model),
        Step::Backoff(200)
    );
    assert_eq!(model.actual, 0);
    assert_eq!(
        model.free.len() as u64,
        total,
        "pages of the failed batch leaked"
    );
    model.mode = HostMode::Prompt;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    assert_eq!(u64::from(model.actual), 4 * MIB);
    model.check();
}

#[test]
fn drain_tells_the_host_and_reports_zero() {
    let total = 64 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = engine_for(&model, 0);
    model.num_pages = (40 * MIB) as u32;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    let mut steps = 0;
    while engine.drain_step(&mut model, &mut buffer) == Step::Progress {
        steps += 1;
    }
    assert_eq!(
        steps,
        (40 * MIB as usize).div_ceil(engine.format().pfns_per_buffer())
    );
    assert_eq!(model.actual, 0);
    assert!(model.host_ballooned.is_empty());
    assert_eq!(model.free.len() as u64, total);
    assert_eq!(engine.counters().inflated, engine.counters().deflated);
}

#[test]
fn legacy_device_gets_native_endian_pfns() {
    let total = 4 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = Engine::new(model.geometry, false, false, 0);
    model.num_pages = 10;
    // The model decodes little-endian; on a little-endian host both agree,
    // so check the raw buffer directly instead.
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    assert_eq!(engine.step(&mut model, &mut buffer), Step::Progress);
    assert_eq!(&buffer[..10], &(1000u32..1010).collect::<Vec<_>>()[..]);
}

/// Compaction moves the ballooned page at `index` through the model's
/// migration core, with the engine as the balloon's callback.
fn migrate_one(engine: &mut Engine, model: &mut Model, index: usize) -> Result<(), HostError> {
    let old = model.isolate(index).expect("a ballooned page");
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    model.migrate_with(old, |model, new| {
        engine.migrate(model, &mut buffer, new, old)
    })
}

#[test]
fn migration_tells_host_new_then_old() {
    let total = 4 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = engine_for(&model, 0);
    model.num_pages = 16;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    migrate_one(&mut engine, &mut model, 0).expect("migration");
    let n = model.buffers.len();
    assert_eq!(model.buffers[n - 2], (QueueRole::Inflate, 1));
    assert_eq!(model.buffers[n - 1], (QueueRole::Deflate, 1));
    assert_eq!(engine.counters().migrated, 1);
    assert_eq!(engine.pages(), 16, "migration keeps the balloon size");
    model.check();
    // A device that refuses the buffer fails the migration: the core keeps
    // the old page and frees the new one, which the host never saw.
    model.mode = HostMode::Refusing;
    assert_eq!(
        migrate_one(&mut engine, &mut model, 0),
        Err(HostError::Queue)
    );
    model.check();
}

#[test]
fn late_migration_inflate_keeps_both_pages_from_the_allocator() {
    // Defect: a migration whose inflate buffer timed out returned an error,
    // so the core freed the new page while the host could still discard it.
    let total = 4 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = engine_for(&model, 0);
    model.num_pages = 16;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    model.mode = HostMode::Slow;
    migrate_one(&mut engine, &mut model, 3).expect("a late host still migrates");
    assert_eq!(engine.late(), Some(Late::MigrationInflate));
    assert_eq!(model.held.len(), 1, "the old page is held");
    model.check();
    // Later migrations wait for the host.
    assert_eq!(
        migrate_one(&mut engine, &mut model, 0),
        Err(HostError::Timeout)
    );
    model.putback_isolated();
    // The host comes back: the old page's deflate follows, then it is freed.
    model.mode = HostMode::Prompt;
    model.deliver_late();
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    assert!(model.held.is_empty(), "the old page went back to the guest");
    assert_eq!(engine.counters().migrated, 1);
    assert_eq!(engine.counters().late_buffers, 1);
    assert_eq!(model.host_ballooned.len(), 16);
    model.check();
}

#[test]
fn late_migration_deflate_holds_the_old_page_until_the_host_answers() {
    let total = 4 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = engine_for(&model, 0);
    model.num_pages = 16;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    // Prompt for the inflate, then slow for the deflate.
    model.mode = HostMode::Slow;
    model.prompt_for = Some(1);
    let old = model.isolate(0).expect("a ballooned page");
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    model
        .migrate_with(old, |model, new| {
            engine.migrate(model, &mut buffer, new, old)
        })
        .expect("migration");
    assert_eq!(engine.late(), Some(Late::MigrationDeflate));
    assert_eq!(model.held, vec![old]);
    model.check();
    // Removed while the host sits on it: reset, and everything comes back.
    model.reset();
    assert!(engine.forget_all(&mut model));
    assert_eq!(model.free.len() as u64, total);
    model.check();
}

#[test]
fn slow_host_is_recovered_from_and_the_step_finished() {
    // Defect: one missed deadline disabled the balloon until reload.
    let total = 64 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = engine_for(&model, 0);
    model.num_pages = (8 * MIB) as u32;
    model.mode = HostMode::Slow;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Stalled);
    assert!(matches!(engine.late(), Some(Late::Inflate(_))));
    model.check();
    // Still late: nothing moves, and OOM and migration wait.
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    assert_eq!(engine.step(&mut model, &mut buffer), Step::Stalled);
    assert_eq!(engine.oom_deflate(&mut model, &mut buffer, 256), 0);
    model.mode = HostMode::Prompt;
    model.deliver_late();
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    assert_eq!(u64::from(model.actual), 8 * MIB);
    assert!(!engine.is_stalled());
    // And deflate-on-OOM and migration work again.
    assert_eq!(engine.oom_deflate(&mut model, &mut buffer, 256), 256);
    migrate_one(&mut engine, &mut model, 5).expect("migration after recovery");
    // A late deflate is finished the same way.
    model.num_pages = 0;
    model.mode = HostMode::Slow;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Stalled);
    model.check();
    model.mode = HostMode::Prompt;
    model.deliver_late();
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    assert_eq!(model.actual, 0);
    assert_eq!(model.free.len() as u64, total);
    model.check();
}

/// Drains as remove does: steps until done or stalled, then (if stalled)
/// resets the device and forgets the balloon. Panics if it does not end.
fn remove(engine: &mut Engine, model: &mut Model) {
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    for _ in 0..100_000 {
        match engine.drain_step(model, &mut buffer) {
            Step::Progress | Step::Backoff(_) => continue,
            Step::Reached | Step::Stalled => break,
        }
    }
    model.reset();
    for _ in 0..1000 {
        if engine.forget_all(model) {
            assert_eq!(engine.pages(), 0);
            let counters = engine.counters();
            assert_eq!(
                counters.inflated, counters.deflated,
                "the balloon count drifted from the pages"
            );
            assert_eq!(model.free.len() as u64, model.total(), "pages leaked");
            model.check();
            return;
        }
        model.putback_isolated();
    }
    panic!("teardown did not end");
}

#[test]
fn remove_after_a_late_deflate_ends_and_frees_every_page() {
    // Defect: forget_all freed the staged deflate pages but kept counting
    // them, so teardown retried forever.
    let total = 64 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = engine_for(&model, 0);
    model.num_pages = (40 * MIB) as u32;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    model.num_pages = (20 * MIB) as u32;
    model.mode = HostMode::Dead;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Stalled);
    assert!(matches!(engine.late(), Some(Late::Deflate(_))));
    remove(&mut engine, &mut model);
}

#[test]
fn remove_after_a_late_inflate_or_oom_deflate_ends() {
    let total = 64 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = engine_for(&model, 0);
    model.num_pages = (8 * MIB) as u32;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    model.num_pages = (16 * MIB) as u32;
    model.mode = HostMode::Dead;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Stalled);
    assert!(
        !model.staged_inflate.is_empty(),
        "the host may still read them"
    );
    remove(&mut engine, &mut model);

    let mut model = Model::new(12, total);
    let mut engine = engine_for(&model, 0);
    model.num_pages = (8 * MIB) as u32;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    model.mode = HostMode::Dead;
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    assert_eq!(engine.oom_deflate(&mut model, &mut buffer, 256), 0);
    remove(&mut engine, &mut model);
}

#[test]
fn broken_device_teardown_ends_and_frees_every_page() {
    // Defect: a surprise-removed device refused every buffer, and teardown
    // backed off and retried forever.
    let total = 64 * MIB;
    for mode in [HostMode::Broken, HostMode::Refusing] {
        let mut model = Model::new(12, total);
        let mut engine = engine_for(&model, 0);
        model.num_pages = (24 * MIB) as u32;
        assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
        model.mode = mode;
        let mut buffer = vec![0u32; PFNS_PER_BUFFER];
        let mut steps = 0;
        let end = loop {
            steps += 1;
            match engine.drain_step(&mut model, &mut buffer) {
                Step::Backoff(_) if steps < 100 => continue,
                other => break other,
            }
        };
        assert_eq!(end, Step::Stalled, "{mode:?}: drain gave up");
        assert!(
            steps <= DRAIN_QUEUE_ATTEMPTS as usize,
            "{mode:?}: {steps} steps"
        );
        model.check();
        remove(&mut engine, &mut model);
    }
}

#[test]
fn broken_device_stops_updates_without_losing_pages() {
    let total = 64 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = engine_for(&model, 0);
    model.num_pages = (8 * MIB) as u32;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    model.mode = HostMode::Broken;
    model.num_pages = (16 * MIB) as u32;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Stalled);
    assert!(engine.is_stalled());
    assert_eq!(u64::from(model.actual), 8 * MIB);
    model.check();
    remove(&mut engine, &mut model);
}

#[test]
fn hot_plugged_memory_can_be_ballooned() {
    let total = 16 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = engine_for(&model, 0);
    model.num_pages = (24 * MIB) as u32;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    assert_eq!(u64::from(model.actual), 16 * MIB, "clamped to RAM");
    model.hotplug(16 * MIB);
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    assert_eq!(u64::from(model.actual), 24 * MIB);
    model.check();
    // The same holds when ballooned pages leave the managed count.
    let mut model = Model::new(12, total);
    let mut engine = Engine::new(model.geometry, true, true, 0);
    model.num_pages = (12 * MIB) as u32;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    assert_eq!(u64::from(model.actual), 12 * MIB);
}

#[test]
fn pages_isolated_for_migration_delay_the_drain() {
    let total = 4 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = engine_for(&model, 0);
    model.num_pages = 8;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    // All eight pages are isolated by compaction at this moment.
    let isolated = std::mem::take(&mut model.balloon);
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    assert_eq!(
        engine.drain_step(&mut model, &mut buffer),
        Step::Backoff(10)
    );
    assert_eq!(engine.pages(), 8, "count kept while pages are isolated");
    model.balloon = isolated;
    assert_eq!(engine.drain_step(&mut model, &mut buffer), Step::Progress);
    assert_eq!(engine.drain_step(&mut model, &mut buffer), Step::Reached);
    assert_eq!(model.actual, 0);
}

#[test]
fn oom_deflate_gives_pages_back_and_holds_until_a_new_target() {
    let total = 64 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = engine_for(&model, 0);
    model.num_pages = (32 * MIB) as u32;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    let freed = engine.oom_deflate(&mut model, &mut buffer, 256);
    assert_eq!(freed, 256);
    assert_eq!(u64::from(model.actual), 32 * MIB - 256);
    assert_eq!(model.buffers.last(), Some(&(QueueRole::Deflate, 256)));
    // The same target does not re-inflate...
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    assert_eq!(u64::from(model.actual), 32 * MIB - 256);
    // ...a new one does.
    model.num_pages = (40 * MIB) as u32;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    assert_eq!(u64::from(model.actual), 40 * MIB);
    assert_eq!(engine.counters().oom_deflated, 256);
    // An empty balloon has nothing to give.
    model.num_pages = 0;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    assert_eq!(engine.oom_deflate(&mut model, &mut buffer, 256), 0);
    model.check();
}

thread_local! {
    static OUT_OF_PUFF_LINES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    static CLAMP_LINES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts, per test thread, the "out of puff" lines the engine logs.
struct CountingLogger;

impl log::Log for CountingLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if record.args().to_string().contains("out of puff") {
            OUT_OF_PUFF_LINES.with(|lines| lines.set(lines.get() + 1));
        }
        if record
            .args()
            .to_string()
            .contains("more than the guest's RAM")
        {
            CLAMP_LINES.with(|lines| lines.set(lines.get() + 1));
        }
    }
    fn flush(&self) {}
}

#[test]
fn allocation_failures_between_successes_log_rarely() {
    static LOGGER: CountingLogger = CountingLogger;
    // Another test may have installed it first; either way it counts.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    let total = 64 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = engine_for(&model, 0);
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    // Every other batch comes up short (as fail_page_alloc makes them),
    // with successful batches in between.
    for round in 0..1000u64 {
        model.num_pages = ((round % 2) * 32 * MIB) as u32 + 1024;
        model.alloc_left = Some(if round % 3 == 0 { 10 } else { u64::MAX });
        for _ in 0..4 {
            engine.step(&mut model, &mut buffer);
        }
    }
    let failures = engine.counters().alloc_failures;
    let lines = OUT_OF_PUFF_LINES.with(|lines| lines.get());
    assert!(failures > 100, "the pattern did not fail often: {failures}");
    assert!(
        lines <= 64 - failures.leading_zeros() as usize,
        "{lines} lines for {failures} failures"
    );
    model.check();
}

/// A 64 MiB guest whose balloon has reached `pages` balloon pages.
fn settled_at(pages: u64) -> (Model, Engine) {
    let mut model = Model::new(12, 64 * MIB);
    let mut engine = engine_for(&model, 0);
    model.num_pages = pages as u32;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    (model, engine)
}

#[test]
fn a_target_set_during_an_oom_deflate_is_followed() {
    // Defect: the target was read after the deflate, so a new one the host
    // set meanwhile was taken for the one the OOM deflate went below.
    let (mut model, mut engine) = settled_at(32 * MIB);
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    model.target_while_told = Some((40 * MIB) as u32);
    assert_eq!(engine.oom_deflate(&mut model, &mut buffer, 256), 256);
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    assert_eq!(u64::from(model.actual), 40 * MIB);
    model.check();
}

#[test]
fn an_oom_deflate_gives_back_what_it_is_asked_in_every_format() {
    // Defect: under compat (256 PFNs a buffer) an OOM event gave back one
    // buffer, 1 MiB, not the 16 MiB asked.
    for format in [BufferFormat::Compat, BufferFormat::Full] {
        let total = 64 * MIB;
        let mut model = Model::new(12, total);
        let mut engine = engine_for(&model, 0);
        engine.set_format(format).expect("empty balloon");
        model.num_pages = (32 * MIB) as u32;
        assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
        let mut buffer = vec![0u32; PFNS_PER_BUFFER];
        let asked = PFNS_PER_BUFFER as u64;
        assert_eq!(
            engine.oom_deflate(&mut model, &mut buffer, asked),
            asked,
            "{format:?}"
        );
        assert_eq!(u64::from(model.actual), 32 * MIB - asked);
        model.check();
    }
}

#[test]
fn a_drain_after_allocation_back_offs_still_retries_a_refused_buffer() {
    // Defect: the drain gave up after its first refused buffer when
    // allocations had backed off before, counting those as refusals.
    let (mut model, mut engine) = settled_at(8 * MIB);
    model.alloc_left = Some(0);
    model.num_pages = (16 * MIB) as u32;
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    for _ in 0..DRAIN_QUEUE_ATTEMPTS + 2 {
        assert!(matches!(
            engine.step(&mut model, &mut buffer),
            Step::Backoff(_)
        ));
    }
    assert!(engine.counters().alloc_failures > u64::from(DRAIN_QUEUE_ATTEMPTS));
    model.mode = HostMode::Refusing;
    assert!(matches!(
        engine.drain_step(&mut model, &mut buffer),
        Step::Backoff(_)
    ));
    model.mode = HostMode::Prompt;
    let mut end = Step::Progress;
    for _ in 0..100 {
        end = engine.drain_step(&mut model, &mut buffer);
        if matches!(end, Step::Reached | Step::Stalled) {
            break;
        }
    }
    assert_eq!(end, Step::Reached, "the host was told of every page");
    assert_eq!(model.actual, 0);
    model.check();
}

#[test]
fn the_step_after_a_late_buffer_allocates_for_itself() {
    // Defect: while a buffer was late, `pages_to_allocate` said 0, so the
    // step that finished it had nothing allocated and counted a failure.
    let total = 64 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = engine_for(&model, 0);
    model.num_pages = (8 * MIB) as u32;
    model.mode = HostMode::Slow;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Stalled);
    assert_eq!(engine.pages_to_allocate(&mut model), 0, "stalled");
    model.mode = HostMode::Prompt;
    model.deliver_late();
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    engine.resume(&mut model, &mut buffer);
    assert!(engine.late().is_none());
    assert!(engine.pages_to_allocate(&mut model) > 0);
    let failures = engine.counters().alloc_failures;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    assert_eq!(engine.counters().alloc_failures, failures);
    assert_eq!(u64::from(model.actual), 8 * MIB);
    model.check();
}

#[test]
fn nothing_is_sent_to_a_reset_device() {
    // Defect: a migration between the reset and the end of the teardown
    // sent to the reset device and waited for it.
    let (mut model, mut engine) = settled_at(8 * MIB);
    let sent = model.buffers.len();
    engine.device_reset();
    assert!(migrate_one(&mut engine, &mut model, 3).is_err());
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    assert_eq!(engine.oom_deflate(&mut model, &mut buffer, 256), 0);
    assert_eq!(
        model.buffers.len(),
        sent,
        "a buffer went to the reset device"
    );
    remove(&mut engine, &mut model);
}

#[test]
fn a_host_alternating_absurd_and_valid_targets_does_not_flood_the_log() {
    // Defect: every switch to an absurd target logged the clamp line.
    static LOGGER: CountingLogger = CountingLogger;
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    let total = 64 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = engine_for(&model, 0);
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    for round in 0..1000u32 {
        model.num_pages = if round % 2 == 0 { u32::MAX } else { 1024 };
        engine.step(&mut model, &mut buffer);
    }
    let clamped = engine.counters().clamped_targets;
    let lines = CLAMP_LINES.with(|lines| lines.get());
    assert_eq!(clamped, 500);
    assert!(
        lines <= 64 - clamped.leading_zeros() as usize,
        "{lines} lines for {clamped} absurd targets"
    );
    model.check();
}

#[test]
fn an_oom_on_the_way_to_a_new_target_does_not_stop_it() {
    // As the C driver's update work: a target the host set after an OOM
    // deflate is its newest request; an OOM on the way gives pages back
    // but the balloon carries on once the guest has them.
    let (mut model, mut engine) = settled_at(32 * MIB);
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    assert_eq!(engine.oom_deflate(&mut model, &mut buffer, 256), 256);
    // At rest: held below the target.
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    assert_eq!(u64::from(model.actual), 32 * MIB - 256);
    model.num_pages = (48 * MIB) as u32;
    assert_eq!(engine.step(&mut model, &mut buffer), Step::Progress);
    assert_eq!(engine.oom_deflate(&mut model, &mut buffer, 256), 256);
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    assert_eq!(u64::from(model.actual), 48 * MIB);
    assert_eq!(engine.counters().oom_events, 2);
    model.check();
}
