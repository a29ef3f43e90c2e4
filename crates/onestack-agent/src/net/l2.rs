//! Realising bridges, VM taps, DHCP servers and routers. Each `converge_*` takes what may exist
//! (`old`, the last applied version) and what should, and is idempotent: it creates what is
//! missing, corrects what differs and removes what `old` had and `new` has not, so one function
//! serves creation, change, retry after a failure, and startup against existing state.

use super::dhcp;
use super::link::{Links, Settings};
use super::model::{Dhcp, Kind, Network, Port, Router};
use super::netns;
use super::nft::{self, Nft};
use super::tap;
use super::validate::{IfName, Mac};
use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use onestack_core::network::proto::METADATA_IP;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub struct Ctx<'a> {
    pub host_ns: Option<PathBuf>,
    pub host: &'a Links,
    pub state_dir: &'a Path,
    pub shared_dir: &'a Path,
    pub dnsmasq_user: &'a crate::access::Identity,
    pub tap_owner: Option<u32>,
    pub dnsmasq: &'a Path,
}

// ---- networks -------------------------------------------------------------------------------

pub async fn converge_network(c: &Ctx<'_>, old: Option<&Network>, new: &Network) -> Result<()> {
    if let Some(o) = old.filter(|o| o.bridge != new.bridge) {
        c.host.delete(&o.bridge).await?;
    }
    let old_tunnel = old.and_then(|o| o.tunnel.as_ref());
    if let Some(ot) = old_tunnel {
        if !new.tunnel.as_ref().is_some_and(|nt| nt.same_device(ot)) {
            c.host.delete(&ot.device).await?;
        }
    }
    let index = c.host.ensure_bridge(&new.bridge, new.mtu).await?;
    let addrs: Vec<Ipv4Net> = new.host_address.iter().copied().collect();
    c.host.sync_addrs(index, &new.bridge, &addrs).await?;
    if let Some(gone) = old
        .and_then(|o| o.uplink.as_ref())
        .filter(|u| new.uplink.as_ref() != Some(*u))
    {
        release_uplink(c, gone).await?;
    }
    if let Some(up) = &new.uplink {
        let i =
            c.host.index(up).await?.with_context(|| {
                format!("the public interface {up} does not exist on this host")
            })?;
        c.host
            .set(
                i,
                up,
                &Settings {
                    master: Some(index),
                    up: Some(true),
                    ..Default::default()
                },
            )
            .await?;
    }
    if let Some(t) = &new.tunnel {
        let vx = c
            .host
            .ensure_vxlan(&t.device, t.vni, t.local, new.mtu)
            .await?;
        c.host
            .set(
                vx,
                &t.device,
                &Settings {
                    mtu: Some(new.mtu),
                    master: Some(index),
                    up: Some(true),
                    ..Default::default()
                },
            )
            .await?;
        if let Some(ot) = old_tunnel.filter(|ot| ot.same_device(t)) {
            for gone in ot.peers.difference(&t.peers) {
                c.host.flood_entry(vx, &t.device, *gone, false).await?;
            }
        }
        for peer in &t.peers {
            c.host.flood_entry(vx, &t.device, *peer, true).await?;
        }
    }
    Ok(())
}

/// Takes a host interface out of its bridge; the interface itself is the host's and stays.
async fn release_uplink(c: &Ctx<'_>, dev: &IfName) -> Result<()> {
    if let Some(i) = c.host.index(dev).await? {
        c.host.release(i, dev).await?;
    }
    Ok(())
}

pub async fn remove_network(c: &Ctx<'_>, old: &Network) -> Result<()> {
    if let Some(u) = &old.uplink {
        release_uplink(c, u).await?;
    }
    if let Some(t) = &old.tunnel {
        c.host.delete(&t.device).await?;
    }
    c.host.delete(&old.bridge).await.map(|_| ())
}

// ---- VM ports -------------------------------------------------------------------------------

/// A VM port's TAP: created persistent if absent (an existing device of that name, e.g. a test's
/// veth, is used as it is), then enslaved, sized and brought up or down. DHCP and router ports'
/// devices belong to their server/router.
pub async fn converge_port(c: &Ctx<'_>, old: Option<&Port>, new: &Port) -> Result<()> {
    if new.kind != Kind::Vm {
        return Ok(());
    }
    if let Some(o) = old.filter(|o| o.device != new.device && o.kind == Kind::Vm) {
        remove_port(c, o).await?;
    }
    if c.host.index(&new.device).await?.is_none() {
        let (dev, owner) = (new.device.clone(), c.tap_owner);
        netns::run_in(c.host_ns.clone(), move || {
            tap::create_persistent(&dev, owner)
        })
        .await
        .with_context(|| format!("creating TAP {}", new.device))?;
    }
    let index = c.host.require(&new.device).await?;
    let bridge = c.host.require(&new.bridge).await?;
    c.host
        .set(
            index,
            &new.device,
            &Settings {
                mtu: Some(new.mtu),
                mac: Some(new.mac.host_side()),
                master: Some(bridge),
                up: Some(new.admin_up),
            },
        )
        .await
}

