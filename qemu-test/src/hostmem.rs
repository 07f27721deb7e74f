// SPDX-License-Identifier: GPL-2.0

//! What a guest's RAM costs the host, read from the host's `/proc`: the
//! QEMU process's `smaps_rollup`, the host's `/proc/meminfo`, and a walk of
//! the guest RAM mapping through `/proc/<pid>/pagemap` and
//! `/proc/kpageflags` ([`RamResidency`]) that counts whole huge pages.
//!
//! The walk matters for THP-backed RAM: when QEMU discards 4 KiB of a
//! transparent huge page, the page is split in the mapping and the discarded
//! part leaves `Rss`, but the host frees it only when the huge page itself
//! is split (the deferred split queue, worked off under memory pressure).
//! [`RamResidency::held_kib`] counts such a page whole, as the host does.
//!
//! [`HugetlbPool`] reserves host huge pages and mounts a hugetlbfs for a
//! guest's RAM, and puts both back when dropped.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;

use anyhow::anyhow;
use anyhow::bail;
use anyhow::ensure;
use anyhow::Context;

use crate::Result;

/// Host page size the walk assumes (x86-64).
const PAGE: u64 = 4096;

/// Pages in a 2 MiB huge page.
const HUGE_PAGES: u64 = 512;

/// `/proc/kpageflags` bits (`include/uapi/linux/kernel-page-flags.h`).
const KPF_COMPOUND_HEAD: u64 = 1 << 15;
const KPF_COMPOUND_TAIL: u64 = 1 << 16;

/// `/proc/<pid>/pagemap`: page present, and the PFN bits.
const PM_PRESENT: u64 = 1 << 63;
const PM_PFN_MASK: u64 = (1 << 55) - 1;

/// Parses `Name: <n> kB` lines (meminfo, smaps_rollup, status) into a map.
pub fn parse_kb_fields(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let value = rest.split_whitespace().next()?.parse().ok()?;
            Some((name.trim().to_string(), value))
        })
        .collect()
}

/// The host's `/proc/meminfo` (kB, or pages for `HugePages_*`).
pub fn host_meminfo() -> Result<BTreeMap<String, u64>> {
    let text = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    Ok(parse_kb_fields(&text))
}

/// `/proc/<pid>/smaps_rollup` of a process, in kB.
pub fn smaps_rollup(pid: u32) -> Result<BTreeMap<String, u64>> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let fields = parse_kb_fields(&text);
    ensure!(fields.contains_key("Rss"), "no Rss in {path}: {text:?}");
    Ok(fields)
}

/// One field of a parsed map, or an error naming where it was looked for.
pub fn field(fields: &BTreeMap<String, u64>, name: &str, source: &str) -> Result<u64> {
    fields
        .get(name)
        .copied()
        .ok_or_else(|| anyhow!("no {name} in {source}"))
}

/// What the guest RAM mapping of a QEMU process holds on the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RamResidency {
    /// Pages mapped (present in `pagemap`), in KiB: what `Rss` counts.
    pub mapped_kib: u64,
    /// Mapped pages that are not part of a huge page, in KiB.
    pub small_kib: u64,
    /// Huge pages (THP or hugetlbfs) with at least one mapped page.
    pub huge_pages: u64,
    /// Of those, the ones not mapped whole: split by a discard of part of
    /// them, still held whole by the host.
    pub partial_huge_pages: u64,
}

impl RamResidency {
    /// Host memory the mapping holds, in KiB: every small page, and every
    /// huge page with any page mapped, whole.
    pub fn held_kib(&self) -> u64 {
        self.small_kib + self.huge_pages * HUGE_PAGES * PAGE / 1024
    }
}

