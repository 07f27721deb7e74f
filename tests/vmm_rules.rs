// SPDX-License-Identifier: GPL-2.0

//! The engine against hosts that read inflate and deflate buffers by the
//! rules of QEMU, Firecracker, cloud-hypervisor and crosvm (the device
//! model's VMM profiles), in each buffer format: no host stalls the
//! balloon or leaves a ballooned page untold in the default format, and
//! 2 MiB blocks free QEMU's host huge pages in the full one.

mod model;

use balloon_logic::engine::{Engine, Late, Step};
use balloon_logic::format::{
    pick_format, BufferFormat, FormatChoice, Transport, UnknownFormat, COMPAT_PFNS_PER_BUFFER,
    PFNS_PER_BLOCK,
};
use balloon_logic::pfn::PFNS_PER_BUFFER;
use model::{HostMode, Model, Vmm};

const MIB: u64 = 256; // balloon pages per MiB
const GUEST: u64 = 64 * MIB;
const VMMS: [Vmm; 5] = [
    Vmm::Reference,
    Vmm::Qemu,
    Vmm::Firecracker,
    Vmm::CloudHypervisor,
    Vmm::Crosvm,
];

fn engine_in(model: &Model, format: BufferFormat) -> Engine {
    let mut engine = Engine::new(model.geometry, true, false, 0);
    engine.set_format(format).expect("empty balloon");
    engine
}

fn settle(engine: &mut Engine, model: &mut Model) -> Step {
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    for _ in 0..10_000 {
        let step = engine.step(model, &mut buffer);
        model.check();
        if step != Step::Progress {
            return step;
        }
    }
    panic!("engine did not settle");
}

/// Moves the balloon to `pages` and checks that it got there exactly.
fn reach(engine: &mut Engine, model: &mut Model, pages: u64) {
    model.num_pages = pages as u32;
    assert_eq!(settle(engine, model), Step::Reached, "{:?}", model.vmm);
    assert_eq!(u64::from(model.actual), pages, "{:?}", model.vmm);
    assert_eq!(engine.pages(), pages);
    let per = u64::from(model.geometry.balloon_pages_per_page());
    assert_eq!(model.balloon_pages() * per, pages);
}

/// Drain, reset, forget: every page is the guest's again.
fn remove(engine: &mut Engine, model: &mut Model) {
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    for _ in 0..10_000 {
        match engine.drain_step(model, &mut buffer) {
            Step::Progress | Step::Backoff(_) => model.check(),
            Step::Reached | Step::Stalled => break,
        }
    }
    model.reset();
    assert!(engine.forget_all(model));
    model.check();
    assert_eq!(engine.pages(), 0);
    assert_eq!(engine.blocks(), 0);
    assert_eq!(
        model.free.len() + model.pinned.len(),
        model.total() as usize
    );
}

#[test]
fn no_vmm_stalls_or_misses_a_page_in_the_default_format() {
    for vmm in VMMS {
        let mut model = Model::for_vmm(vmm, 12, GUEST);
        let mut engine = Engine::new(model.geometry, true, false, 0);
        for target in [40 * MIB, 10 * MIB, 60 * MIB + 3, 0, 33 * MIB] {
            reach(&mut engine, &mut model, target);
        }
        assert!(model.skipped.is_empty(), "{vmm:?} skipped buffers");
        assert!(
            model
                .buffers
                .iter()
                .all(|(_, len)| *len <= COMPAT_PFNS_PER_BUFFER),
            "{vmm:?}: a buffer over 256 PFNs"
        );
        assert_eq!(engine.blocks(), 0, "Compat inflates single pages only");
        remove(&mut engine, &mut model);
    }
}

