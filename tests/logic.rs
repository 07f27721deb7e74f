// SPDX-License-Identifier: GPL-2.0

//! Host tests of the pure pieces: features, page-size conversion, target
//! arithmetic, back-off, and our constants against `virtio-bindings`.

use balloon_logic::backoff::{Backoff, MAX_DELAY_MS};
use balloon_logic::features::{self, queue_layout, Features, QueueRole};
use balloon_logic::format::PFNS_PER_BLOCK;
use balloon_logic::pfn::{PageGeometry, PfnBatch, PfnError, BALLOON_PFN_SHIFT};
use balloon_logic::target::{inflate_budget, reserve_pages, Direction, Target};

#[test]
fn constants_match_virtio_bindings() {
    use virtio_bindings::virtio_config::{VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1};
    use virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;
    assert_eq!(Features::VERSION_1.bits(), 1u64 << VIRTIO_F_VERSION_1);
    assert_eq!(
        Features::ACCESS_PLATFORM.bits(),
        1u64 << VIRTIO_F_ACCESS_PLATFORM
    );
    assert_eq!(features::DEVICE_ID, VIRTIO_ID_BALLOON);
}

#[test]
fn balloon_feature_bits_follow_the_spec() {
    // virtio spec 5.5.3 (no balloon header in virtio-bindings).
    let bits: Vec<u32> = [
        Features::MUST_TELL_HOST,
        Features::STATS_VQ,
        Features::DEFLATE_ON_OOM,
        Features::FREE_PAGE_HINT,
        Features::PAGE_POISON,
        Features::REPORTING,
    ]
    .iter()
    .map(|f| f.bits().trailing_zeros())
    .collect();
    assert_eq!(bits, [0, 1, 2, 3, 4, 5]);
    assert_eq!(BALLOON_PFN_SHIFT, 12);
}

#[test]
fn negotiation_takes_only_what_the_driver_implements() {
    let offered = Features::all();
    let got = Features::negotiate(offered);
    assert_eq!(got, Features::implemented() | Features::VERSION_1);
    // Every balloon feature of the C driver; transport bits other than
    // VERSION_1 are not ours to ask for.
    assert_eq!(Features::implemented().bits(), 0b11_1111);
    assert!(!got.contains(Features::ACCESS_PLATFORM));
    assert_eq!(
        Features::negotiate(Features::VERSION_1 | Features::DEFLATE_ON_OOM),
        Features::VERSION_1 | Features::DEFLATE_ON_OOM
    );
    // The table and `implemented()` say the same thing.
    let table = features::DRIVER_FEATURE_BITS
        .iter()
        .fold(Features::empty(), |acc, bit| {
            acc | Features::from_bits_retain(1 << bit)
        });
    assert_eq!(table, Features::implemented());
    assert!(got.little_endian());
    assert!(!Features::MUST_TELL_HOST.little_endian());
    let names: Vec<_> =
        features::describe(Features::MUST_TELL_HOST | Features::VERSION_1).collect();
    assert_eq!(names, ["MUST_TELL_HOST", "VERSION_1"]);
}

#[test]
fn queue_indices_skip_features_not_negotiated() {
    let (layout, n) = queue_layout(Features::empty());
    assert_eq!(n, 2);
    assert_eq!(
        layout[..2],
        [Some(QueueRole::Inflate), Some(QueueRole::Deflate)]
    );
    let (layout, n) = queue_layout(Features::REPORTING);
    assert_eq!(n, 3);
    assert_eq!(layout[2], Some(QueueRole::Reporting));
    let (layout, n) =
        queue_layout(Features::STATS_VQ | Features::FREE_PAGE_HINT | Features::REPORTING);
    assert_eq!(n, 5);
    assert_eq!(
        layout,
        [
            Some(QueueRole::Inflate),
            Some(QueueRole::Deflate),
            Some(QueueRole::Stats),
            Some(QueueRole::FreePage),
            Some(QueueRole::Reporting)
        ]
    );
}

