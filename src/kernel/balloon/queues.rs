// SPDX-License-Identifier: GPL-2.0

//! The device's queues for the negotiated features: where each role sits,
//! its name, and the buffers it owns.

use balloon_logic::features::{
    self,
    queue_layout,
    Features,
    QueueRole, //
};
use balloon_logic::pfn::PFNS_PER_BUFFER;
use balloon_logic::stats;

use crate::virtio::QueueSpec;

/// The device's queues for the negotiated features: their names, in the
/// order the device numbers them, and where each role sits.
#[derive(Clone, Copy)]
pub(super) struct QueueIndex {
    pub(super) specs: [QueueSpec; features::MAX_QUEUES],
    pub(super) count: usize,
    pub(super) inflate: usize,
    pub(super) deflate: usize,
    pub(super) stats: Option<usize>,
    pub(super) free_page: Option<usize>,
    pub(super) reporting: Option<usize>,
}

impl QueueIndex {
    /// The queues of `features`, the inflate and deflate queues owning
    /// `in_flight` buffers each.
    pub(super) fn new(features: Features, in_flight: usize) -> Self {
        let (layout, count) = queue_layout(features);
        let mut index = Self {
            specs: [queue_spec(QueueRole::Inflate, in_flight); features::MAX_QUEUES],
            count,
            inflate: 0,
            deflate: 1,
            stats: None,
            free_page: None,
            reporting: None,
        };
        for (i, role) in layout.iter().take(count).enumerate() {
            let Some(role) = *role else { continue };
            index.specs[i] = queue_spec(role, in_flight);
            match role {
                QueueRole::Inflate => index.inflate = i,
                QueueRole::Deflate => index.deflate = i,
                QueueRole::Stats => index.stats = Some(i),
                QueueRole::Reporting => index.reporting = Some(i),
                QueueRole::FreePage => index.free_page = Some(i),
            }
        }
        index
    }

    /// The queues to find.
    pub(super) fn specs(&self) -> &[QueueSpec] {
        &self.specs[..self.count]
    }
}

/// Each queue's name and the device-readable buffers it owns, by role.
pub(super) fn queue_spec(role: QueueRole, in_flight: usize) -> QueueSpec {
    let (name, out_buffers, out_buffer_size) = match role {
        // `in_flight` PFN arrays at a time.
        QueueRole::Inflate => (c"inflate", in_flight, PFNS_PER_BUFFER * 4),
        QueueRole::Deflate => (c"deflate", in_flight, PFNS_PER_BUFFER * 4),
        // The host keeps the stats buffer until it wants fresh figures.
        QueueRole::Stats => (c"stats", 1, stats::BUFFER_SIZE),
        // A round's start and stop ids, with room for ids the host has not
        // handed back yet.
        QueueRole::FreePage => (c"free_page_vq", 4, 4),
        // Reports are the page reporting core's scatterlists.
        QueueRole::Reporting => (c"reporting_vq", 0, 0),
    };
    QueueSpec {
        name,
        out_buffers,
        out_buffer_size,
    }
}
