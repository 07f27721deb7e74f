// SPDX-License-Identifier: GPL-2.0

//! The balloon device: QEMU's semantics (`hw/virtio/virtio-balloon.c`) over
//! vhost-user, with the scripted faults applied as buffers come and go.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::thread;
use std::time::Duration;

use anyhow::Result;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::message::VhostUserVirtioFeatures;
use vhost::vhost_user::Backend;
use vhost_user_backend::VhostUserBackend;
use vhost_user_backend::VringRwLock;
use vhost_user_backend::VringT;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::QueueT;
use vm_memory::Bytes;
use vm_memory::GuestAddress;
use vm_memory::GuestAddressSpace;
use vm_memory::GuestMemoryAtomic;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use crate::backend_channel::BackendChannel;
use crate::faults::Fault;
use crate::faults::FaultKind;
use crate::faults::Role;
use crate::host_memory;

/// `VIRTIO_BALLOON_F_STATS_VQ`.
pub const F_STATS_VQ: u64 = 1;
/// `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`.
pub const F_DEFLATE_ON_OOM: u64 = 2;
/// `VIRTIO_BALLOON_F_FREE_PAGE_HINT`.
pub const F_FREE_PAGE_HINT: u64 = 3;
/// `VIRTIO_BALLOON_F_PAGE_POISON`.
pub const F_PAGE_POISON: u64 = 4;
/// `VIRTIO_BALLOON_F_REPORTING`.
pub const F_REPORTING: u64 = 5;

/// The balloon's config space: num_pages, actual, free_page_hint_cmd_id,
/// poison_val (`struct virtio_balloon_config`).
pub const CONFIG_SIZE: usize = 16;
/// The queues the device has, whatever the guest negotiates.
pub const NUM_QUEUES: usize = 5;
/// `VIRTIO_BALLOON_PFN_SHIFT`.
const PFN_SHIFT: u32 = 12;
/// Firecracker's `MAX_PAGES_IN_DESC`, cloud-hypervisor's
/// `VIRTIO_BALLOON_MAX_PFN_BYTES / 4`.
const MAX_PFNS_IN_DESCRIPTOR: u64 = 256;
/// `VIRTIO_BALLOON_CMD_ID_STOP`.
pub const CMD_ID_STOP: u32 = 0;
/// `VIRTIO_BALLOON_CMD_ID_DONE`.
pub const CMD_ID_DONE: u32 = 1;
/// QEMU's first free page hint command id
/// (`VIRTIO_BALLOON_FREE_PAGE_HINT_CMD_ID_MIN`).
const CMD_ID_MIN: u32 = 0x8000_0000;

/// A buffer the device holds: its head id and the used length to return.
#[derive(Debug, Clone, Copy)]
struct Held {
    head: u16,
    used_len: u32,
}

/// Per-queue counters and state.
#[derive(Debug, Default)]
struct QueueState {
    /// Buffers taken from the available ring.
    seen: u64,
    /// Buffers put in the used ring.
    returned: u64,
    /// Buffers dropped for good (Firecracker rule, bogus id).
    dropped: u64,
    /// Buffers held (stats buffer, `never`), returned by `release`.
    held: Vec<Held>,
    /// Buffers out on a `late` timer.
    late_pending: u64,
    /// The fault in force and how many buffers it still applies to.
    fault: Option<Fault>,
    /// Bumped when the queue is stopped or the device reset: a late return
    /// of an older epoch is thrown away.
    epoch: u64,
}