#[test]
fn page_geometry_for_4k_16k_64k() {
    let g4 = PageGeometry::new(12).unwrap();
    let g16 = PageGeometry::new(14).unwrap();
    let g64 = PageGeometry::new(16).unwrap();
    assert_eq!(g4.balloon_pages_per_page(), 1);
    assert_eq!(g16.balloon_pages_per_page(), 4);
    assert_eq!(g64.balloon_pages_per_page(), 16);
    assert_eq!(g4.balloon_pfn(7), Ok(7));
    assert_eq!(g16.balloon_pfn(7), Ok(28));
    assert_eq!(g64.balloon_pfn(7), Ok(112));
    assert_eq!(g64.guest_pfn(113), 7);
    assert_eq!(g4.align_up(5), 5);
    assert_eq!(g16.align_up(5), 8);
    assert_eq!(g64.align_up(17), 32);
    assert_eq!(g64.align_up(0), 0);
    assert_eq!(
        PageGeometry::new(11),
        Err(PfnError::UnsupportedPageShift(11))
    );
}

#[test]
fn a_block_is_2_mib_of_guest_and_host_at_every_page_size() {
    for (page_shift, order) in [(12, 9), (14, 7), (16, 5)] {
        let geometry = PageGeometry::new(page_shift).unwrap();
        assert_eq!(geometry.block_order(), order, "page shift {page_shift}");
        // What the guest gives: 2 MiB of its own pages ...
        assert_eq!(1u64 << (order + page_shift), 2 << 20);
        // ... and what the host is told: PFNS_PER_BLOCK 4 KiB PFNs, 2 MiB.
        assert_eq!(
            geometry.guest_pages(PFNS_PER_BLOCK as u64)
                * u64::from(geometry.balloon_pages_per_page()),
            PFNS_PER_BLOCK as u64
        );
        assert_eq!(geometry.guest_pages(PFNS_PER_BLOCK as u64), 1 << order);
    }
    // A guest page of 2 MiB or more: a block would be one page, so none.
    assert_eq!(PageGeometry::new(21).unwrap().block_order(), 0);
    assert_eq!(PageGeometry::new(22).unwrap().block_order(), 0);
}

#[test]
fn pfns_beyond_32_bits_are_refused_not_truncated() {
    let g4 = PageGeometry::new(12).unwrap();
    let g64 = PageGeometry::new(16).unwrap();
    assert_eq!(g4.balloon_pfn(u64::from(u32::MAX)), Ok(u32::MAX));
    assert_eq!(g4.balloon_pfn(1 << 32), Err(PfnError::PfnTooLarge(1 << 32)));
    // The last sub-page must fit too.
    assert_eq!(
        g64.balloon_pfn(1 << 28),
        Err(PfnError::PfnTooLarge(1 << 28))
    );
    assert_eq!(g64.balloon_pfn((1 << 28) - 1), Ok(u32::MAX - 15));
    assert_eq!(
        g64.balloon_pfn(u64::MAX),
        Err(PfnError::PfnTooLarge(u64::MAX))
    );
}

#[test]
fn batch_fills_whole_pages_in_device_order() {
    let g16 = PageGeometry::new(14).unwrap();
    let mut slots = [0u32; 10];
    let mut batch = PfnBatch::new(&mut slots, g16, true);
    assert!(batch.push_page(1).is_ok());
    assert!(batch.push_page(3).is_ok());
    assert!(!batch.has_room(), "2 slots left cannot hold a 4-slot page");
    assert_eq!(batch.push_page(5), Err(PfnError::BufferFull));
    assert_eq!(batch.len(), 8);
    assert_eq!(
        batch.as_slice(),
        &[4u32.to_le(), 5, 6, 7, 12, 13, 14, 15].map(u32::to_le)[..]
    );
}

