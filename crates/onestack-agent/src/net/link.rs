//! Links, addresses and routes over rtnetlink, in one namespace per [`Links`]. Every operation is
//! idempotent (create if absent, then set), so the same calls serve creation, repair and startup
//! against existing state.

use super::netns;
use super::validate::{IfName, Mac};
use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// What we look at of an existing link.
#[derive(Clone, Debug, Default)]
pub struct Link {
    pub name: String,
    pub index: u32,
    pub kind: Option<String>,
    pub master: Option<u32>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    pub mtu: Option<u32>,
}

/// Attributes to set on a link in one request; None leaves one alone.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub mtu: Option<u32>,
    pub mac: Option<Mac>,
    pub master: Option<u32>,
    pub up: Option<bool>,
}

pub struct Links {
    h: Handle,
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

impl Links {
    pub async fn open(ns: Option<PathBuf>) -> Result<Self> {
        Ok(Self {
            h: netns::netlink(ns).await?,
        })
    }

    pub async fn get(&self, name: &IfName) -> Result<Option<Link>> {
        let mut req = self
            .h
            .link()
            .get()
            .match_name(name.as_str().to_owned())
            .execute();
        match req.try_next().await {
            Ok(Some(msg)) => Ok(Some(describe(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up link {name}")),
        }
    }

    pub async fn index(&self, name: &IfName) -> Result<Option<u32>> {
        Ok(self.get(name).await?.map(|l| l.index))
    }

    /// Every link of the namespace by name, in one dump.
    pub async fn dump(&self) -> Result<std::collections::HashMap<String, Link>> {
        let msgs: Vec<LinkMessage> = self
            .h
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .context("listing links")?;
        Ok(msgs
            .iter()
            .map(describe)
            .map(|l| (l.name.clone(), l))
            .collect())
    }

    /// Every IPv4 address of the namespace by link index, in one dump.
    pub async fn addr_dump(&self) -> Result<std::collections::HashMap<u32, Vec<Ipv4Net>>> {
        let msgs: Vec<_> = self
            .h
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .context("listing addresses")?;
        let mut out: std::collections::HashMap<u32, Vec<Ipv4Net>> = Default::default();
        for msg in msgs {
            for a in &msg.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                    if let Ok(net) = Ipv4Net::new(*ip, msg.header.prefix_len) {
                        out.entry(msg.header.index).or_default().push(net);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The gateway of the main table's IPv4 default route, if there is one.
    pub async fn default_gateway(&self) -> Result<Option<Ipv4Addr>> {
        use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
        let msg = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let routes: Vec<_> = self
            .h
            .route()
            .get(msg)
            .execute()
            .try_collect()
            .await
            .context("listing routes")?;
        Ok(routes
            .iter()
            .filter(|r| {
                r.header.destination_prefix_length == 0
                    && r.header.table == rtnetlink::packet_route::route::RouteHeader::RT_TABLE_MAIN
            })
            .find_map(|r| {
                r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(gw)) => Some(*gw),
                    _ => None,
                })
            }))
    }

    /// Index of `name`, which must exist.
    pub async fn require(&self, name: &IfName) -> Result<u32> {
        self.index(name)
            .await?
            .with_context(|| format!("link {name} does not exist"))
    }

    /// Bridge `name`, created if absent, up, with `mtu`. A device of that name that is not a
    /// bridge is someone else's: an error, not something to delete.
    pub async fn ensure_bridge(&self, name: &IfName, mtu: u32) -> Result<u32> {
        if let Some(l) = self.get(name).await? {
            if l.kind.as_deref() != Some("bridge") {
                anyhow::bail!(
                    "a device named {name} exists and is not a bridge ({})",
                    l.kind.as_deref().unwrap_or("no kind")
                );
            }
        } else {
            let msg = LinkBridge::new(name.as_str()).mtu(mtu).build();
            match self.h.link().add(msg).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(e).with_context(|| format!("creating bridge {name}")),
            }
        }
        let index = self.require(name).await?;
        self.set(
            index,
            name,
            &Settings {
                mtu: Some(mtu),
                up: Some(true),
                ..Default::default()
            },
        )
        .await?;
        Ok(index)
    }

    /// A VXLAN device `name` (VNI `vni`, source `local`, UDP 4789, learning on so the bridge and
    /// the device learn where remote MACs are); created if absent.
    pub async fn ensure_vxlan(
        &self,
        name: &IfName,
        vni: u32,
        local: Ipv4Addr,
        mtu: u32,
    ) -> Result<u32> {
        if self.index(name).await?.is_none() {
            let msg = LinkVxlan::new(name.as_str(), vni)
                .local(local)
                .port(onestack_core::network::proto::VXLAN_PORT)
                .learning(true)
                .mtu(mtu)
                .build();
            match self.h.link().add(msg).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(e).with_context(|| format!("creating VXLAN device {name}")),
            }
        }
        self.require(name).await
    }

    /// Adds (`add`) or removes a flooding entry of a VXLAN device: broadcast and unknown unicast
    /// are copied to `peer` (`bridge fdb append 00:00:00:00:00:00 dev … dst …`).
    pub async fn flood_entry(
        &self,
        index: u32,
        name: &IfName,
        peer: Ipv4Addr,
        add: bool,
    ) -> Result<()> {
        use rtnetlink::packet_core::{
            NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST,
        };
        use rtnetlink::packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
        };
        use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                peer,
            )));
        let mut req = NetlinkMessage::from(if add {
            RouteNetlinkMessage::NewNeighbour(msg)
        } else {
            RouteNetlinkMessage::DelNeighbour(msg)
        });
        req.header.flags = if add {
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND
        } else {
            NLM_F_REQUEST | NLM_F_ACK
        };
        let mut h = self.h.clone();
        let mut resp = h
            .request(req)
            .with_context(|| format!("flooding entry {peer} on {name}"))?;
        while let Some(m) = futures_util::StreamExt::next(&mut resp).await {
            if let NetlinkPayload::Error(e) = m.payload {
                let code = e.code.map(|c| -c.get());
                // Already there (add) or already gone (delete): the wanted state holds.
                if (add && code == Some(libc::EEXIST)) || (!add && code == Some(libc::ENOENT)) {
                    return Ok(());
                }
                return Err(rtnetlink::Error::NetlinkError(e))
                    .with_context(|| format!("flooding entry {peer} on {name}"));
            }
        }
        Ok(())
    }

    /// Creates veth `a` ↔ `b` in this namespace (both ends here; move one with [`Self::move_to`]).
    pub async fn add_veth(&self, a: &IfName, b: &IfName) -> Result<()> {
        let msg = LinkVeth::new(a.as_str(), b.as_str()).build();
        self.h
            .link()
            .add(msg)
            .execute()
            .await
            .with_context(|| format!("creating veth {a} <-> {b}"))
    }

    pub async fn set(&self, index: u32, name: &IfName, s: &Settings) -> Result<()> {
        let mut b = LinkUnspec::new_with_index(index);
        if let Some(mtu) = s.mtu {
            b = b.mtu(mtu);
        }
        if let Some(mac) = s.mac {
            b = b.address(mac.0.to_vec());
        }
        if let Some(master) = s.master {
            b = b.controller(master);
        }
        match s.up {
            Some(true) => b = b.up(),
            Some(false) => b = b.down(),
            None => {}
        }
        self.h
            .link()
            .set(b.build())
            .execute()
            .await
            .with_context(|| format!("setting {s:?} on link {name}"))
    }

    /// Takes link `name` out of its bridge.
    pub async fn release(&self, index: u32, name: &IfName) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).nocontroller().build();
        self.h
            .link()
            .set(msg)
            .execute()
            .await
            .with_context(|| format!("releasing link {name} from its bridge"))
    }

    /// Moves link `name` into the named namespace.
    pub async fn move_to(&self, name: &IfName, ns: PathBuf) -> Result<()> {
        let index = self.require(name).await?;
        let f = std::fs::File::open(&ns)
            .with_context(|| format!("opening namespace {}", ns.display()))?;
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(f.as_raw_fd())
            .build();
        // `f` stays open until the kernel has answered.
        let r = self.h.link().set(msg).execute().await;
        drop(f);
        r.with_context(|| format!("moving link {name} to {}", ns.display()))
    }

    /// Deletes link `name` if present; true if it was there.
    pub async fn delete(&self, name: &IfName) -> Result<bool> {
        let Some(index) = self.index(name).await? else {
            return Ok(false);
        };
        match self.h.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("deleting link {name}")),
        }
    }

    /// Makes the link's IPv4 addresses exactly `want` (host bits and prefix length count).
    pub async fn sync_addrs(&self, index: u32, name: &IfName, want: &[Ipv4Net]) -> Result<()> {
        let have: Vec<_> = self
            .h
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .with_context(|| format!("listing addresses of {name}"))?;
        let mut present = Vec::new();
        for msg in have {
            let addr = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let Some(addr) = addr else { continue };
            let net = Ipv4Net::new(addr, msg.header.prefix_len)
                .with_context(|| format!("address on {name}"))?;
            if want.contains(&net) {
                present.push(net);
            } else {
                self.h
                    .address()
                    .del(msg)
                    .execute()
                    .await
                    .with_context(|| format!("removing {net} from {name}"))?;
            }
        }
        for net in want.iter().filter(|n| !present.contains(n)) {
            match self
                .h
                .address()
                .add(index, IpAddr::V4(net.addr()), net.prefix_len())
                .execute()
                .await
            {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(e).with_context(|| format!("adding {net} to {name}")),
            }
        }
        Ok(())
    }

    /// Sets (or replaces) the IPv4 default route.
    pub async fn default_route(&self, gw: Ipv4Addr) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .gateway(gw)
            .build();
        self.h
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .with_context(|| format!("setting the default route via {gw}"))
    }

    /// Removes the IPv4 default route if there is one.
    pub async fn del_default_route(&self) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .build();
        match self.h.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(e).context("removing the default route"),
        }
    }
}

fn describe(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        up: msg
            .header
            .flags
            .contains(rtnetlink::packet_route::link::LinkFlags::Up),
        ..Default::default()
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = Some(*m),
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}