/// Everything the device knows, behind one lock (taken after a vring's).
#[derive(Default)]
pub struct State {
    /// The features offered (device bits only).
    offered: u64,
    /// The features the guest accepted.
    acked: u64,
    /// Config space fields.
    num_pages: u32,
    actual: u32,
    cmd_id: u32,
    poison_val: u32,
    /// Writes of the config by the guest.
    config_writes: u64,
    queues: BTreeMap<Role, QueueState>,
    /// PFNs in the balloon as the host was told.
    balloon: HashSet<u32>,
    pages_inflated: u64,
    pages_deflated: u64,
    pages_punched: u64,
    punch_errors: u64,
    /// PFNs deflated that the host never had, and inflated twice.
    unknown_deflates: u64,
    double_inflates: u64,
    /// Free page reporting and hinting.
    reported_bytes: u64,
    hinted_bytes: u64,
    hint_cmd_ids_seen: Vec<u32>,
    hint_stops_seen: u64,
    next_cmd_id: u32,
    /// The last stats the guest sent (tag, value) and how many came.
    last_stats: Vec<(u16, u64)>,
    stats_received: u64,
    /// Stats buffers still to return as soon as they come (a storm).
    stats_storm: u64,
    config_changes_sent: u64,
    /// Queues stopped (`GET_VRING_BASE`: the guest reset the device, or
    /// QEMU stopped it) and `RESET_DEVICE` messages.
    vring_stops: u64,
    resets: u64,
    /// QEMU has started the device (features set) and not stopped it.
    started: bool,
    backend_channel: Option<BackendChannel>,
    /// vhost's own handle of the channel: kept, or its socket closes.
    backend: Option<Backend>,
    memory: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    vrings: Vec<VringRwLock>,
}

/// The vhost-user balloon device (cheap to clone: one shared state).
#[derive(Clone)]
pub struct Balloon {
    state: Arc<Mutex<State>>,
}

