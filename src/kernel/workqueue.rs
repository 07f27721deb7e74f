// SPDX-License-Identifier: GPL-2.0

//! Work items of a pinned owner on the freezable system workqueue.
//!
//! The work items are the kernel's [`DelayedWork`](kernel::workqueue::DelayedWork),
//! named with `kernel::impl_has_delayed_work!` and run through
//! [`WorkItem`]. What 7.3 lacks is here: a pointer for owners that cancel
//! their work before they go instead of being owned by it (`Arc`, `KBox`,
//! `ARef`), bringing a delayed run forward (`mod_delayed_work`) and
//! cancelling (`cancel_delayed_work_sync`).

use core::ops::Deref;
use core::ptr::NonNull;

use kernel::bindings;
use kernel::workqueue::{
    self,
    HasDelayedWork,
    HasWork,
    RawDelayedWorkItem,
    RawWorkItem,
    Work,
    WorkItem,
    WorkItemPointer, //
};

/// An owner of work items that stays in place while they are queued.
///
/// # Safety
///
/// Every `Self` is pinned, and cancels each of its work items
/// ([`WorkOwner::cancel_work_sync`]) before it is dropped.
pub(crate) unsafe trait WorkOwner: Sized + Sync + 'static {
    /// Queues work item `ID` on the freezable system workqueue after
    /// `delay_ms`; does nothing if it is already queued.
    fn queue_work<const ID: u64>(&self, delay_ms: u32)
    where
        Self: WorkItem<ID, Pointer = WorkRef<Self>> + HasDelayedWork<Self, ID>,
    {
        let delay = kernel::time::msecs_to_jiffies(delay_ms);
        workqueue::system_freezable().enqueue_delayed(WorkRef::new(self), delay);
    }

    /// Runs work item `ID` as soon as possible, bringing a delayed run
    /// forward.
    fn run_work_now<const ID: u64>(&self)
    where
        Self: WorkItem<ID, Pointer = WorkRef<Self>> + HasDelayedWork<Self, ID>,
    {
        // SAFETY: the work item was initialised with `WorkRef::run`, and
        // the owner stays in place until it cancels it (trait contract);
        // the freezable system workqueue exists from boot on.
        unsafe {
            bindings::mod_delayed_work_on(
                bindings::wq_misc_consts_WORK_CPU_UNBOUND as i32,
                bindings::system_freezable_wq,
                delayed_work::<Self, ID>(self),
                0,
            )
        };
    }

    /// Cancels work item `ID` and waits for a running instance, including
    /// one that queues itself again.
    fn cancel_work_sync<const ID: u64>(&self)
    where
        Self: HasDelayedWork<Self, ID>,
    {
        // SAFETY: the work item is initialised.
        unsafe { bindings::cancel_delayed_work_sync(delayed_work::<Self, ID>(self)) };
    }
}

/// The `delayed_work` of work item `ID` of `owner`.
fn delayed_work<T: HasDelayedWork<T, ID>, const ID: u64>(owner: &T) -> *mut bindings::delayed_work {
    let owner = core::ptr::from_ref(owner).cast_mut();
    // SAFETY: `owner` points to a live `T`, so `raw_get_work` returns its
    // `Work` field, which is the `work` of a `delayed_work`
    // (`HasDelayedWork` contract).
    unsafe {
        let work = Work::raw_get(T::raw_get_work(owner));
        kernel::container_of!(work, bindings::delayed_work, work)
    }
}

/// The pointer a queued run of a [`WorkOwner`]'s work item holds: it owns
/// nothing, the owner's contract keeps the owner in place.
///
/// # Invariants
///
/// Points to a live, pinned `T`.
pub(crate) struct WorkRef<T>(NonNull<T>);

// SAFETY: it only gives out `&T`, and `T` is `Sync`.
unsafe impl<T: Sync> Send for WorkRef<T> {}

impl<T: WorkOwner> WorkRef<T> {
    fn new(owner: &T) -> Self {
        // INVARIANT: every `T` is pinned (`WorkOwner` contract).
        Self(NonNull::from(owner))
    }
}

impl<T> Deref for WorkRef<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the owner is live (type invariant).
        unsafe { self.0.as_ref() }
    }
}

// SAFETY: `__enqueue` below queues the `work_struct` of the owner's
// `Work<T, ID>` field, which `DelayedWork::new` initialised with
// `T::Pointer::run`, this `run`.
unsafe impl<T, const ID: u64> WorkItemPointer<ID> for WorkRef<T>
where
    T: WorkOwner + WorkItem<ID, Pointer = Self> + HasWork<T, ID>,
{
    unsafe extern "C" fn run(ptr: *mut bindings::work_struct) {
        // SAFETY: `ptr` is the work of a `Work<T, ID>` field (`__enqueue`)
        // of a live owner: it cancels its work before it goes.
        let owner = unsafe { T::work_container_of(ptr.cast::<Work<T, ID>>()) };
        // SAFETY: `work_container_of` returns a valid, non-null pointer.
        // INVARIANT: the owner is live and pinned (`WorkOwner` contract).
        T::run(WorkRef(unsafe { NonNull::new_unchecked(owner) }))
    }
}

// SAFETY: the pointer given to `queue_work_on` is the work of a live,
// pinned owner, which stays valid until the run: the owner cancels its work
// before it goes (`WorkOwner` contract).
unsafe impl<T, const ID: u64> RawWorkItem<ID> for WorkRef<T>
where
    T: WorkOwner + WorkItem<ID, Pointer = Self> + HasWork<T, ID>,
{
    /// Whether the work was queued (false: it already was).
    type EnqueueOutput = bool;

    unsafe fn __enqueue<F>(self, queue_work_on: F) -> bool
    where
        F: FnOnce(*mut bindings::work_struct) -> bool,
    {
        // SAFETY: `self` points to a live `T` (type invariant).
        queue_work_on(unsafe { Work::raw_get(T::raw_get_work(self.0.as_ptr())) })
    }
}

// SAFETY: the work is the `work` of a `delayed_work`, under the same rules
// (`HasDelayedWork` contract).
unsafe impl<T, const ID: u64> RawDelayedWorkItem<ID> for WorkRef<T> where
    T: WorkOwner + WorkItem<ID, Pointer = Self> + HasDelayedWork<T, ID>
{
}