#[test]
fn full_format_on_qemu_frees_a_host_huge_page_per_block() {
    for vmm in [Vmm::Qemu, Vmm::Crosvm] {
        let mut model = Model::for_vmm(vmm, 12, GUEST);
        let mut engine = engine_in(&model, BufferFormat::Full);
        reach(&mut engine, &mut model, 32 * MIB);
        assert_eq!(engine.blocks(), 16, "{vmm:?}: 32 MiB in 2 MiB blocks");
        assert_eq!(engine.counters().blocks_inflated, 16);
        assert_eq!(
            model.huge_frees, 16,
            "{vmm:?}: one host huge page per block"
        );
        assert_eq!(model.huge_freed.len(), 16);
        // A stray 4 KiB tail goes in as single pages.
        reach(&mut engine, &mut model, 32 * MIB + 100);
        assert_eq!(engine.blocks(), 16);
        // Deflating gives single pages back first, then whole blocks.
        reach(&mut engine, &mut model, 31 * MIB);
        assert_eq!(engine.blocks(), 15);
        assert_eq!(model.balloon.len(), (31 * MIB - 15 * 512) as usize);
        reach(&mut engine, &mut model, 0);
        assert_eq!(engine.blocks(), 0);
        assert!(model.huge_freed.is_empty(), "deflate refaults host pages");
        let counters = engine.counters();
        assert_eq!(counters.inflated, counters.deflated);
        assert_eq!(counters.blocks_inflated, counters.blocks_deflated);
        remove(&mut engine, &mut model);
    }
}

#[test]
fn compat_buffers_never_free_a_qemu_host_huge_page() {
    // 256 PFNs per element never hold the 512 PFNs of one host page: the
    // C driver's behaviour, and why blocks need the full format.
    let mut model = Model::for_vmm(Vmm::Qemu, 12, GUEST);
    let mut engine = Engine::new(model.geometry, true, false, 0);
    reach(&mut engine, &mut model, 32 * MIB);
    assert_eq!(model.huge_frees, 0);
}

#[test]
fn blocks_work_with_sixteen_and_sixtyfour_kib_pages() {
    for (shift, per_block) in [(14u32, 128u64), (16, 32)] {
        let mut model = Model::for_vmm(Vmm::Qemu, shift, GUEST >> (shift - 12));
        let mut engine = engine_in(&model, BufferFormat::Full);
        assert_eq!(engine.guest_pages_per_block(), per_block);
        reach(&mut engine, &mut model, 16 * MIB);
        assert_eq!(engine.blocks(), 8);
        assert_eq!(model.huge_frees, 8);
        reach(&mut engine, &mut model, 3 * MIB);
        remove(&mut engine, &mut model);
    }
}

#[test]
fn without_a_free_block_inflation_falls_back_to_single_pages() {
    let mut model = Model::for_vmm(Vmm::Qemu, 12, GUEST);
    model.fragment();
    let mut engine = engine_in(&model, BufferFormat::Full);
    reach(&mut engine, &mut model, 32 * MIB);
    assert_eq!(engine.blocks(), 0);
    assert!(engine.counters().block_fallbacks > 0);
    assert_eq!(
        engine.counters().alloc_failures,
        0,
        "a fallback is no failure"
    );
    assert_eq!(model.huge_frees, 0);
    remove(&mut engine, &mut model);

    // Some blocks, then single pages once no block comes.
    let mut model = Model::for_vmm(Vmm::Qemu, 12, GUEST);
    model.block_alloc_left = Some(3);
    let mut engine = engine_in(&model, BufferFormat::Full);
    reach(&mut engine, &mut model, 32 * MIB);
    assert_eq!(engine.blocks(), 3);
    // Single pages of a fresh guest come in address order, so QEMU frees
    // some host pages by luck as well.
    assert!(model.huge_frees >= 3);
    remove(&mut engine, &mut model);
}

#[test]
fn blocks_that_come_a_few_at_a_time_are_waited_for_not_replaced_by_single_pages() {
    let mut model = Model::for_vmm(Vmm::Qemu, 12, GUEST);
    model.blocks_per_call = Some(2);
    let mut engine = engine_in(&model, BufferFormat::Full);
    reach(&mut engine, &mut model, 32 * MIB);
    assert_eq!(
        engine.blocks(),
        16,
        "every 2 MiB of the target a whole block"
    );
    assert_eq!(engine.counters().block_fallbacks, 0);
    assert_eq!(
        engine.counters().alloc_failures,
        0,
        "a short step of blocks is no failure"
    );
    assert_eq!(model.huge_frees, 16);
    remove(&mut engine, &mut model);
}

