//! The interrupts of an interface's queues (from /proc/interrupts), their
//! CPU affinity, and the host facts IRQ pinning depends on: how many CPUs
//! are online and whether irqbalance runs (it rewrites affinities).

use std::fs;
use std::path::Path;

/// One interrupt line that belongs to the interface.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Irq {
    pub irq: u32,
    /// The handler's name as /proc/interrupts shows it, e.g. `eth0-TxRx-3`.
    pub name: String,
    /// The queue it serves, read from the number that ends its name
    /// (`eth0-TxRx-3` → 3, `mlx5_comp3@pci:...` → 3); `None` for names
    /// without one (a link or admin interrupt).
    pub queue: Option<u32>,
    /// CPUs allowed to take it (/proc/irq/N/smp_affinity_list), as written
    /// there, e.g. `0-3` or `2`.
    pub affinity: Option<String>,
    /// Interrupts taken so far, all CPUs together.
    pub count: u64,
}

/// What identifies an interface's interrupts in /proc/interrupts.
#[derive(Debug, Clone, Default)]
pub struct Owner<'a> {
    /// The interface name (most drivers name vectors `IF-TxRx-N` or
    /// `DRIVER-IF-TxRx-N`).
    pub iface: &'a str,
    /// The PCI address (mlx5 names vectors `mlx5_compN@pci:ADDRESS`).
    pub bus_info: &'a str,
    /// The name of the device behind the interface (virtio_net's vectors
    /// are `virtioN-input.Q`, after its virtio device, not the interface).
    pub device: &'a str,
    /// The device's MSI vectors (/sys/.../msi_irqs): theirs whatever their
    /// names.
    pub msi: &'a [u32],
}

/// The interrupts of an interface, read from /proc/interrupts with their
/// affinities. `sys_device` is /sys/class/net/IF/device when it is the
/// interface's (see [`super::inspect`]).
pub fn for_interface(iface: &str, bus_info: &str, sys_device: Option<&Path>) -> Vec<Irq> {
    let Ok(table) = fs::read_to_string("/proc/interrupts") else {
        return Vec::new();
    };
    let device = sys_device
        .and_then(|d| fs::canonicalize(d).ok())
        .and_then(|d| Some(d.file_name()?.to_str()?.to_owned()))
        .unwrap_or_default();
    // The vectors belong to the PCI function: the device itself, or its
    // parent when the interface sits on a bus of its own (virtio).
    let msi: Vec<u32> = sys_device
        .into_iter()
        .flat_map(|d| [d.join("msi_irqs"), d.join("../msi_irqs")])
        .find_map(|dir| fs::read_dir(dir).ok())
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let owner = Owner {
        iface,
        bus_info,
        device: &device,
        msi: &msi,
    };
    let mut irqs = parse_interrupts(&table, &owner);
    for i in &mut irqs {
        i.affinity = fs::read_to_string(format!("/proc/irq/{}/smp_affinity_list", i.irq))
            .ok()
            .map(|s| s.trim().to_owned());
    }
    irqs
}

/// The lines of a /proc/interrupts table that belong to `owner`: one of
/// its MSI vectors, or a handler name with the interface's or device's name
/// as a whole word (so `eth1` does not claim `eth10-rx-0`) or with its PCI
/// address.
pub fn parse_interrupts(table: &str, owner: &Owner<'_>) -> Vec<Irq> {
    let mut lines = table.lines();
    let cpus = lines.next().map_or(0, |h| h.split_whitespace().count());
    let mut out = Vec::new();
    for line in lines {
        let Some((num, rest)) = line.trim_start().split_once(':') else {
            continue;
        };
        // Numbered lines only: NMI, LOC, ... are per-CPU events.
        let Ok(irq) = num.trim().parse::<u32>() else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let counts = fields.len().min(cpus);
        let count = fields[..counts]
            .iter()
            .filter_map(|c| c.parse::<u64>().ok())
            .sum();
        // After the counts: the chip (whose name may hold a PCI address
        // too, so it is not matched), the hardware IRQ and its trigger
        // ("524288-edge" on x86, "30 Level" on arm64), then the handler
        // names (comma-separated when shared).
        let names: Vec<&str> = fields[counts..]
            .iter()
            .skip(1)
            .map(|f| f.trim_end_matches(','))
            .filter(|f| !is_trigger(f))
            .collect();
        let named = names
            .iter()
            .find_map(|n| owner.queue_of(n).map(|q| (*n, q)));
        let (name, queue) = match named {
            Some(m) => m,
            None if owner.msi.contains(&irq) => match names.last() {
                Some(n) => (*n, trailing_number(n)),
                None => ("", None),
            },
            None => continue,
        };
        out.push(Irq {
            irq,
            name: name.to_owned(),
            queue,
            affinity: None,
            count,
        });
    }
    out
}

impl Owner<'_> {
    /// `Some(queue)` when the handler `name` is the owner's; the queue is
    /// read after the owner's own name, whose digits say nothing.
    fn queue_of(&self, name: &str) -> Option<Option<u32>> {
        for word in [self.iface, self.device] {
            if let Some(rest) = after_word(name, word) {
                return Some(trailing_number(rest));
            }
        }
        if !self.bus_info.is_empty() && name.contains(self.bus_info) {
            return Some(trailing_number(name));
        }
        None
    }
}

