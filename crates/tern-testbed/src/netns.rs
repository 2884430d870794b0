//! A testbed on one machine: one network namespace per process of a local
//! cluster, each joined by a veth pair to a bridge in the root namespace. The
//! bridge carries the host's address in the cluster's subnet, so `tern get`
//! and `tern put` work from a plain shell.
//!
//! Cluster number N (1..=250) uses bridge `ternbrN`, subnet 10.213.N.0/24
//! (host .1, processes .2 upwards), namespaces `ternN-NAME`, root-side veths
//! `tnNNAME`. Creating the bridge claims N, so parallel clusters never clash.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Highest cluster number.
const INDEX_MAX: u32 = 250;
/// First two octets of every cluster subnet.
const SUBNET: [u8; 2] = [10, 213];

/// One process's namespace.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub namespace: String,
    /// The root-side end of its veth pair (on the bridge).
    pub veth: String,
    pub address: Ipv4Addr,
}

/// Everything `create` made, for `destroy`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Topology {
    pub index: u32,
    pub bridge: String,
    pub host_address: Ipv4Addr,
    pub nodes: Vec<Node>,
    /// Pinned BPF objects (XDP links) to remove on destroy.
    pub pins: Vec<PathBuf>,
}

fn ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (install iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: a plain system call without arguments.
    unsafe { libc::geteuid() == 0 }
}

impl Topology {
    /// Creates a namespace per name. On failure, removes what it made.
    pub fn create(names: &[String]) -> Result<Topology> {
        if !is_root() {
            bail!("the netns topology needs root (CAP_NET_ADMIN); use --topology loopback");
        }
        let index = (1..=INDEX_MAX)
            .find(|index| ip(&["link", "add", &format!("ternbr{index}"), "type", "bridge"]).is_ok())
            .context("no free cluster number: remove stale ternbr* bridges with `ip link del`")?;
        let mut topology = Topology {
            index,
            bridge: format!("ternbr{index}"),
            host_address: Ipv4Addr::new(SUBNET[0], SUBNET[1], index as u8, 1),
            nodes: Vec::new(),
            pins: Vec::new(),
        };
        if let Err(error) = topology.build(names) {
            topology.destroy();
            return Err(error);
        }
        Ok(topology)
    }

    fn build(&mut self, names: &[String]) -> Result<()> {
        let host = format!("{}/24", self.host_address);
        ip(&["addr", "add", &host, "dev", &self.bridge])?;
        ip(&["link", "set", &self.bridge, "up"])?;
        self.extend(names)
    }

    /// Adds a namespace per name to the running topology (processes joining
    /// a cluster: a new shard's replicas), on the next free addresses.
    pub fn extend(&mut self, names: &[String]) -> Result<()> {
        for name in names {
            if self.nodes.iter().any(|node| node.name == *name) {
                bail!("the topology has a node {name} already");
            }
            let offset = self.nodes.len();
            if offset + 2 > 254 {
                bail!("the topology's /24 has no free address left");
            }
            let node = Node {
                name: name.clone(),
                namespace: format!("tern{}-{name}", self.index),
                veth: format!("tn{}{name}", self.index),
                address: Ipv4Addr::new(SUBNET[0], SUBNET[1], self.index as u8, 2 + offset as u8),
            };
            let peer = format!("tp{}{name}", self.index);
            ip(&["netns", "add", &node.namespace])?;
            self.nodes.push(node.clone());
            ip(&[
                "link", "add", &node.veth, "type", "veth", "peer", "name", &peer,
            ])?;
            ip(&["link", "set", &peer, "netns", &node.namespace])?;
            let inside = ["-n", node.namespace.as_str()];
            ip(&[&inside[..], &["link", "set", &peer, "name", "eth0"]].concat())?;
            let address = format!("{}/24", node.address);
            ip(&[&inside[..], &["addr", "add", &address, "dev", "eth0"]].concat())?;
            ip(&[&inside[..], &["link", "set", "eth0", "up"]].concat())?;
            ip(&[&inside[..], &["link", "set", "lo", "up"]].concat())?;
            ip(&["link", "set", &node.veth, "master", &self.bridge])?;
            ip(&["link", "set", &node.veth, "up"])?;
        }
        Ok(())
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|node| node.name == name)
            .expect("a node of this topology")
    }

    /// Removes every namespace (and with it every veth), the bridge and the
    /// pins. Keeps going past errors: it is also the clean-up of failures.
    pub fn destroy(&self) {
        for node in &self.nodes {
            // Deleting one end of a veth pair removes both at once; a deleted
            // namespace releases its devices only later, asynchronously, and
            // the next cluster may reuse these names right away.
            let _ = ip(&["link", "del", &node.veth]);
            let _ = ip(&["netns", "del", &node.namespace]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
        for pin in &self.pins {
            let _ = std::fs::remove_file(pin);
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, toml::to_string(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    pub fn load(path: &Path) -> Result<Option<Topology>> {
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(path)?;
        Ok(Some(
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?,
        ))
    }
}

/// Mounts the BPF filesystem at /sys/fs/bpf when it is not there yet.
pub fn ensure_bpffs() -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let path = c"/sys/fs/bpf";
    // SAFETY: all-zero bytes are a valid statfs; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } == 0 && stat.f_type as i64 == BPF_FS_MAGIC
    {
        return Ok(());
    }
    // SAFETY: mounts the BPF filesystem with NUL-terminated arguments.
    let result = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            path.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if result != 0 {
        bail!(
            "mounting bpffs at /sys/fs/bpf: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
