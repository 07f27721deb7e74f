// SPDX-License-Identifier: GPL-2.0

//! Raw bindings to the virtio, balloon and mm headers and to `helpers.c`,
//! generated at build time by the module's own bindgen run (see `Kbuild`),
//! over the kernel crate's own descriptions of the types it has.
//!
//! Only [`crate::virtio`] and [`crate::mm`] use them.

// `unnecessary_transmutes` is newer than rustc 1.85 (Debian's kernel
// compiler): let older compilers skip it without a warning.
#![allow(unknown_lints)]
#![allow(
    dead_code,
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    improper_ctypes,
    unreachable_pub,
    unsafe_op_in_unsafe_fn,
    missing_docs,
    clippy::all,
    clippy::as_underscore,
    clippy::cast_lossless,
    clippy::ptr_as_ptr,
    clippy::ref_as_ptr,
    clippy::undocumented_unsafe_blocks,
    unnecessary_transmutes
)]

use kernel::ffi;

// The C types the kernel crate's bindings describe already (`Kbuild`'s
// `vbrs_kernel_types`): one description of each, so no cast between two.
pub(crate) use kernel::bindings::{
    device,
    list_head,
    module,
    notifier_block,
    page,
    pglist_data,
    scatterlist,
    shrink_control,
    shrinker,
    spinlock,
    sysinfo,
    wait_queue_head, //
};

type __kernel_size_t = usize;
type __kernel_ssize_t = isize;
type __kernel_ptrdiff_t = isize;

include!("bindings_generated.rs");