/// A hardware IRQ number or trigger column rather than a handler name.
fn is_trigger(field: &str) -> bool {
    field.parse::<u64>().is_ok()
        || matches!(field, "Edge" | "Level")
        || ["-edge", "-level", "-fasteoi"]
            .iter()
            .any(|t| field.ends_with(t) && field[..field.len() - t.len()].parse::<u64>().is_ok())
}

/// What follows `word` in `name` where it stands as a word of its own.
fn after_word<'n>(name: &'n str, word: &str) -> Option<&'n str> {
    if word.is_empty() {
        return None;
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    name.match_indices(word).find_map(|(at, _)| {
        let before = name[..at].chars().next_back();
        let rest = &name[at + word.len()..];
        (!alnum(before) && !alnum(rest.chars().next())).then_some(rest)
    })
}

/// The number that ends the queue part of a handler name: before an `@`
/// (mlx5 appends `@pci:ADDRESS`) and after the last non-digit; none for
/// the async/event vectors that are numbered too.
fn trailing_number(name: &str) -> Option<u32> {
    let head = name.split('@').next().unwrap_or(name);
    if head.contains("async") {
        return None;
    }
    let digits = head.len() - head.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return None;
    }
    head[head.len() - digits..].parse().ok()
}

/// CPUs online now.
pub fn cpus_online() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// The pid of a running irqbalance, if any (it moves IRQs every few
/// seconds, undoing affinities set by hand).
pub fn irqbalance_pid() -> Option<u32> {
    fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "irqbalance")
        })
}

/// The CPUs of an affinity list such as `0-3,8,10-11`; `None` when it does
/// not parse.
pub fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.trim().parse::<usize>().ok()?, b.trim().parse().ok()?);
                if b < a {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "           CPU0       CPU1       CPU2       CPU3
  0:         36          0          0          0   IO-APIC   2-edge      timer
 24:          1          0          0          0   PCI-MSI 1048576-edge      eth1
 25:        100        200          0          0   PCI-MSI 1048577-edge      eth1-TxRx-0
 26:          0          5          0          0   PCI-MSI 1048578-edge      eth1-TxRx-1
 27:          7          0          0          0   PCI-MSI 1048579-edge      eth10-TxRx-0
 28:          0          0          9          0   PCI-MSI 524288-edge      mlx5_comp2@pci:0000:3b:00.0
 29:          0          0          0          0   PCI-MSI 524289-edge      i8042, eth1-rx-2
 30:          0          0          0          3   IR-PCI-MSI 524290-edge      ice-eth1-TxRx-3
 37:          0          0          0          0   PCI-MSIX-0000:00:03.0   0-edge      virtio2-config
 38:          0      11507          0          0   PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0
 39:      10175          0          0          0   PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0
 41:         10          0          0          0   PCI-MSIX-0000:00:04.0   1-edge      virtio3-rx
 60:          0          0          0          1   ITS-MSI 524288 Edge      eth2-TxRx-0
NMI:          0          0          0          0   Non-maskable interrupts
";

    fn owned(owner: &Owner<'_>) -> Vec<(u32, String, Option<u32>, u64)> {
        parse_interrupts(TABLE, owner)
            .into_iter()
            .map(|i| (i.irq, i.name, i.queue, i.count))
            .collect()
    }

    #[test]
    fn picks_the_interfaces_lines_with_their_queues() {
        let got = owned(&Owner {
            iface: "eth1",
            ..Owner::default()
        });
        let want = [
            (24, "eth1", None, 1),
            (25, "eth1-TxRx-0", Some(0), 300),
            (26, "eth1-TxRx-1", Some(1), 5),
            (29, "eth1-rx-2", Some(2), 0),
            (30, "ice-eth1-TxRx-3", Some(3), 3),
        ];
        let want: Vec<_> = want
            .into_iter()
            .map(|(i, n, q, c)| (i, n.to_owned(), q, c))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn matches_vectors_named_after_the_pci_address_or_the_device() {
        let mlx = owned(&Owner {
            iface: "ens3f0",
            bus_info: "0000:3b:00.0",
            ..Owner::default()
        });
        assert_eq!(
            mlx,
            [(28, "mlx5_comp2@pci:0000:3b:00.0".to_owned(), Some(2), 9)]
        );
        // virtio_net: named after the virtio device; the chip column's PCI
        // address is not a handler name.
        let virtio = owned(&Owner {
            iface: "eth0",
            bus_info: "0000:00:03.0",
            device: "virtio2",
            msi: &[],
        });
        let irqs: Vec<(u32, Option<u32>)> = virtio.iter().map(|i| (i.0, i.2)).collect();
        assert_eq!(irqs, [(37, None), (38, Some(0)), (39, Some(0))]);
        assert!(owned(&Owner {
            iface: "veth-b",
            ..Owner::default()
        })
        .is_empty());
    }

    #[test]
    fn arm64_trigger_columns_are_not_names() {
        let got = owned(&Owner {
            iface: "eth2",
            ..Owner::default()
        });
        assert_eq!(got, [(60, "eth2-TxRx-0".to_owned(), Some(0), 1)]);
    }

    #[test]
    fn msi_vectors_belong_whatever_their_names() {
        let got = owned(&Owner {
            iface: "enp0s4",
            msi: &[41],
            ..Owner::default()
        });
        assert_eq!(got, [(41, "virtio3-rx".to_owned(), None, 10)]);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8"), Some(vec![0, 1, 2, 3, 8]));
        assert_eq!(parse_cpu_list("5\n"), Some(vec![5]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }
}