/// Finds the mapping of `ram_bytes` of guest RAM in QEMU's address space:
/// the one read-write mapping of exactly that size. Returns (start, end).
pub fn find_ram_mapping(pid: u32, ram_bytes: u64) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/maps");
    let maps = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut found = Vec::new();
    for line in maps.lines() {
        let mut words = line.split_whitespace();
        let (Some(range), Some(perms)) = (words.next(), words.next()) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let start = u64::from_str_radix(start, 16).with_context(|| format!("{path}: {line}"))?;
        let end = u64::from_str_radix(end, 16).with_context(|| format!("{path}: {line}"))?;
        if end - start == ram_bytes && perms.starts_with("rw") {
            found.push((start, end, line.to_string()));
        }
    }
    match found.as_slice() {
        [(start, end, _)] => Ok((*start, *end)),
        [] => bail!(
            "no read-write mapping of {} MiB (the guest RAM) in {path}",
            ram_bytes >> 20
        ),
        many => bail!(
            "{} read-write mappings of {} MiB in {path}, cannot tell which is the guest RAM:\n{}",
            many.len(),
            ram_bytes >> 20,
            many.iter()
                .map(|(_, _, line)| line.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

/// Walks `[start, end)` of process `pid` through `pagemap` and
/// `kpageflags` (needs root: PFNs read as 0 otherwise, and this fails).
///
/// Huge pages are taken to be 2 MiB, naturally aligned: a compound head
/// anywhere else fails the walk rather than miscount.
pub fn ram_residency(pid: u32, start: u64, end: u64) -> Result<RamResidency> {
    let pagemap_path = format!("/proc/{pid}/pagemap");
    let pagemap =
        File::open(&pagemap_path).with_context(|| format!("opening {pagemap_path} (root?)"))?;
    let pages = usize::try_from((end - start) / PAGE)?;
    let mut entries = vec![0u8; pages * 8];
    pagemap
        .read_exact_at(&mut entries, start / PAGE * 8)
        .with_context(|| format!("reading {pagemap_path}"))?;
    let mut pfns: Vec<u64> = entries
        .chunks_exact(8)
        .filter_map(|bytes| {
            let entry = u64::from_le_bytes(bytes.try_into().ok()?);
            (entry & PM_PRESENT != 0).then_some(entry & PM_PFN_MASK)
        })
        .collect();
    let mut residency = RamResidency {
        mapped_kib: pfns.len() as u64 * PAGE / 1024,
        ..RamResidency::default()
    };
    if pfns.is_empty() {
        return Ok(residency);
    }
    ensure!(
        pfns.iter().any(|&pfn| pfn != 0),
        "{pagemap_path} shows present pages without PFNs: reading PFNs needs CAP_SYS_ADMIN (run as root)"
    );
    pfns.sort_unstable();
    pfns.dedup();

    let kpageflags = File::open("/proc/kpageflags").context("opening /proc/kpageflags (root?)")?;
    // Mapped pages of each huge page, keyed by its first PFN / 512.
    let mut huge: BTreeMap<u64, u64> = BTreeMap::new();
    let mut run_start = 0;
    while run_start < pfns.len() {
        let mut run_end = run_start + 1;
        while run_end < pfns.len() && pfns[run_end] == pfns[run_end - 1] + 1 {
            run_end += 1;
        }
        let first = pfns[run_start];
        let mut flags = vec![0u8; (run_end - run_start) * 8];
        kpageflags
            .read_exact_at(&mut flags, first * 8)
            .with_context(|| format!("reading /proc/kpageflags at PFN {first:#x}"))?;
        for (i, bytes) in flags.chunks_exact(8).enumerate() {
            let flags = u64::from_le_bytes(bytes.try_into()?);
            let pfn = first + i as u64;
            if flags & KPF_COMPOUND_HEAD != 0 {
                ensure!(
                    pfn % HUGE_PAGES == 0,
                    "a compound page starts at PFN {pfn:#x}, not 2 MiB-aligned: huge pages other than 2 MiB are not counted here"
                );
            }
            if flags & (KPF_COMPOUND_HEAD | KPF_COMPOUND_TAIL) != 0 {
                *huge.entry(pfn / HUGE_PAGES).or_default() += 1;
            } else {
                residency.small_kib += PAGE / 1024;
            }
        }
        run_start = run_end;
    }
    residency.huge_pages = huge.len() as u64;
    residency.partial_huge_pages = huge.values().filter(|&&n| n < HUGE_PAGES).count() as u64;
    Ok(residency)
}

/// Host huge pages reserved, and optionally a hugetlbfs mounted, for one
/// guest's RAM.
///
/// [`HugetlbPool::reserve`] raises `/proc/sys/vm/nr_hugepages` by the pages
/// asked for and checks they are free. With a mount, the mount reserves
/// them for itself (`min_size`), so that other users of the host's huge
/// pages cannot take them. Dropping the pool unmounts, removes the
/// directory and lowers `nr_hugepages` by what it added (not back to a
/// value read earlier: others may have changed it since), also when the
/// bench fails.
#[derive(Debug)]
pub struct HugetlbPool {
    dir: Option<PathBuf>,
    added: u64,
    mounted: bool,
}

/// The host's persistent huge page count.
const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

fn read_nr_hugepages() -> Result<u64> {
    let text =
        std::fs::read_to_string(NR_HUGEPAGES).with_context(|| format!("reading {NR_HUGEPAGES}"))?;
    text.trim()
        .parse()
        .with_context(|| format!("{NR_HUGEPAGES}: {text:?}"))
}

fn write_nr_hugepages(pages: u64) -> Result<()> {
    std::fs::write(NR_HUGEPAGES, format!("{pages}\n"))
        .with_context(|| format!("writing {pages} to {NR_HUGEPAGES} (root?)"))
}

impl HugetlbPool {
    /// Adds `pages` 2 MiB pages to the host pool and, if `mount`, mounts a
    /// hugetlbfs that reserves them.
    pub fn reserve(pages: u64, mount: bool) -> Result<Self> {
        let original = read_nr_hugepages()?;
        // From here on, dropping `pool` puts everything back.
        let mut pool = HugetlbPool {
            dir: None,
            added: 0,
            mounted: false,
        };
        write_nr_hugepages(original + pages)?;
        pool.added = read_nr_hugepages()?.saturating_sub(original);
        let free = field(&host_meminfo()?, "HugePages_Free", "/proc/meminfo")?;
        ensure!(
            pool.added >= pages && free >= pages,
            "asked the host for {pages} more huge pages in {NR_HUGEPAGES}: it added {}, {free} are free (not enough contiguous memory, or another user of huge pages)",
            pool.added
        );
        if mount {
            let dir = crate::qemu::fresh_run_dir("vbrs-bench-hugetlbfs-")?;
            pool.dir = Some(dir.clone());
            run(Command::new("mount")
                .args(["-t", "hugetlbfs", "-o"])
                .arg(format!("pagesize=2M,size={0}M,min_size={0}M", pages * 2))
                .arg("none")
                .arg(&dir))?;
            pool.mounted = true;
        }
        Ok(pool)
    }

    /// The hugetlbfs mount point, if the pool has one.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }
}

impl Drop for HugetlbPool {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            if self.mounted {
                if let Err(e) = run(Command::new("umount").arg(dir)) {
                    eprintln!("bench: {e:#}");
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        if self.added > 0 {
            let restored = read_nr_hugepages()
                .and_then(|now| write_nr_hugepages(now.saturating_sub(self.added)));
            if let Err(e) = restored {
                eprintln!("bench: lowering {NR_HUGEPAGES} by {}: {e:#}", self.added);
            }
        }
    }
}

/// Runs a host command; fails with its output unless it exits with 0.
fn run(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kb_fields_parse_meminfo_and_smaps_lines() {
        let fields = parse_kb_fields(
            "7ffd-7fff ---p 00000000 00:00 0 [rollup]\nRss:  1024 kB\nAnonHugePages:   2048 kB\nHugePages_Free:      3\n",
        );
        assert_eq!(fields.get("Rss"), Some(&1024));
        assert_eq!(fields.get("AnonHugePages"), Some(&2048));
        assert_eq!(fields.get("HugePages_Free"), Some(&3));
    }

    #[test]
    fn held_counts_huge_pages_whole() {
        let residency = RamResidency {
            mapped_kib: 8 + 4 * 511,
            small_kib: 8,
            huge_pages: 1,
            partial_huge_pages: 1,
        };
        assert_eq!(residency.held_kib(), 8 + 2048);
    }

    #[test]
    fn this_process_heap_is_walked() {
        // Needs root for PFNs, as the bench and the VM tests do: fails
        // loudly without it.
        File::open("/proc/kpageflags").expect("reading /proc/kpageflags needs root");
        let block = vec![1u8; 64 * PAGE as usize];
        let start = (block.as_ptr() as u64).div_ceil(PAGE) * PAGE;
        let residency = ram_residency(std::process::id(), start, start + 32 * PAGE).unwrap();
        assert_eq!(residency.mapped_kib, 32 * 4);
        assert!(residency.held_kib() >= 32 * 4);
    }
}
