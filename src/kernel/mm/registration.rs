// SPDX-License-Identifier: GPL-2.0

//! Whether a callback registration with an mm subsystem (the OOM notifier
//! chain, page reporting, a shrinker) is in place.

use kernel::prelude::*;
use kernel::sync::atomic::{
    Atomic,
    Full,
    Release, //
};

const UNREGISTERED: i32 = 0;
const CHANGING: i32 = 1;
const REGISTERED: i32 = 2;

/// The state of one registration: registering and unregistering are
/// idempotent (a compare-and-swap decides who does the work) and never
/// overlap.
pub(super) struct RegistrationState(Atomic<i32>);

impl RegistrationState {
    /// Not registered.
    pub(super) const fn new() -> Self {
        Self(Atomic::new(UNREGISTERED))
    }

    /// Runs `register` if nothing is registered or being changed; `Ok`
    /// without calling it otherwise.
    pub(super) fn register(&self, register: impl FnOnce() -> Result) -> Result {
        if self.0.cmpxchg(UNREGISTERED, CHANGING, Full).is_err() {
            return Ok(());
        }
        let result = register();
        let state = if result.is_ok() {
            REGISTERED
        } else {
            UNREGISTERED
        };
        self.0.store(state, Release);
        result
    }

    /// Runs `unregister` if registered; nothing otherwise.
    pub(super) fn unregister(&self, unregister: impl FnOnce()) {
        if self.0.cmpxchg(REGISTERED, CHANGING, Full).is_ok() {
            unregister();
            self.0.store(UNREGISTERED, Release);
        }
    }
}