pub async fn remove_port(c: &Ctx<'_>, old: &Port) -> Result<()> {
    if old.kind != Kind::Vm {
        return Ok(());
    }
    remove_device(c, &old.device).await
}

/// Deletes a host device: a TAP through the tun ioctls (the tun driver has no netlink delete),
/// anything else (veth) through netlink.
async fn remove_device(c: &Ctx<'_>, dev: &IfName) -> Result<()> {
    let Some(link) = c.host.get(dev).await? else {
        return Ok(());
    };
    if link.kind.as_deref() == Some("tun") {
        let d = dev.clone();
        let r = netns::run_in(c.host_ns.clone(), move || tap::delete_persistent(&d)).await;
        if r.is_ok() && c.host.index(dev).await?.is_none() {
            return Ok(());
        }
        // Still attached to a QEMU (EBUSY), or not persistent: netlink may still manage it.
        if let Err(e) = c.host.delete(dev).await {
            return Err(e).context(match r {
                Err(first) => format!("deleting TAP {dev} (ioctl: {first:#})"),
                Ok(()) => format!("deleting TAP {dev}"),
            });
        }
        return Ok(());
    }
    c.host.delete(dev).await.map(|_| ())
}

// ---- veth into a namespace ------------------------------------------------------------------

struct VethEnd<'a> {
    host_dev: &'a IfName,
    inner_dev: &'a IfName,
    mac: Mac,
    mtu: u32,
    bridge: &'a IfName,
    addrs: Vec<Ipv4Net>,
}

/// A veth whose host end is in `bridge` and whose other end, in namespace `ns`, carries `mac`
/// and `addrs`. Recreated when either end is missing; true if it was (what listened on the old
/// inner end must be started again).
async fn converge_veth(c: &Ctx<'_>, ns: &Path, inner: &Links, v: &VethEnd<'_>) -> Result<bool> {
    let host_has = c.host.index(v.host_dev).await?.is_some();
    let inner_has = inner.index(v.inner_dev).await?.is_some();
    let recreate = !(host_has && inner_has);
    if recreate {
        c.host.delete(v.host_dev).await?;
        inner.delete(v.inner_dev).await?;
        // A stale namespace end left in the host namespace would block the new pair.
        c.host.delete(v.inner_dev).await?;
        c.host.add_veth(v.host_dev, v.inner_dev).await?;
        c.host.move_to(v.inner_dev, ns.to_path_buf()).await?;
    }
    let bridge = c.host.require(v.bridge).await?;
    let host_index = c.host.require(v.host_dev).await?;
    c.host
        .set(
            host_index,
            v.host_dev,
            &Settings {
                mtu: Some(v.mtu),
                mac: Some(v.mac.host_side()),
                master: Some(bridge),
                up: Some(true),
            },
        )
        .await?;
    let index = inner.require(v.inner_dev).await?;
    inner
        .set(
            index,
            v.inner_dev,
            &Settings {
                mtu: Some(v.mtu),
                mac: Some(v.mac),
                master: None,
                up: Some(true),
            },
        )
        .await?;
    inner.sync_addrs(index, v.inner_dev, &v.addrs).await?;
    Ok(recreate)
}

/// Creates the namespace if needed and returns its path, a netlink handle in it (lo up), and
/// whether it was made now (empty: nothing of the old one's is in it).
async fn enter_ns(name: &super::validate::NsName) -> Result<(PathBuf, Links, bool)> {
    let created = netns::add(name).await?;
    let path = netns::ns_path(name);
    let links = Links::open(Some(path.clone())).await?;
    let lo = IfName::parse("lo")?;
    let index = links.require(&lo).await?;
    links
        .set(
            index,
            &lo,
            &Settings {
                up: Some(true),
                ..Default::default()
            },
        )
        .await?;
    Ok((path, links, created))
}

// ---- DHCP -----------------------------------------------------------------------------------