#[test]
fn target_alignment_does_not_wrap_and_clamps() {
    let g64 = PageGeometry::new(16).unwrap();
    let g4 = PageGeometry::new(12).unwrap();
    // In 32 bits, ALIGN(0xffffffff, 16) wraps to 0; here it clamps to RAM.
    let t = Target::from_config(u32::MAX, g64, 1 << 20);
    assert_eq!(
        t,
        Target {
            pages: 1 << 20,
            clamped: true
        }
    );
    let t = Target::from_config(u32::MAX, g64, u64::from(u32::MAX) + 100);
    assert_eq!(t.pages, 1 << 32);
    // The limit itself is whole guest pages.
    assert_eq!(Target::from_config(100, g64, 40).pages, 32);
    assert_eq!(
        Target::from_config(30, g4, 40),
        Target {
            pages: 30,
            clamped: false
        }
    );
    assert_eq!(
        Target {
            pages: 30,
            clamped: false
        }
        .direction(10),
        Direction::Inflate(20)
    );
    assert_eq!(
        Target {
            pages: 3,
            clamped: false
        }
        .direction(10),
        Direction::Deflate(7)
    );
    assert_eq!(
        Target {
            pages: 10,
            clamped: false
        }
        .direction(10),
        Direction::Reached
    );
}

#[test]
fn budget_respects_capacity_and_reserve() {
    assert_eq!(inflate_budget(1000, 4096, 1 << 20, 4096), 1000);
    assert_eq!(inflate_budget(10_000, 4096, 1 << 20, 4096), 4096);
    assert_eq!(inflate_budget(10_000, 4096, 5000, 4096), 904);
    assert_eq!(inflate_budget(10_000, 4096, 100, 4096), 0);
    assert_eq!(reserve_pages(16 * 1024, 4096), 4096);
    assert_eq!(reserve_pages(0, 4096), 0);
    assert_eq!(reserve_pages(u64::MAX, 4096), u64::MAX / 4096 + 1);
    assert_eq!(reserve_pages(64, 65536), 1, "rounds up to a whole page");
}

