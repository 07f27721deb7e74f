// SPDX-License-Identifier: GPL-2.0

//! Host tests of the inflate/deflate engine against a model of the balloon
//! device and of guest memory that checks every buffer the driver sends.

use std::collections::BTreeSet;

use balloon_logic::engine::{Backend, Engine, HostError, Step};
use balloon_logic::features::QueueRole;
use balloon_logic::pfn::{PageGeometry, PFNS_PER_BUFFER};

/// Guest memory plus the host side of the balloon device.
struct Model {
    geometry: PageGeometry,
    /// Guest pages that are free (guest PFNs).
    free: BTreeSet<u64>,
    /// Pages allocated for an inflate, not yet acknowledged.
    staged_inflate: Vec<u64>,
    /// Pages taken out of the balloon for a deflate, not yet freed.
    staged_deflate: Vec<u64>,
    /// Pages on the guest's balloon list.
    balloon: Vec<u64>,
    /// Balloon PFNs the host believes are ballooned.
    host_ballooned: BTreeSet<u32>,
    num_pages: u32,
    actual: u32,
    actual_writes: Vec<u32>,
    buffers: Vec<(QueueRole, usize)>,
    /// Allocation fails after this many more pages (None: never).
    alloc_left: Option<u64>,
    available_override: Option<u64>,
    host_error: Option<HostError>,
}

impl Model {
    fn new(page_shift: u32, guest_pages: u64) -> Self {
        Self {
            geometry: PageGeometry::new(page_shift).expect("supported page size"),
            free: (1000..1000 + guest_pages).collect(),
            staged_inflate: Vec::new(),
            staged_deflate: Vec::new(),
            balloon: Vec::new(),
            host_ballooned: BTreeSet::new(),
            num_pages: 0,
            actual: 0,
            actual_writes: Vec::new(),
            buffers: Vec::new(),
            alloc_left: None,
            available_override: None,
            host_error: None,
        }
    }

    fn guest_pages_total(&self) -> u64 {
        (self.free.len()
            + self.staged_inflate.len()
            + self.staged_deflate.len()
            + self.balloon.len()) as u64
    }

    fn check_conserved(&self, total: u64) {
        assert_eq!(
            self.guest_pages_total(),
            total,
            "a guest page was lost or duplicated"
        );
        let per = u64::from(self.geometry.balloon_pages_per_page());
        assert_eq!(
            self.host_ballooned.len() as u64,
            (self.balloon.len() + self.staged_deflate.len()) as u64 * per,
            "host's view differs from the guest's balloon list"
        );
    }
}