impl Balloon {
    /// A device offering `features` (balloon feature bits) with `faults`.
    pub fn new(features: u64, faults: &[Fault]) -> Self {
        let mut state = State {
            offered: features,
            next_cmd_id: CMD_ID_MIN,
            ..State::default()
        };
        for role in Role::ALL {
            state.queues.insert(role, QueueState::default());
        }
        for fault in faults {
            state.queue(fault.role).fault = Some(*fault);
        }
        Balloon {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// The locked state.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The queue index the guest uses for each role it negotiated: Linux
    /// skips the queues of features not negotiated (`vp_find_vqs` counts
    /// only named queues).
    fn roles(acked: u64) -> Vec<Role> {
        let mut roles = vec![Role::Inflate, Role::Deflate];
        for (bit, role) in [
            (F_STATS_VQ, Role::Stats),
            (F_FREE_PAGE_HINT, Role::Hint),
            (F_REPORTING, Role::Reporting),
        ] {
            if acked & (1 << bit) != 0 {
                roles.push(role);
            }
        }
        roles
    }

    /// The vring of `role`, if the guest has it and a kick was seen.
    fn vring(&self, role: Role) -> Option<VringRwLock> {
        let state = self.lock();
        let index = Self::roles(state.acked).iter().position(|r| *r == role)?;
        state.vrings.get(index).cloned()
    }

    /// Sets the target (num_pages) and tells the guest.
    pub fn set_target(&self, num_pages: u32) -> Result<()> {
        self.lock().num_pages = num_pages;
        self.config_changed(1)
    }

    /// Sets the free page hint command id and tells the guest.
    pub fn set_cmd_id(&self, cmd_id: u32) -> Result<()> {
        self.lock().cmd_id = cmd_id;
        self.config_changed(1)
    }

    /// Starts a free page hint round: a new command id, as QEMU does.
    pub fn start_hint(&self) -> Result<u32> {
        let id = {
            let mut state = self.lock();
            let id = state.next_cmd_id;
            state.next_cmd_id = state.next_cmd_id.checked_add(1).unwrap_or(CMD_ID_MIN);
            state.cmd_id = id;
            id
        };
        self.config_changed(1)?;
        Ok(id)
    }

    /// Sends `count` config change messages. The state's lock is not held
    /// while writing: QEMU may be waiting for this device's answer to a
    /// GET_CONFIG before it reads the channel again.
    ///
    /// Refused while the device is not started: QEMU 11.1's
    /// vhost-user-base then has no VirtIODevice behind its vhost device
    /// (`vhost_dev.vdev` is set by `vhost_dev_start`) and crashes on the
    /// message (`vub_config_notifier` -> `virtio_notify_config(NULL)`).
    pub fn config_changed(&self, count: u64) -> Result<()> {
        let mut channel = {
            let state = self.lock();
            anyhow::ensure!(
                state.started,
                "the device is not started (no driver, or it was reset): QEMU would crash on a config change"
            );
            state
                .backend_channel
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("no backend channel (BACKEND_REQ not negotiated)"))?
                .try_clone()?
        };
        for _ in 0..count {
            channel.config_changed()?;
            self.lock().config_changes_sent += 1;
        }
        Ok(())
    }

    /// Asks for stats as QEMU does: returns the stats buffer it holds.
    pub fn request_stats(&self) -> Result<u64> {
        self.release(Role::Stats)
    }

    /// Starts a stats request storm: the held buffer and the next `count`
    /// stats buffers are returned as soon as they come.
    pub fn stats_storm(&self, count: u64) -> Result<u64> {
        self.lock().stats_storm = count;
        self.release(Role::Stats)
    }

    /// Returns every buffer held on `role`'s queue; how many.
    pub fn release(&self, role: Role) -> Result<u64> {
        let Some(vring) = self.vring(role) else {
            return Ok(0);
        };
        let held = std::mem::take(&mut self.lock().queue(role).held);
        let mut count = 0;
        for buffer in held {
            // The stats queue's faults apply when its buffer is returned.
            let kind = if role == Role::Stats {
                self.take_fault(role)
            } else {
                None
            };
            self.finish(&vring, role, buffer, kind)?;
            count += 1;
        }
        Ok(count)
    }

    /// Returns `buffer` as the fault `kind` says: late, never (held
    /// again), or at once (twice, bogus id or length, or as it should).
    fn finish(
        &self,
        vring: &VringRwLock,
        role: Role,
        buffer: Held,
        kind: Option<FaultKind>,
    ) -> Result<()> {
        match kind {
            Some(FaultKind::Late(ms)) => self.return_late(vring, role, buffer, ms),
            Some(FaultKind::Never) => self.lock().queue(role).held.push(buffer),
            kind => self.give_back(vring, role, buffer, kind)?,
        }
        Ok(())
    }

    /// Sets (or with `None` clears) the fault of `role`.
    pub fn set_fault(&self, role: Role, fault: Option<Fault>) {
        self.lock().queue(role).fault = fault;
    }

    /// Puts `buffer` in `role`'s used ring and interrupts the guest, with
    /// the fault `kind` (if any) applied to how it is returned.
    fn give_back(
        &self,
        vring: &VringRwLock,
        role: Role,
        buffer: Held,
        kind: Option<FaultKind>,
    ) -> Result<()> {
        let mut guard = vring.get_mut();
        let size = guard.get_queue().size();
        let (head, len, times) = match kind {
            Some(FaultKind::Twice) => (buffer.head, buffer.used_len, 2),
            Some(FaultKind::BogusLen(len)) => (buffer.head, len, 1),
            Some(FaultKind::BogusId) => {
                // An id below the ring size (or virtio-queue refuses it)
                // that is not this buffer's head.
                let bogus = if size > 1 {
                    (buffer.head + 1) % size
                } else {
                    0
                };
                self.lock().queue(role).dropped += 1;
                (bogus, buffer.used_len, 1)
            }
            _ => (buffer.head, buffer.used_len, 1),
        };
        for _ in 0..times {
            guard
                .add_used(head, len)
                .map_err(|e| anyhow::anyhow!("add_used({head}) on {role}: {e:?}"))?;
        }
        drop(guard);
        self.lock().queue(role).returned += times;
        vring.signal_used_queue()?;
        Ok(())
    }

    /// Takes every available buffer of the queue at `index` and handles it.
    fn process_queue(&self, index: usize, vring: &VringRwLock) -> Result<()> {
        let (role, memory) = {
            let state = self.lock();
            let Some(role) = Self::roles(state.acked).get(index).copied() else {
                eprintln!("fault-device: kick on queue {index}, which has no role");
                return Ok(());
            };
            let Some(memory) = state.memory.clone() else {
                return Ok(());
            };
            (role, memory)
        };
        let memory = memory.memory();
        loop {
            let chain = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(memory.clone());
            let Some(chain) = chain else { break };
            let buffer = Held {
                head: chain.head_index(),
                used_len: 0,
            };
            self.lock().queue(role).seen += 1;
            // The stats buffer is held until stats are requested: its
            // fault is taken when it is returned.
            let fault = if role == Role::Stats {
                None
            } else {
                self.take_fault(role)
            };
            if fault == Some(FaultKind::Never) {
                // Neither read nor returned: held until `release` or a reset.
                self.lock().queue(role).held.push(buffer);
                continue;
            }
            let descriptors: Vec<(u64, u32, bool)> = chain
                .map(|d| (d.addr().0, d.len(), d.is_write_only()))
                .collect();
            match self.handle_buffer(role, &memory, &descriptors, fault) {
                Outcome::Return => {
                    let kind = if role == Role::Stats {
                        self.take_fault(role)
                    } else {
                        fault
                    };
                    self.finish(vring, role, buffer, kind)?;
                }
                Outcome::Hold => self.lock().queue(role).held.push(buffer),
                Outcome::Drop => self.lock().queue(role).dropped += 1,
            }
        }
        Ok(())
    }

    /// The fault for the next buffer of `role`, counted down.
    fn take_fault(&self, role: Role) -> Option<FaultKind> {
        let mut state = self.lock();
        let queue = state.queue(role);
        let fault = queue.fault.as_mut()?;
        let kind = fault.kind;
        if let Some(count) = fault.count.as_mut() {
            *count = count.saturating_sub(1);
            if *count == 0 {
                queue.fault = None;
            }
        }
        Some(kind)
    }

    /// Returns `buffer` after `ms` milliseconds, unless the queue was
    /// stopped meanwhile.
    fn return_late(&self, vring: &VringRwLock, role: Role, buffer: Held, ms: u64) {
        let epoch = {
            let mut state = self.lock();
            let queue = state.queue(role);
            queue.late_pending += 1;
            queue.epoch
        };
        let device = self.clone();
        let vring = vring.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(ms));
            // The vring's lock first, as everywhere: a stop cannot slip in
            // between the epoch check and the return.
            let guard = vring.get_mut();
            let current = {
                let mut state = device.lock();
                let queue = state.queue(role);
                queue.late_pending -= 1;
                queue.epoch == epoch
            };
            drop(guard);
            if current {
                if let Err(e) = device.give_back(&vring, role, buffer, None) {
                    eprintln!("fault-device: late return on {role}: {e:#}");
                }
            }
        });
    }

    /// Does what QEMU does with one buffer of `role`.
    fn handle_buffer(
        &self,
        role: Role,
        memory: &GuestMemoryMmap,
        descriptors: &[(u64, u32, bool)],
        fault: Option<FaultKind>,
    ) -> Outcome {
        match role {
            Role::Inflate | Role::Deflate => {
                let mut pfns = Vec::new();
                for (i, &(address, len, write_only)) in descriptors.iter().enumerate() {
                    if write_only {
                        continue;
                    }
                    let too_long = u64::from(len) / 4 > MAX_PFNS_IN_DESCRIPTOR;
                    match fault {
                        Some(FaultKind::Firecracker) if i > 0 => break,
                        Some(FaultKind::Firecracker) if too_long => return Outcome::Drop,
                        Some(FaultKind::CloudHypervisor) if too_long => continue,
                        _ => {}
                    }
                    let mut bytes = vec![0u8; len as usize];
                    if let Err(e) = memory.read_slice(&mut bytes, GuestAddress(address)) {
                        eprintln!("fault-device: reading {role} buffer at {address:#x}: {e}");
                        continue;
                    }
                    pfns.extend(
                        bytes
                            .chunks_exact(4)
                            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                    );
                }
                if role == Role::Inflate {
                    self.inflate(memory, &pfns);
                } else {
                    self.deflate(&pfns);
                }
                Outcome::Return
            }
            Role::Stats => {
                let mut stats = Vec::new();
                for &(address, len, _) in descriptors {
                    let mut bytes = vec![0u8; len as usize];
                    if memory.read_slice(&mut bytes, GuestAddress(address)).is_ok() {
                        for entry in bytes.chunks_exact(10) {
                            let tag = u16::from_le_bytes([entry[0], entry[1]]);
                            let mut value = [0u8; 8];
                            value.copy_from_slice(&entry[2..10]);
                            stats.push((tag, u64::from_le_bytes(value)));
                        }
                    }
                }
                let mut state = self.lock();
                state.stats_received += 1;
                state.last_stats = stats;
                if state.stats_storm > 0 {
                    state.stats_storm -= 1;
                    Outcome::Return
                } else {
                    Outcome::Hold
                }
            }
            Role::Hint => {
                let mut state = self.lock();
                for &(address, len, write_only) in descriptors {
                    if write_only {
                        state.hinted_bytes += u64::from(len);
                    } else if len >= 4 {
                        let id = memory.read_obj::<u32>(GuestAddress(address)).unwrap_or(0);
                        if id == CMD_ID_STOP {
                            state.hint_stops_seen += 1;
                        } else {
                            state.hint_cmd_ids_seen.push(u32::from_le(id));
                        }
                    }
                }
                Outcome::Return
            }
            Role::Reporting => {
                for &(address, len, _) in descriptors {
                    let punched = host_memory::punch(memory, address, u64::from(len));
                    let mut state = self.lock();
                    state.reported_bytes += u64::from(len);
                    if let Err(e) = punched {
                        state.punch_errors += 1;
                        eprintln!("fault-device: reported range: {e:#}");
                    }
                }
                Outcome::Return
            }
        }
    }

    /// Inflate: each PFN's page goes back to the host.
    fn inflate(&self, memory: &GuestMemoryMmap, pfns: &[u32]) {
        // Neighbouring PFNs are punched as one range.
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &pfn in pfns {
            let address = u64::from(pfn) << PFN_SHIFT;
            match ranges.last_mut() {
                Some((start, len)) if *start + *len == address => *len += 1 << PFN_SHIFT,
                _ => ranges.push((address, 1 << PFN_SHIFT)),
            }
        }
        let mut errors = 0;
        let mut punched = 0;
        for (start, len) in ranges {
            match host_memory::punch(memory, start, len) {
                Ok(()) => punched += len >> PFN_SHIFT,
                Err(e) => {
                    errors += 1;
                    eprintln!("fault-device: inflate: {e:#}");
                }
            }
        }
        let mut state = self.lock();
        state.pages_inflated += pfns.len() as u64;
        state.pages_punched += punched;
        state.punch_errors += errors;
        for &pfn in pfns {
            if !state.balloon.insert(pfn) {
                state.double_inflates += 1;
            }
        }
    }

    /// Deflate: the host forgets the PFNs (their pages fault back in).
    fn deflate(&self, pfns: &[u32]) {
        let mut state = self.lock();
        state.pages_deflated += pfns.len() as u64;
        for pfn in pfns {
            if !state.balloon.remove(pfn) {
                state.unknown_deflates += 1;
            }
        }
    }

    /// Bytes allocated in guest RAM's files, if the memory table came.
    pub fn ram_allocated(&self) -> Result<u64> {
        let memory = self
            .lock()
            .memory
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no memory table yet"))?;
        let memory = memory.memory();
        host_memory::allocated_bytes(&memory)
    }

    /// Forgets every buffer in flight: the queues were stopped.
    fn forget_buffers(&self, role: Option<Role>) {
        let mut state = self.lock();
        for (r, queue) in state.queues.iter_mut() {
            if role.is_none_or(|role| role == *r) {
                queue.held.clear();
                queue.epoch += 1;
            }
        }
    }
}