#[test]
fn backoff_doubles_and_caps() {
    let mut b = Backoff::new();
    assert_eq!(b.delay_ms(), 0);
    let delays: Vec<u32> = (0..8).map(|_| b.fail()).collect();
    assert_eq!(delays, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
    for _ in 0..100 {
        assert!(b.fail() <= MAX_DELAY_MS);
    }
    let mut b = Backoff::new();
    for _ in 0..1000 {
        b.fail();
    }
    b.succeed();
    assert_eq!(b.failures(), 0);
    assert_eq!(b.delay_ms(), 0);
    let mut b = Backoff::new();
    for _ in 0..u32::MAX / 1000 {
        // Saturation check without 4 billion iterations.
        b.fail();
    }
    assert_eq!(b.delay_ms(), MAX_DELAY_MS);
}

#[test]
fn validate_withdraws_what_the_c_driver_withdraws() {
    use features::to_clear;
    let all = Features::all();
    // No poisoning: PAGE_POISON goes, REPORTING stays.
    let clear = to_clear(all, false);
    assert!(clear.contains(Features::PAGE_POISON | Features::ACCESS_PLATFORM));
    assert!(!clear.contains(Features::REPORTING));
    // Poisoning and a device that can be told: both stay.
    let clear = to_clear(all, true);
    assert_eq!(clear, Features::ACCESS_PLATFORM);
    // Poisoning and a device that cannot be told: no free page reporting.
    let clear = to_clear(all - Features::PAGE_POISON, true);
    assert!(clear.contains(Features::REPORTING));
    assert_eq!(features::poison_value(false), 0xaaaa_aaaa);
    assert_eq!(features::poison_value(true), 0);
}

#[test]
fn stats_use_the_c_drivers_order_units_and_layout() {
    use balloon_logic::stats::{Snapshot, Tag, BUFFER_SIZE, RECORD_SIZE};
    let snap = Snapshot {
        vm_events: true,
        swap_in_pages: 1,
        swap_out_pages: 2,
        major_faults: 3,
        minor_faults: 4,
        oom_kills: 5,
        alloc_stalls: 6,
        async_scan_pages: 7,
        direct_scan_pages: 8,
        async_reclaim_pages: 9,
        direct_reclaim_pages: 10,
        hugetlb: Some((11, 12)),
        free_pages: 100,
        total_pages: 200,
        available_pages: 150,
        cache_pages: 50,
    };
    let (records, n) = snap.records(12);
    assert_eq!(n, 16);
    let tags: Vec<u16> = records[..n].iter().map(|(t, _)| *t as u16).collect();
    assert_eq!(tags, [0, 1, 2, 3, 10, 11, 12, 13, 14, 15, 8, 9, 4, 5, 6, 7]);
    assert_eq!(records[0], (Tag::SwapIn, 4096));
    assert_eq!(
        records[2],
        (Tag::MajorFaults, 3),
        "faults are counts, not bytes"
    );
    assert_eq!(records[5], (Tag::AllocStalls, 6));
    assert_eq!(records[12], (Tag::MemFree, 100 * 4096));
    assert_eq!(records[15], (Tag::Caches, 50 * 4096));
    let mut buf = [0u8; BUFFER_SIZE];
    let len = snap.encode(12, true, &mut buf);
    assert_eq!(len, 16 * RECORD_SIZE);
    // Record 12: tag 4 (free memory), 409600 bytes, packed little-endian.
    let rec = &buf[12 * RECORD_SIZE..13 * RECORD_SIZE];
    assert_eq!(&rec[..2], &4u16.to_le_bytes());
    assert_eq!(&rec[2..], &(409_600u64).to_le_bytes());
    // Without hugetlb and without event counters, fewer records.
    let (_, n) = Snapshot {
        hugetlb: None,
        ..snap
    }
    .records(12);
    assert_eq!(n, 14);
    let (records, n) = Snapshot {
        vm_events: false,
        ..snap
    }
    .records(16);
    assert_eq!(n, 4);
    assert_eq!(records[1], (Tag::MemTotal, 200 * 65536), "64 KiB pages");
}

#[test]
fn free_page_hint_command_ids() {
    use balloon_logic::hint::{on_cmd_id, round_continues, HintAction, CMD_ID_DONE, CMD_ID_STOP};
    assert_eq!(on_cmd_id(CMD_ID_DONE, 7), HintAction::ReturnAll);
    assert_eq!(on_cmd_id(CMD_ID_STOP, 7), HintAction::Nothing);
    assert_eq!(
        on_cmd_id(7, 7),
        HintAction::Nothing,
        "a round runs only once per id"
    );
    assert_eq!(on_cmd_id(8, 7), HintAction::Start(8));
    assert_eq!(on_cmd_id(2, CMD_ID_STOP), HintAction::Start(2));
    assert!(round_continues(8, 8));
    assert!(!round_continues(9, 8), "a new id ends the round");
    assert!(!round_continues(CMD_ID_STOP, 8));
    assert!(!round_continues(CMD_ID_DONE, CMD_ID_DONE));
}

/// QEMU's `free_page_hint_cmd_id` config field over one round: the new id
/// while it waits for the guest's start id, 0 from the moment it took it.
#[test]
fn a_hint_round_runs_until_the_host_signals_a_change() {
    use balloon_logic::hint::{
        on_cmd_id, round_continues, HintAction, ReceivedCmdId, CMD_ID_DONE, CMD_ID_STOP,
    };
    let mut config = 5; // S_REQUESTED with id 5
    let mut received = ReceivedCmdId::new();
    let id = received.get(true, || Some(config));
    assert_eq!(on_cmd_id(id, CMD_ID_STOP), HintAction::Start(5));
    // The host takes the start id: its config now reads 0 (S_START).
    config = CMD_ID_STOP;
    for _ in 0..100 {
        // No config interrupt: the field is not read again.
        let now = received.get(false, || Some(config));
        assert!(round_continues(now, 5), "the round goes on while hinting");
    }
    assert!(
        !round_continues(config, 5),
        "a fresh read would have ended the round after the start id"
    );
    // The host stops the round and says so with a config change.
    assert!(!round_continues(received.get(true, || Some(config)), 5));
    // A failed read stops too.
    let mut received = ReceivedCmdId::new();
    assert!(!round_continues(received.get(true, || None), 5));
    config = CMD_ID_DONE;
    assert_eq!(
        on_cmd_id(received.get(true, || Some(config)), 5),
        HintAction::ReturnAll
    );
}