#[test]
fn a_block_goes_back_whole_and_the_target_is_met_with_single_pages() {
    let mut model = Model::for_vmm(Vmm::Qemu, 12, GUEST);
    let mut engine = engine_in(&model, BufferFormat::Full);
    reach(&mut engine, &mut model, 4 * 512);
    assert_eq!(engine.blocks(), 4);
    // 100 pages less: a whole block goes back, 412 single pages come in.
    reach(&mut engine, &mut model, 4 * 512 - 100);
    assert_eq!(engine.blocks(), 3);
    assert_eq!(model.balloon.len(), 412);
    assert_eq!(engine.counters().blocks_deflated, 1);
}

#[test]
fn oom_deflate_gives_back_whole_blocks() {
    let mut model = Model::for_vmm(Vmm::Qemu, 12, GUEST);
    let mut engine = engine_in(&model, BufferFormat::Full);
    reach(&mut engine, &mut model, 4 * 512);
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    let freed = engine.oom_deflate(&mut model, &mut buffer, 100);
    assert_eq!(freed, 512, "the block went back whole");
    assert_eq!(u64::from(model.actual), 3 * 512);
    assert_eq!(engine.blocks(), 3);
    model.check();
    // Held below the target until the host asks anew.
    assert_eq!(settle(&mut engine, &mut model), Step::Reached);
    assert_eq!(engine.pages(), 3 * 512);
    remove(&mut engine, &mut model);
}

#[test]
fn firecracker_never_returning_an_oversize_buffer_is_a_late_buffer() {
    let mut model = Model::for_vmm(Vmm::Firecracker, 12, GUEST);
    let mut engine = engine_in(&model, BufferFormat::Full);
    model.num_pages = (32 * MIB) as u32;
    assert_eq!(settle(&mut engine, &mut model), Step::Stalled);
    let Some(Late::Inflate(sent)) = engine.late() else {
        panic!("expected a late inflate, got {:?}", engine.late());
    };
    assert_eq!(sent, PFNS_PER_BUFFER as u64);
    // The host never saw the pages: none counts, none is free.
    assert_eq!(model.actual, 0);
    assert_eq!(engine.pages(), 0);
    assert!(model.host_ballooned.is_empty());
    assert_eq!(settle(&mut engine, &mut model), Step::Stalled);
    // Removal resets the device and gives every page back.
    remove(&mut engine, &mut model);
    assert_eq!(engine.counters().inflated, 0);
}

#[test]
fn a_late_buffer_with_blocks_is_finished_when_it_comes_back() {
    let mut model = Model::for_vmm(Vmm::Qemu, 12, GUEST);
    let mut engine = engine_in(&model, BufferFormat::Full);
    model.mode = HostMode::Slow;
    model.num_pages = (8 * MIB) as u32;
    assert_eq!(settle(&mut engine, &mut model), Step::Stalled);
    assert_eq!(engine.blocks(), 0);
    model.mode = HostMode::Prompt;
    model.deliver_late();
    reach(&mut engine, &mut model, 8 * MIB);
    assert_eq!(engine.blocks(), 4);
    assert_eq!(model.huge_frees, 4);
    assert_eq!(engine.counters().late_buffers, 1);
    // A late deflate of blocks, then removal before it comes back.
    model.mode = HostMode::Dead;
    model.num_pages = 0;
    assert_eq!(settle(&mut engine, &mut model), Step::Stalled);
    remove(&mut engine, &mut model);
    let counters = engine.counters();
    assert_eq!(counters.blocks_inflated, counters.blocks_deflated);
}