impl Backend for Model {
    fn read_target(&mut self) -> u32 {
        self.num_pages
    }
    fn write_actual(&mut self, actual: u32) {
        self.actual = actual;
        self.actual_writes.push(actual);
    }
    fn available_pages(&mut self) -> u64 {
        self.available_override.unwrap_or(self.free.len() as u64)
    }
    fn alloc_pages(&mut self, max: u64) -> u64 {
        assert!(
            self.staged_inflate.is_empty(),
            "allocating over a staged batch"
        );
        let mut got = 0;
        while got < max {
            if let Some(left) = self.alloc_left.as_mut() {
                if *left == 0 {
                    break;
                }
                *left -= 1;
            }
            let Some(page) = self.free.pop_first() else {
                break;
            };
            self.staged_inflate.push(page);
            got += 1;
        }
        got
    }
    fn staged_inflate_pfns(&self, f: &mut dyn FnMut(u64)) {
        self.staged_inflate.iter().for_each(|pfn| f(*pfn));
    }
    fn commit_inflate(&mut self) {
        self.balloon.append(&mut self.staged_inflate);
    }
    fn abort_inflate(&mut self) {
        for page in std::mem::take(&mut self.staged_inflate) {
            assert!(self.free.insert(page), "double free of {page}");
        }
    }
    fn dequeue_pages(&mut self, max: u64) -> u64 {
        let mut taken = 0;
        while taken < max {
            let Some(page) = self.balloon.pop() else {
                break;
            };
            self.staged_deflate.push(page);
            taken += 1;
        }
        taken
    }
    fn staged_deflate_pfns(&self, f: &mut dyn FnMut(u64)) {
        self.staged_deflate.iter().for_each(|pfn| f(*pfn));
    }
    fn commit_deflate(&mut self) {
        for page in std::mem::take(&mut self.staged_deflate) {
            let first = self.geometry.balloon_pfn(page).expect("valid pfn");
            for pfn in first..first + self.geometry.balloon_pages_per_page() {
                assert!(
                    !self.host_ballooned.contains(&pfn),
                    "MUST_TELL_HOST: page {page} freed before the host was told"
                );
            }
            assert!(self.free.insert(page), "double free of {page}");
        }
    }
    fn abort_deflate(&mut self) {
        self.balloon.append(&mut self.staged_deflate);
    }
    fn tell_host(&mut self, queue: QueueRole, pfns: &[u32]) -> Result<(), HostError> {
        if let Some(err) = self.host_error {
            return Err(err);
        }
        assert!(!pfns.is_empty(), "empty buffer sent");
        assert!(
            pfns.len() <= PFNS_PER_BUFFER,
            "buffer larger than the array"
        );
        let per = self.geometry.balloon_pages_per_page() as usize;
        assert_eq!(pfns.len() % per, 0, "partial guest page in a buffer");
        for chunk in pfns.chunks(per) {
            let first = u32::from_le(chunk[0]);
            assert_eq!(
                first % per as u32,
                0,
                "balloon PFN not at a guest page start"
            );
            for (i, pfn) in chunk.iter().enumerate() {
                assert_eq!(
                    u32::from_le(*pfn),
                    first + i as u32,
                    "non-contiguous sub-pages"
                );
            }
        }
        let staged: BTreeSet<u64> = match queue {
            QueueRole::Inflate => self.staged_inflate.iter().copied().collect(),
            _ => self.staged_deflate.iter().copied().collect(),
        };
        for pfn in pfns.iter().map(|p| u32::from_le(*p)) {
            let guest = self.geometry.guest_pfn(pfn);
            match queue {
                QueueRole::Inflate => {
                    assert!(staged.contains(&guest), "inflated a page not allocated");
                    assert!(self.host_ballooned.insert(pfn), "pfn {pfn} inflated twice");
                }
                QueueRole::Deflate => {
                    assert!(staged.contains(&guest), "deflated a page not dequeued");
                    assert!(
                        self.host_ballooned.remove(&pfn),
                        "pfn {pfn} deflated but not ballooned"
                    );
                }
                other => panic!("PFNs sent on the {other:?} queue"),
            }
        }
        self.buffers.push((queue, pfns.len()));
        Ok(())
    }
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
    let total = 512 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = Engine::new(model.geometry, true, total, 0);
    for target_mib in [128u64, 256, 64, 0, 300] {
        model.num_pages = (target_mib * MIB) as u32;
        assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
        assert_eq!(u64::from(model.actual), target_mib * MIB);
        assert_eq!(engine.pages(), target_mib * MIB);
        assert_eq!(model.balloon.len() as u64, target_mib * MIB);
        model.check_conserved(total);
    }
    // Batches are full buffers except the last one of a move.
    assert!(model.buffers.iter().any(|(_, len)| *len == PFNS_PER_BUFFER));
    // `actual` is written after every batch, so the host sees progress.
    assert_eq!(model.actual_writes.len(), model.buffers.len());
}

#[test]
fn sixteen_and_sixtyfour_kib_pages_use_whole_guest_pages() {
    for (shift, per) in [(14u32, 4u32), (16, 16)] {
        let guest_pages = 1024;
        let total = guest_pages * u64::from(per);
        let mut model = Model::new(shift, guest_pages);
        let mut engine = Engine::new(model.geometry, true, total, 0);
        // Not a multiple of the guest page: rounds up, never oscillates.
        model.num_pages = 1001;
        assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
        assert_eq!(model.actual, 1001u32.div_ceil(per) * per);
        assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
        model.num_pages = 0;
        assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
        assert_eq!(model.actual, 0);
        model.check_conserved(guest_pages);
    }
}

#[test]
fn target_above_ram_is_clamped() {
    let total = 64 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = Engine::new(model.geometry, true, total, 0);
    model.num_pages = u32::MAX;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    assert_eq!(u64::from(model.actual), total);
    assert_eq!(engine.counters().clamped_targets, 1);
    model.check_conserved(total);
}

#[test]
fn reserve_floor_stops_inflation_and_backs_off() {
    let total = 64 * MIB;
    let reserve = 16 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = Engine::new(model.geometry, true, total, reserve);
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
    model.check_conserved(total);
}

