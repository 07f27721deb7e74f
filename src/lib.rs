// SPDX-License-Identifier: GPL-2.0

//! Pure logic of the virtio-balloon-rs guest driver.
//!
//! Everything here is `core`-only and free of kernel calls: feature negotiation,
//! the config-space layout, page-size conversion, PFN batching, the buffer
//! format each host reads, the target/actual arithmetic, the reserve floor,
//! the back-off schedule and the inflate/deflate engine that drives a
//! [`engine::Backend`].
//!
//! The same sources are compiled twice: by cargo for the host tests (where a
//! device model plays the backend) and by Kbuild, with the kernel's Rust
//! flags, into `virtio_balloon_rs.ko` (where real pages and virtqueues do).

#![no_std]

pub mod backoff;
pub mod config;
pub mod engine;
pub mod features;
pub mod format;
pub mod hint;
pub mod pfn;
pub mod stats;
pub mod target;
