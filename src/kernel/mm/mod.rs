// SPDX-License-Identifier: GPL-2.0

//! Safe abstractions over the kernel's memory management for a balloon:
//! pages the driver owns (`page.rs`), a device's balloon of inflated pages
//! and its migration callback (`balloon.rs`), the figures the driver reads
//! (`meminfo.rs`), the OOM notifier (`oom.rs`), free page reporting
//! (`page_reporting.rs`) and a shrinker (`shrinker.rs`). Every `unsafe`
//! block of the module that touches mm lives below this directory.

mod balloon;
mod meminfo;
mod oom;
mod page;
mod page_reporting;
mod registration;
mod shrinker;

pub(crate) use registration::{
    Embedded,
    Embeds,
    RegistrationOwner, //
};

pub(crate) use balloon::{
    BalloonDevInfo,
    MigratingPage,
    MigrationHandler,
    HUGE_BLOCK_ORDER, //
};
pub(crate) use meminfo::*;
pub(crate) use oom::{
    OomHandler,
    OomRegistration, //
};
pub(crate) use page::{
    BulkPages,
    HeldPage,
    Pages,
    PageList, //
};
pub(crate) use page_reporting::{
    ReportedPages,
    ReportingHandler,
    ReportingRegistration, //
};
pub(crate) use shrinker::{
    ShrinkerHandler,
    ShrinkerRegistration, //
};
