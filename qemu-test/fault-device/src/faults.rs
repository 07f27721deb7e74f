// SPDX-License-Identifier: GPL-2.0

//! The scripted faults: what the device does wrong with a queue's buffers,
//! and for how many of them.

use std::fmt;
use std::str::FromStr;

use anyhow::anyhow;
use anyhow::bail;
use anyhow::Context;

/// The queues of a balloon device, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Inflate: PFNs the guest gives to the host.
    Inflate,
    /// Deflate: PFNs the guest takes back.
    Deflate,
    /// Memory statistics (`VIRTIO_BALLOON_F_STATS_VQ`).
    Stats,
    /// Free page hints (`VIRTIO_BALLOON_F_FREE_PAGE_HINT`).
    Hint,
    /// Free page reporting (`VIRTIO_BALLOON_F_REPORTING`).
    Reporting,
}

impl Role {
    /// Every role, in the order of the virtio spec's queue list.
    pub const ALL: [Role; 5] = [
        Role::Inflate,
        Role::Deflate,
        Role::Stats,
        Role::Hint,
        Role::Reporting,
    ];

    /// The role's name on the command line and the control socket.
    pub fn name(self) -> &'static str {
        match self {
            Role::Inflate => "inflate",
            Role::Deflate => "deflate",
            Role::Stats => "stats",
            Role::Hint => "hint",
            Role::Reporting => "reporting",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Role::ALL
            .into_iter()
            .find(|role| role.name() == s)
            .ok_or_else(|| {
                anyhow!("unknown queue {s:?} (inflate, deflate, stats, hint, reporting)")
            })
    }
}

/// What the device does wrong with a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Processes the buffer at once but returns it this many ms later.
    Late(u64),
    /// Neither reads nor returns the buffer (until `release` on the
    /// control socket, or a reset).
    Never,
    /// Processes the buffer and returns its head id twice.
    Twice,
    /// Processes the buffer and returns, instead of its head id, one that
    /// is not in flight (the real one is never returned).
    BogusId,
    /// Processes the buffer and returns it with this used length.
    BogusLen(u32),
    /// Firecracker's inflate rule: reads the head descriptor only; one of
    /// more than 256 PFNs is dropped, never returned and never read.
    Firecracker,
    /// cloud-hypervisor's inflate rule: a descriptor of more than 256 PFNs
    /// is skipped unread, and the buffer is returned anyway.
    CloudHypervisor,
}

impl FromStr for FaultKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (name, value) = match s.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (s, None),
        };
        let number = |what: &str| -> anyhow::Result<u64> {
            let value = value.ok_or_else(|| anyhow!("{name} needs ={what}"))?;
            value
                .parse()
                .with_context(|| format!("{name}={value}: not a number"))
        };
        let kind = match name {
            "late" => FaultKind::Late(number("MS")?),
            "never" => FaultKind::Never,
            "twice" => FaultKind::Twice,
            "bogus-id" => FaultKind::BogusId,
            "bogus-len" => FaultKind::BogusLen(
                u32::try_from(number("BYTES")?).context("bogus-len: at most 2^32-1")?,
            ),
            "firecracker" => FaultKind::Firecracker,
            "cloud-hypervisor" => FaultKind::CloudHypervisor,
            _ => bail!("unknown fault {name:?}"),
        };
        if value.is_some() && !matches!(kind, FaultKind::Late(_) | FaultKind::BogusLen(_)) {
            bail!("{name} takes no value");
        }
        Ok(kind)
    }
}

/// A fault on one queue: `QUEUE:KIND[=VALUE][@COUNT]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The queue it applies to.
    pub role: Role,
    /// What goes wrong.
    pub kind: FaultKind,
    /// How many buffers it applies to before the queue behaves again
    /// (`None`: every buffer).
    pub count: Option<u64>,
}

impl FromStr for Fault {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (spec, count) = match s.split_once('@') {
            Some((spec, count)) => (
                spec,
                Some(
                    count
                        .parse()
                        .with_context(|| format!("{s}: @{count} is not a count"))?,
                ),
            ),
            None => (s, None),
        };
        let (role, kind) = spec
            .split_once(':')
            .ok_or_else(|| anyhow!("{s}: expected QUEUE:KIND[=VALUE][@COUNT]"))?;
        let fault = Fault {
            role: role.parse()?,
            kind: kind.parse().with_context(|| format!("fault {s:?}"))?,
            count,
        };
        if matches!(
            fault.kind,
            FaultKind::Firecracker | FaultKind::CloudHypervisor
        ) && fault.role != Role::Inflate
        {
            bail!("{s}: the Firecracker and cloud-hypervisor rules are inflate rules");
        }
        Ok(fault)
    }
}

/// The help text of `--fault`, also the control socket's `help`.
pub const FAULT_HELP: &str = "\
A fault is QUEUE:KIND[=VALUE][@COUNT]: on QUEUE (inflate, deflate, stats,
hint, reporting) the next COUNT buffers (default: every one) get KIND:
  late=MS           processed at once, returned MS milliseconds later
  never             neither read nor returned (a dead queue) until the
                    control command `release QUEUE` or a device reset
  twice             processed, its head id returned twice (used ring)
  bogus-id          processed, an id that is not in flight returned
                    instead of its own (which never comes back)
  bogus-len=BYTES   processed, returned with used length BYTES
  firecracker       inflate only: the head descriptor alone is read; one
                    of more than 256 PFNs is dropped, never returned
  cloud-hypervisor  inflate only: a descriptor of more than 256 PFNs is
                    skipped unread and the buffer returned anyway
The stats queue holds its buffer as QEMU does (returned when stats are
requested): its faults apply when it is returned. Later faults on a queue
replace earlier ones.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_parse() {
        let fault: Fault = "inflate:late=1500@2".parse().unwrap();
        assert_eq!(
            fault,
            Fault {
                role: Role::Inflate,
                kind: FaultKind::Late(1500),
                count: Some(2)
            }
        );
        let fault: Fault = "hint:never".parse().unwrap();
        assert_eq!(
            (fault.role, fault.kind, fault.count),
            (Role::Hint, FaultKind::Never, None)
        );
        let fault: Fault = "stats:bogus-len=7".parse().unwrap();
        assert_eq!(fault.kind, FaultKind::BogusLen(7));
        assert_eq!(
            "inflate:cloud-hypervisor".parse::<Fault>().unwrap().kind,
            FaultKind::CloudHypervisor
        );
    }

    #[test]
    fn bad_fault_specs_are_refused() {
        for spec in [
            "inflate",
            "inflate:late",
            "inflate:late=x",
            "inflate:never=3",
            "inflate:sometimes",
            "balloon:never",
            "deflate:firecracker",
            "inflate:twice@many",
            "stats:bogus-len=4294967296",
        ] {
            assert!(spec.parse::<Fault>().is_err(), "{spec} was accepted");
        }
    }
}