#[test]
fn the_model_catches_a_host_that_skips_a_buffer_it_returns() {
    // cloud-hypervisor returns a descriptor over 256 PFNs unread: the full
    // format would leave ballooned pages the host never saw.
    let mut model = Model::for_vmm(Vmm::CloudHypervisor, 12, GUEST);
    let mut engine = engine_in(&model, BufferFormat::Full);
    model.num_pages = (32 * MIB) as u32;
    let mut buffer = vec![0u32; PFNS_PER_BUFFER];
    assert_eq!(engine.step(&mut model, &mut buffer), Step::Progress);
    assert_eq!(model.skipped, [PFNS_PER_BUFFER]);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        model.check_host_saw_the_balloon()
    }));
    let message = caught.expect_err("the model must catch untold pages");
    let message = message
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(message.starts_with("UNTOLD"), "{message}");
}

#[test]
fn blocks_are_planned_for_allocation_outside_the_lock() {
    let mut model = Model::for_vmm(Vmm::Qemu, 12, GUEST);
    model.num_pages = 4 * 512 + 100;
    let mut engine = engine_in(&model, BufferFormat::Full);
    let pages = engine.pages_to_allocate(&mut model);
    assert_eq!(pages, 4 * 512 + 100);
    assert_eq!(engine.blocks_to_allocate(pages), 4);
    assert_eq!(engine.guest_pages_per_block(), 512);
    let mut compat = Engine::new(model.geometry, true, false, 0);
    let pages = compat.pages_to_allocate(&mut model);
    assert_eq!(pages, COMPAT_PFNS_PER_BUFFER as u64);
    assert_eq!(compat.blocks_to_allocate(pages), 0);
    assert_eq!(compat.guest_pages_per_block(), 0);
}

#[test]
fn the_format_cannot_drop_blocks_the_balloon_holds() {
    let mut model = Model::for_vmm(Vmm::Qemu, 12, GUEST);
    let mut engine = engine_in(&model, BufferFormat::Full);
    reach(&mut engine, &mut model, 2 * 512);
    assert_eq!(
        engine.set_format(BufferFormat::Compat),
        Err(BufferFormat::Full)
    );
    assert_eq!(engine.format(), BufferFormat::Full);
    reach(&mut engine, &mut model, 0);
    assert_eq!(engine.set_format(BufferFormat::Compat), Ok(()));
}

#[test]
fn formats_hold_what_the_hosts_read() {
    assert_eq!(BufferFormat::default(), BufferFormat::Compat);
    assert_eq!(BufferFormat::Compat.pfns_per_buffer(), 256);
    assert!(!BufferFormat::Compat.whole_blocks());
    assert_eq!(BufferFormat::Full.pfns_per_buffer(), PFNS_PER_BUFFER);
    assert!(BufferFormat::Full.whole_blocks());
    assert_eq!(PFNS_PER_BUFFER % PFNS_PER_BLOCK, 0);
}

#[test]
fn auto_picks_full_only_where_every_host_with_that_identity_reads_it_whole() {
    let pci = |subsystem_device| Transport::Pci {
        subsystem_vendor: 0x1af4,
        subsystem_device,
    };
    let auto = |transport| pick_format(FormatChoice::Auto, transport);
    // QEMU: modern-only virtio-pci keeps PCI_SUBDEVICE_ID_QEMU; virtio-mmio
    // says "QEMU".
    assert_eq!(auto(pci(0x1100)), BufferFormat::Full);
    assert_eq!(
        auto(Transport::Mmio {
            vendor: 0x554d_4551
        }),
        BufferFormat::Full
    );
    // Transitional: QEMU or kvmtool, both read one large descriptor whole;
    // crosvm's mmio has no limit.
    assert_eq!(auto(pci(0x0005)), BufferFormat::Full);
    assert_eq!(
        auto(Transport::Mmio {
            vendor: 0x4d56_5243
        }),
        BufferFormat::Full
    );
    // cloud-hypervisor, Firecracker and crosvm (0x1040 + 5) over PCI, and
    // Firecracker's mmio: at most 256 PFNs.
    assert_eq!(auto(pci(0x1045)), BufferFormat::Compat);
    assert_eq!(auto(Transport::Mmio { vendor: 0 }), BufferFormat::Compat);
    assert_eq!(auto(Transport::Other), BufferFormat::Compat);
    assert_eq!(
        auto(Transport::Pci {
            subsystem_vendor: 0x1234,
            subsystem_device: 0x1100
        }),
        BufferFormat::Compat
    );
    // A fixed choice wins.
    for format in [BufferFormat::Compat, BufferFormat::Full] {
        assert_eq!(
            pick_format(FormatChoice::Fixed(format), pci(0x1045)),
            format
        );
    }
}

