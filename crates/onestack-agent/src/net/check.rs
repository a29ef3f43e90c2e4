//! The self-check: compares what the host holds with what the data plane last realised (its
//! `Applied` record) and says, per object, what drifted. It only reads (one link dump and one
//! address dump of the host namespace, the same per DHCP or router namespace, `/proc` for
//! dnsmasq and sysctls, `nft list tables`); repairing is the ordinary converge of the objects it
//! names, so a repair is exactly what an apply after a failure would do.

use super::dhcp;
use super::link::{Link, Links};
use super::model::{Dhcp, Kind, Network, Port, Router};
use super::netns;
use super::nft::{Nft, NAT_TABLE};
use super::validate::IfName;
use anyhow::Result;
use ipnet::Ipv4Net;
use onestack_core::network::proto::METADATA_IP;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

/// The links and addresses of one namespace, read once per check.
pub struct View {
    links: HashMap<String, Link>,
    addrs: HashMap<u32, Vec<Ipv4Net>>,
}

impl View {
    pub async fn read(links: &Links) -> Result<Self> {
        Ok(Self {
            links: links.dump().await?,
            addrs: links.addr_dump().await?,
        })
    }

    fn link(&self, name: &IfName) -> Option<&Link> {
        self.links.get(name.as_str())
    }

    /// The bridge's index if it is there, a bridge, and up.
    fn bridge(&self, name: &IfName) -> Result<u32, String> {
        match self.link(name) {
            None => Err(format!("bridge {name} is missing")),
            Some(l) if l.kind.as_deref() != Some("bridge") => {
                Err(format!("{name} is not a bridge"))
            }
            Some(l) if !l.up => Err(format!("bridge {name} is down")),
            Some(l) => Ok(l.index),
        }
    }

    /// `dev` is there, up (if `up`), and in bridge `master` (if given).
    fn plugged(&self, dev: &IfName, master: Option<u32>, up: bool) -> Result<&Link, String> {
        let l = self.link(dev).ok_or_else(|| format!("{dev} is missing"))?;
        if up && !l.up {
            return Err(format!("{dev} is down"));
        }
        if master.is_some() && l.master != master {
            return Err(format!("{dev} is not in its bridge"));
        }
        Ok(l)
    }

    /// The link's IPv4 addresses are exactly `want`.
    fn addrs_are(&self, l: &Link, want: &[Ipv4Net]) -> Result<(), String> {
        let mut have: Vec<Ipv4Net> = self.addrs.get(&l.index).cloned().unwrap_or_default();
        let mut want = want.to_vec();
        have.sort();
        want.sort();
        if have != want {
            return Err(format!("{} has addresses {have:?}, not {want:?}", l.name));
        }
        Ok(())
    }
}

pub fn network(v: &View, n: &Network) -> Option<String> {
    let r = (|| {
        let bridge = v.bridge(&n.bridge)?;
        let l = v.plugged(&n.bridge, None, true)?;
        if l.mtu != Some(n.mtu) {
            return Err(format!("bridge {} has MTU {:?}", n.bridge, l.mtu));
        }
        let want: Vec<Ipv4Net> = n.host_address.iter().copied().collect();
        v.addrs_are(l, &want)?;
        if let Some(up) = &n.uplink {
            v.plugged(up, Some(bridge), true)?;
        }
        if let Some(t) = &n.tunnel {
            v.plugged(&t.device, Some(bridge), true)?;
        }
        Ok(())
    })();
    r.err()
}

/// A VM port's TAP (DHCP and router ports are checked with their server or router).
pub fn port(v: &View, p: &Port) -> Option<String> {
    if p.kind != Kind::Vm {
        return None;
    }
    let r = (|| {
        let bridge = v.bridge(&p.bridge)?;
        let l = v.plugged(&p.device, Some(bridge), p.admin_up)?;
        if !p.admin_up && l.up {
            return Err(format!("{} is up, its port is down", p.device));
        }
        if l.mtu != Some(p.mtu) {
            return Err(format!("{} has MTU {:?}", p.device, l.mtu));
        }
        Ok(())
    })();
    r.err()
}