/// What becomes of a buffer once handled.
enum Outcome {
    Return,
    Hold,
    Drop,
}

impl State {
    /// `role`'s queue state.
    fn queue(&mut self, role: Role) -> &mut QueueState {
        self.queues.entry(role).or_default()
    }

    /// One line of `key=value` pairs for the control socket's `counters`.
    pub fn counters(&self) -> String {
        let mut line = format!(
            "features={:#x} acked={:#x} num_pages={} actual={} cmd_id={} poison_val={:#x} \
             config_writes={} config_changes_sent={} pages_inflated={} pages_deflated={} \
             pages_punched={} balloon_pages={} punch_errors={} unknown_deflates={} \
             double_inflates={} reported_bytes={} hinted_bytes={} hint_cmd_ids={} \
             hint_stops={} stats_received={} vring_stops={} resets={}",
            self.offered,
            self.acked,
            self.num_pages,
            self.actual,
            self.cmd_id,
            self.poison_val,
            self.config_writes,
            self.config_changes_sent,
            self.pages_inflated,
            self.pages_deflated,
            self.pages_punched,
            self.balloon.len(),
            self.punch_errors,
            self.unknown_deflates,
            self.double_inflates,
            self.reported_bytes,
            self.hinted_bytes,
            self.hint_cmd_ids_seen.len(),
            self.hint_stops_seen,
            self.stats_received,
            self.vring_stops,
            self.resets,
        );
        let roles = Balloon::roles(self.acked);
        for (role, queue) in &self.queues {
            let index = roles
                .iter()
                .position(|r| r == role)
                .map_or(-1, |i| i as i64);
            line += &format!(
                " {role}.index={index} {role}.seen={} {role}.returned={} {role}.dropped={} \
                 {role}.held={} {role}.late={}",
                queue.seen,
                queue.returned,
                queue.dropped,
                queue.held.len(),
                queue.late_pending
            );
        }
        line
    }