#[test]
fn the_integer_parameter_maps_to_the_same_choices() {
    assert_eq!(FormatChoice::from_param(0), Ok(FormatChoice::Auto));
    assert_eq!(
        FormatChoice::from_param(1),
        Ok(FormatChoice::Fixed(BufferFormat::Compat))
    );
    assert_eq!(
        FormatChoice::from_param(2),
        Ok(FormatChoice::Fixed(BufferFormat::Full))
    );
    assert_eq!(FormatChoice::from_param(3), Err(UnknownFormat));
    assert_eq!(FormatChoice::from_param(u32::MAX), Err(UnknownFormat));
}

/// Moves the balloon to `pages` with `in_flight` buffers per step; returns
/// how many steps that took.
fn reach_in_flight(engine: &mut Engine, model: &mut Model, pages: u64, in_flight: usize) -> usize {
    let mut buffer = vec![0u32; PFNS_PER_BUFFER * in_flight];
    model.num_pages = pages as u32;
    for steps in 1..10_000 {
        let step = engine.step(model, &mut buffer);
        model.check();
        match step {
            Step::Progress => {}
            Step::Reached => {
                assert_eq!(u64::from(model.actual), pages, "{:?}", model.vmm);
                return steps;
            }
            other => panic!(
                "{:?}: {other:?} with {in_flight} buffers in flight",
                model.vmm
            ),
        }
    }
    panic!("engine did not settle");
}

#[test]
fn several_buffers_in_flight_keep_every_vmms_rules() {
    for (vmm, format) in [
        (Vmm::Qemu, BufferFormat::Full),
        (Vmm::Crosvm, BufferFormat::Full),
        (Vmm::Qemu, BufferFormat::Compat),
        (Vmm::Firecracker, BufferFormat::Compat),
        (Vmm::CloudHypervisor, BufferFormat::Compat),
    ] {
        let mut model = Model::for_vmm(vmm, 12, GUEST);
        let mut engine = engine_in(&model, format);
        engine.set_in_flight(4);
        let per_buffer = format.pfns_per_buffer();
        let steps = reach_in_flight(&mut engine, &mut model, 32 * MIB, 4);
        // Four buffers a step: a quarter of the steps one buffer needs.
        assert_eq!(
            steps,
            (32 * MIB as usize).div_ceil(4 * per_buffer) + 1,
            "{vmm:?} {format:?}"
        );
        assert!(model.skipped.is_empty(), "{vmm:?} skipped buffers");
        assert!(
            model.buffers.iter().all(|(_, len)| *len <= per_buffer),
            "{vmm:?}: a buffer over {per_buffer} PFNs"
        );
        if format == BufferFormat::Full {
            assert_eq!(engine.blocks(), 16, "{vmm:?}");
            assert_eq!(model.huge_frees, 16, "{vmm:?}: a host huge page per block");
        }
        reach_in_flight(&mut engine, &mut model, 5 * MIB + 7, 4);
        reach_in_flight(&mut engine, &mut model, 0, 4);
        remove(&mut engine, &mut model);
    }
}

#[test]
fn in_flight_is_clamped() {
    let model = Model::for_vmm(Vmm::Qemu, 12, GUEST);
    let mut engine = engine_in(&model, BufferFormat::Full);
    assert_eq!(engine.in_flight(), 1);
    engine.set_in_flight(0);
    assert_eq!(engine.in_flight(), 1);
    engine.set_in_flight(1000);
    assert_eq!(engine.in_flight(), balloon_logic::engine::MAX_IN_FLIGHT);
}