#[test]
fn allocation_failure_keeps_what_it_got() {
    let total = 64 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = Engine::new(model.geometry, true, total, 0);
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
    model.check_conserved(total);
}

#[test]
fn queue_error_undoes_the_batch() {
    let total = 16 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = Engine::new(model.geometry, true, total, 0);
    model.host_error = Some(HostError::Queue);
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
    model.host_error = None;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    assert_eq!(u64::from(model.actual), 4 * MIB);
    model.check_conserved(total);
}

#[test]
fn stalled_host_stops_updates_and_everything_comes_back_after_reset() {
    let total = 64 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = Engine::new(model.geometry, true, total, 0);
    model.num_pages = (8 * MIB) as u32;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    model.host_error = Some(HostError::Timeout);
    model.num_pages = (16 * MIB) as u32;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Stalled);
    assert!(engine.is_stalled());
    // Staged pages stay untouched: the host may still read them.
    assert!(!model.staged_inflate.is_empty());
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    assert_eq!(engine.drain_step(&mut model, &mut buffer), Step::Stalled);
    // The driver resets the device, then forgets the balloon.
    model.host_ballooned.clear();
    assert!(engine.forget_all(&mut model));
    assert_eq!(engine.pages(), 0);
    assert_eq!(model.free.len() as u64, total, "pages leaked after a stall");
}

#[test]
fn drain_tells_the_host_and_reports_zero() {
    let total = 64 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = Engine::new(model.geometry, true, total, 0);
    model.num_pages = (40 * MIB) as u32;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    let mut steps = 0;
    while engine.drain_step(&mut model, &mut buffer) == Step::Progress {
        steps += 1;
    }
    assert_eq!(steps, (40 * MIB as usize).div_ceil(PFNS_PER_BUFFER));
    assert_eq!(model.actual, 0);
    assert!(model.host_ballooned.is_empty());
    assert_eq!(model.free.len() as u64, total);
    assert_eq!(engine.counters().inflated, engine.counters().deflated);
}

#[test]
fn legacy_device_gets_native_endian_pfns() {
    let total = 4 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = Engine::new(model.geometry, false, total, 0);
    model.num_pages = 10;
    // The model decodes little-endian; on a little-endian host both agree,
    // so check the raw buffer directly instead.
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    assert_eq!(engine.step(&mut model, &mut buffer), Step::Progress);
    assert_eq!(&buffer[..10], &(1000u32..1010).collect::<Vec<_>>()[..]);
}

#[test]
fn migration_tells_host_new_then_old() {
    let total = 4 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = Engine::new(model.geometry, true, total, 0);
    model.num_pages = 16;
    assert_eq!(run_until_settled(&mut engine, &mut model), Step::Reached);
    // Compaction swaps ballooned page 1000 for free page 2000; the core
    // moves the pages, the driver only tells the host.
    let old = 1000u64;
    let new = *model.free.last().expect("a free page");
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    model.free.remove(&new);
    model.staged_inflate.push(new);
    model.balloon.retain(|p| *p != old);
    model.staged_deflate.push(old);
    engine
        .migrate(&mut model, &mut buffer, new, old)
        .expect("migration");
    let n = model.buffers.len();
    assert_eq!(model.buffers[n - 2], (QueueRole::Inflate, 1));
    assert_eq!(model.buffers[n - 1], (QueueRole::Deflate, 1));
    assert!(model.host_ballooned.contains(&(new as u32)));
    assert!(!model.host_ballooned.contains(&(old as u32)));
    assert_eq!(engine.counters().migrated, 1);
    assert_eq!(engine.pages(), 16, "migration keeps the balloon size");
    // A stalled host refuses migrations (the core retries later).
    model.host_error = Some(HostError::Timeout);
    assert_eq!(
        engine.migrate(&mut model, &mut buffer, new, old),
        Err(HostError::Timeout)
    );
    assert!(engine.is_stalled());
}

#[test]
fn pages_isolated_for_migration_delay_the_drain() {
    let total = 4 * MIB;
    let mut model = Model::new(12, total);
    let mut engine = Engine::new(model.geometry, true, total, 0);
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
    let mut engine = Engine::new(model.geometry, true, total, 0);
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
    model.check_conserved(total);
}