/// `full`: also (re)start or reload dnsmasq even if nothing changed (startup, retry).
pub async fn converge_dhcp(c: &Ctx<'_>, old: Option<&Dhcp>, new: &Dhcp, full: bool) -> Result<()> {
    let files = dhcp::Files::new(c.state_dir, c.shared_dir, new);
    if let Some(o) = old.filter(|o| o.namespace != new.namespace || o.device != new.device) {
        remove_dhcp(c, o).await?;
    }
    let (ns, inner, created) = enter_ns(&new.namespace).await?;
    let meta: Ipv4Addr = METADATA_IP.parse().context("metadata address")?;
    let mut addrs = new.addresses.clone();
    addrs.push(Ipv4Net::from(meta));
    let recreated = converge_veth(
        c,
        &ns,
        &inner,
        &VethEnd {
            host_dev: &new.device,
            inner_dev: &new.ns_device,
            mac: new.mac,
            mtu: new.mtu,
            bridge: &new.bridge,
            addrs,
        },
    )
    .await?;

    dhcp::write_files(new, &files, c.dnsmasq_user)?;
    let want = dhcp::args(new, &files, c.dnsmasq_user);
    // A dnsmasq bound to a veth end that is gone, or living in a namespace that is no longer
    // the named one (its mount was lost and made again), serves no one: restarted.
    let stale = created || recreated;
    match dhcp::running(&files) {
        Some((pid, args)) if args == want && !stale && netns::process_in(pid, &ns) => {
            // Same server: the host list may have changed. Forget removed hosts' leases, then
            // make dnsmasq re-read its files.
            if let Some(o) = old {
                let gone: Vec<(Mac, Ipv4Addr)> = o
                    .hosts
                    .iter()
                    .filter(|h| !new.hosts.iter().any(|n| n.mac == h.mac && n.ip == h.ip))
                    .map(|h| (h.mac, h.ip))
                    .collect();
                if !gone.is_empty() {
                    dhcp::release(ns.clone(), new, gone).await?;
                }
            }
            if full || old != Some(new) {
                dhcp::reload(&files)?;
            }
        }
        Some(_) => {
            dhcp::stop(&files).await?;
            dhcp::start(ns, c.dnsmasq, new, &files, c.dnsmasq_user).await?;
        }
        None => {
            dhcp::start(ns, c.dnsmasq, new, &files, c.dnsmasq_user).await?;
        }
    }
    Ok(())
}

pub async fn remove_dhcp(c: &Ctx<'_>, old: &Dhcp) -> Result<()> {
    let files = dhcp::Files::new(c.state_dir, c.shared_dir, old);
    dhcp::stop(&files).await?;
    netns::del(&old.namespace).await?;
    // Deleting the namespace destroyed the inner end and with it the pair; this is for a host end
    // whose peer never made it into the namespace.
    c.host.delete(&old.device).await?;
    for dir in [&files.dir, &files.shared] {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
        }
    }
    Ok(())
}

// ---- routers --------------------------------------------------------------------------------

/// `full`: rebuild the NAT table from scratch rather than applying the difference.
pub async fn converge_router(
    c: &Ctx<'_>,
    old: Option<&Router>,
    new: &Router,
    full: bool,
) -> Result<()> {
    let mut old = old;
    if let Some(o) = old.filter(|o| o.namespace != new.namespace) {
        remove_router(c, o).await?;
        old = None;
    }
    let (ns, inner, created) = enter_ns(&new.namespace).await?;
    // A namespace made now holds nothing of the old one: its NAT table is built from scratch.
    let full = full || created;
    netns::sysctl(Some(ns.clone()), "net/ipv4/ip_forward", "1").await?;

    // Interfaces and gateways that went away (or got other devices): their host ends.
    if let Some(o) = old {
        for oi in &o.interfaces {
            let kept = new
                .interfaces
                .iter()
                .any(|n| n.host_device == oi.host_device && n.device == oi.device);
            if !kept {
                c.host.delete(&oi.host_device).await?;
                inner.delete(&oi.device).await?;
            }
        }
        if let Some(og) = &o.gateway {
            let kept = new
                .gateway
                .as_ref()
                .is_some_and(|g| g.host_device == og.host_device && g.device == og.device);
            if !kept {
                c.host.delete(&og.host_device).await?;
                inner.delete(&og.device).await?;
            }
        }
    }
    for i in &new.interfaces {
        converge_veth(
            c,
            &ns,
            &inner,
            &VethEnd {
                host_dev: &i.host_device,
                inner_dev: &i.device,
                mac: i.mac,
                mtu: i.mtu,
                bridge: &i.bridge,
                addrs: vec![i.address],
            },
        )
        .await?;
    }
    match &new.gateway {
        Some(g) => {
            // The floating addresses as /32 on the gateway, so the router answers ARP for them.
            let mut addrs = vec![g.address];
            addrs.extend(new.floating.keys().map(|f| Ipv4Net::from(*f)));
            converge_veth(
                c,
                &ns,
                &inner,
                &VethEnd {
                    host_dev: &g.host_device,
                    inner_dev: &g.device,
                    mac: g.mac,
                    mtu: g.mtu,
                    bridge: &g.bridge,
                    addrs,
                },
            )
            .await?;
            match g.default_gateway {
                Some(gw) => inner.default_route(gw).await?,
                None => inner.del_default_route().await?,
            }
        }
        None => inner.del_default_route().await?,
    }

    let nat = Nft::new(Some(ns));
    let script = match old {
        Some(o) if !full => {
            let mut s = nft::Script::new();
            if o.snat_inputs() != new.snat_inputs() {
                s.append(nft::nat_rewrite_post(new));
            }
            nft::nat_fip_diff(&mut s, &o.floating, &new.floating);
            s
        }
        _ => nft::nat_create(new),
    };
    nat.apply(&script)
        .await
        .with_context(|| format!("NAT of router {}", new.id))
}

pub async fn remove_router(c: &Ctx<'_>, old: &Router) -> Result<()> {
    netns::del(&old.namespace).await?;
    for dev in old
        .interfaces
        .iter()
        .map(|i| &i.host_device)
        .chain(old.gateway.iter().map(|g| &g.host_device))
    {
        c.host.delete(dev).await?;
    }
    Ok(())
}