    /// The last stats as `tag=value` pairs.
    pub fn stats_line(&self) -> String {
        let mut line = format!("received={}", self.stats_received);
        for (tag, value) in &self.last_stats {
            line += &format!(" {tag}={value}");
        }
        line
    }

    /// The config fields.
    pub fn config_line(&self) -> String {
        format!(
            "num_pages={} actual={} cmd_id={} poison_val={:#x}",
            self.num_pages, self.actual, self.cmd_id, self.poison_val
        )
    }
}

impl VhostUserBackend for Balloon {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        // The split ring's limit; QEMU's vq_size picks the size.
        32768
    }

    fn features(&self) -> u64 {
        self.lock().offered
            | 1 << VIRTIO_F_VERSION_1
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, features: u64) {
        self.forget_buffers(None);
        let mut state = self.lock();
        state.started = true;
        state.acked =
            features & ((1 << 32) - 1) & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        eprintln!(
            "fault-device: features acked {features:#x}, queues {:?}",
            Balloon::roles(state.acked)
        );
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn reset_device(&self) {
        self.forget_buffers(None);
        let mut state = self.lock();
        state.resets += 1;
        state.started = false;
    }

    fn set_event_idx(&self, _enabled: bool) {}

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = self.get_config_locked(&self.lock());
        let start = (offset as usize).min(CONFIG_SIZE);
        let end = (offset as usize + size as usize).min(CONFIG_SIZE);
        let mut bytes = config[start..end].to_vec();
        bytes.resize(size as usize, 0);
        bytes
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // QEMU writes the whole config (its copy, as last read) on every
        // guest write: only the fields the driver owns are taken.
        let mut config = self.get_config_locked(&self.lock());
        let offset = offset as usize;
        for (i, byte) in buf.iter().enumerate() {
            if let Some(slot) = config.get_mut(offset + i) {
                *slot = *byte;
            }
        }
        let mut state = self.lock();
        state.actual = u32::from_le_bytes([config[4], config[5], config[6], config[7]]);
        state.poison_val = u32::from_le_bytes([config[12], config[13], config[14], config[15]]);
        state.config_writes += 1;
        Ok(())
    }

    fn update_memory(&self, memory: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.lock().memory = Some(memory);
        Ok(())
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        let mut state = self.lock();
        match BackendChannel::find() {
            Ok(channel) => state.backend_channel = Some(channel),
            Err(e) => eprintln!("fault-device: backend channel: {e:#}"),
        }
        state.backend = Some(backend);
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        let role = {
            let mut state = self.lock();
            state.vring_stops += 1;
            state.started = false;
            eprintln!("fault-device: queue {queue_index} stopped");
            Balloon::roles(state.acked)
                .get(queue_index as usize)
                .copied()
        };
        if let Some(role) = role {
            self.forget_buffers(Some(role));
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Ok(());
        }
        {
            let mut state = self.lock();
            // The vrings of the current connection (a new one after QEMU
            // came again).
            state.vrings = vrings.to_vec();
        }
        let index = usize::from(device_event);
        let Some(vring) = vrings.get(index) else {
            return Ok(());
        };
        self.process_queue(index, vring).map_err(io::Error::other)
    }
}

impl Balloon {
    /// The config bytes from a locked state.
    fn get_config_locked(&self, state: &State) -> [u8; CONFIG_SIZE] {
        let mut config = [0u8; CONFIG_SIZE];
        config[0..4].copy_from_slice(&state.num_pages.to_le_bytes());
        config[4..8].copy_from_slice(&state.actual.to_le_bytes());
        config[8..12].copy_from_slice(&state.cmd_id.to_le_bytes());
        config[12..16].copy_from_slice(&state.poison_val.to_le_bytes());
        config
    }
}
