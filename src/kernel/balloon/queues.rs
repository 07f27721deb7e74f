// SPDX-License-Identifier: GPL-2.0

//! The device's queues for the negotiated features: where each role sits,
//! and its name.

use balloon_logic::features::{
    self,
    queue_layout,
    Features,
    QueueRole, //
};

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
    /// The queues of `features`.
    pub(super) fn new(features: Features) -> Self {
        let (layout, count) = queue_layout(features);
        let mut index = Self {
            specs: [queue_spec(QueueRole::Inflate); features::MAX_QUEUES],
            count,
            inflate: 0,
            deflate: 1,
            stats: None,
            free_page: None,
            reporting: None,
        };
        for (i, role) in layout.iter().take(count).enumerate() {
            let Some(role) = *role else { continue };
            index.specs[i] = queue_spec(role);
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

/// Each queue's name, by role (the names QEMU and the C driver use).
pub(super) fn queue_spec(role: QueueRole) -> QueueSpec {
    let name = match role {
        QueueRole::Inflate => c"inflate",
        QueueRole::Deflate => c"deflate",
        QueueRole::Stats => c"stats",
        QueueRole::FreePage => c"free_page_vq",
        QueueRole::Reporting => c"reporting_vq",
    };
    QueueSpec { name }
}