/// A veth's two ends: the host one up in its bridge, the inner one up with exactly `addrs`.
fn veth(
    host: &View,
    inner: &View,
    host_dev: &IfName,
    inner_dev: &IfName,
    bridge: &IfName,
    addrs: &[Ipv4Net],
) -> Result<(), String> {
    let b = host.bridge(bridge)?;
    host.plugged(host_dev, Some(b), true)?;
    let l = inner.plugged(inner_dev, None, true)?;
    inner.addrs_are(l, addrs)
}

/// A view of the namespace and a handle in it; Err: it is missing or cannot be read.
async fn ns_view(ns: &Path) -> Result<(View, Links), String> {
    if !netns::is_namespace(ns) {
        return Err(format!("namespace {} is missing", ns.display()));
    }
    let links = Links::open(Some(ns.to_path_buf()))
        .await
        .map_err(|e| format!("{e:#}"))?;
    let view = View::read(&links).await.map_err(|e| format!("{e:#}"))?;
    Ok((view, links))
}

pub async fn dhcp(
    host: &View,
    d: &Dhcp,
    files: &dhcp::Files,
    args: &[std::ffi::OsString],
) -> Option<String> {
    let r = async {
        let ns = netns::ns_path(&d.namespace);
        let (inner, _) = ns_view(&ns).await?;
        let meta: Ipv4Addr = METADATA_IP.parse().map_err(|_| "metadata address")?;
        let mut addrs = d.addresses.clone();
        addrs.push(Ipv4Net::from(meta));
        veth(host, &inner, &d.device, &d.ns_device, &d.bridge, &addrs)?;
        match dhcp::running(files) {
            None => return Err("dnsmasq is not running".to_owned()),
            Some((_, a)) if a != args => return Err("dnsmasq runs with other arguments".into()),
            Some((pid, _)) if !netns::process_in(pid, &ns) => {
                return Err(format!("dnsmasq (pid {pid}) runs outside {}", ns.display()))
            }
            Some(_) => {}
        }
        for (file, want) in [
            (files.hosts(), dhcp::hosts_file(d)),
            (files.opts(), dhcp::opts_file(d)),
        ] {
            if std::fs::read_to_string(&file).ok().as_deref() != Some(want.as_str()) {
                return Err(format!("{} is missing or changed", file.display()));
            }
        }
        Ok::<(), String>(())
    };
    r.await.err()
}

pub async fn router(host: &View, r: &Router) -> Option<String> {
    let check = async {
        let ns = netns::ns_path(&r.namespace);
        let (inner, links) = ns_view(&ns).await?;
        for i in &r.interfaces {
            veth(
                host,
                &inner,
                &i.host_device,
                &i.device,
                &i.bridge,
                &[i.address],
            )?;
        }
        let mut gateway = None;
        if let Some(g) = &r.gateway {
            let mut addrs = vec![g.address];
            addrs.extend(r.floating.keys().map(|f| Ipv4Net::from(*f)));
            veth(host, &inner, &g.host_device, &g.device, &g.bridge, &addrs)?;
            gateway = g.default_gateway;
        }
        let have = links
            .default_gateway()
            .await
            .map_err(|e| format!("{e:#}"))?;
        if have != gateway {
            return Err(format!("default route via {have:?}, not {gateway:?}"));
        }
        let fwd = netns::read_sysctl(Some(ns.clone()), "net/ipv4/ip_forward")
            .await
            .map_err(|e| format!("{e:#}"))?;
        if fwd != "1" {
            return Err("IPv4 forwarding is off".into());
        }
        let tables = Nft::new(Some(ns))
            .tables()
            .await
            .map_err(|e| format!("{e:#}"))?;
        if !tables.iter().any(|t| t == &format!("ip {NAT_TABLE}")) {
            return Err(format!("nft table ip {NAT_TABLE} is missing"));
        }
        Ok::<(), String>(())
    };
    check.await.err()
}
