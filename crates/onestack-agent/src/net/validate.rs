//! Checked forms of every string from the controller that ends up in an nft script, a netlink
//! request, a dnsmasq file or a command argument. Everything downstream takes these types, never a
//! raw `String`, so no field of the wire format can inject a token, a newline or an option.

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;

/// A Linux interface name we manage: `^[a-z0-9-]{1,15}$` (IFNAMSIZ is 16 with the NUL). Stricter
/// than the kernel on purpose: it is quoted into nft scripts and passed to dnsmasq.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IfName(String);

impl IfName {
    pub fn parse(s: &str) -> Result<Self> {
        let ok = (1..=15).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            bail!("invalid interface name {s:?} (want ^[a-z0-9-]{{1,15}}$)");
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IfName {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}
impl From<IfName> for String {
    fn from(n: IfName) -> String {
        n.0
    }
}
impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An identifier (security group, port, network, router id) used inside nft object names and file
/// names: `^[A-Za-z0-9][A-Za-z0-9-]{0,63}$`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ident(String);

impl Ident {
    pub fn parse(s: &str) -> Result<Self> {
        let b = s.as_bytes();
        let ok = (1..=64).contains(&b.len())
            && b[0].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-');
        if !ok {
            bail!("invalid identifier {s:?} (want ^[A-Za-z0-9][A-Za-z0-9-]{{0,63}}$)");
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Ident {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}
impl From<Ident> for String {
    fn from(n: Ident) -> String {
        n.0
    }
}
impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A named network namespace (a file under /run/netns): `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`, so
/// it can be neither a path nor an option.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NsName(String);

impl NsName {
    pub fn parse(s: &str) -> Result<Self> {
        let b = s.as_bytes();
        let ok = (1..=64).contains(&b.len())
            && b[0].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
        if !ok {
            bail!("invalid namespace name {s:?}");
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NsName {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}
impl From<NsName> for String {
    fn from(n: NsName) -> String {
        n.0
    }
}
impl fmt::Display for NsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A unicast Ethernet address, printed as lowercase `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            bail!("invalid MAC address {s:?}");
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(&parts) {
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("invalid MAC address {s:?}");
            }
            *o = u8::from_str_radix(p, 16).with_context(|| format!("invalid MAC address {s:?}"))?;
        }
        if out[0] & 1 == 1 {
            bail!("MAC address {s:?} is multicast");
        }
        if out == [0; 6] {
            bail!("MAC address {s:?} is all zeros");
        }
        Ok(Self(out))
    }

    /// The MAC for the host end of a link whose other end (guest NIC or namespace end) carries
    /// `self`. It must differ: a bridge treats each port's own address as local, so a port whose
    /// MAC equalled the guest's would swallow frames meant for the guest. Like libvirt: `fe:` +
    /// the rest.
    pub fn host_side(self) -> Self {
        let mut m = self.0;
        m[0] = 0xfe;
        Self(m)
    }
}

impl TryFrom<String> for Mac {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}
impl From<Mac> for String {
    fn from(m: Mac) -> String {
        m.to_string()
    }
}
impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A DNS label for dnsmasq's hosts file: `^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostName(String);

impl HostName {
    pub fn parse(s: &str) -> Result<Self> {
        let b = s.as_bytes();
        let ok = (1..=63).contains(&b.len())
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-');
        if !ok {
            bail!("invalid host name {s:?}");
        }
        Ok(Self(s.to_owned()))
    }
}
impl TryFrom<String> for HostName {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}
impl From<HostName> for String {
    fn from(n: HostName) -> String {
        n.0
    }
}
impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn ipv4(s: &str) -> Result<Ipv4Addr> {
    s.parse()
        .with_context(|| format!("invalid IPv4 address {s:?}"))
}

/// `a.b.c.d/len`, host bits kept (an interface address).
pub fn ipv4_iface(s: &str) -> Result<Ipv4Net> {
    s.parse()
        .with_context(|| format!("invalid IPv4 interface address {s:?} (want a.b.c.d/len)"))
}

/// A CIDR (host bits cleared) or a bare address (as /32).
pub fn ipv4_prefix(s: &str) -> Result<Ipv4Net> {
    if s.contains('/') {
        let n: Ipv4Net = s
            .parse()
            .with_context(|| format!("invalid IPv4 CIDR {s:?}"))?;
        Ok(n.trunc())
    } else {
        Ok(Ipv4Net::from(ipv4(s)?))
    }
}

/// Drops prefixes covered by others and merges adjacent ones, so an nft interval set never gets
/// overlapping elements (which it refuses).
pub fn aggregate(prefixes: &[Ipv4Net]) -> Vec<Ipv4Net> {
    Ipv4Net::aggregate(&prefixes.to_vec())
}

/// Prints a prefix for nft: a /32 as a bare address.
pub fn nft_prefix(p: &Ipv4Net) -> String {
    if p.prefix_len() == 32 {
        p.addr().to_string()
    } else {
        p.trunc().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_reject_injection() {
        assert!(IfName::parse("tap3f1c2b7e9a4").is_ok());
        for bad in [
            "",
            "TAP",
            "tap0 ; flush",
            "tap\"x",
            "a234567890123456",
            "tap/x",
        ] {
            assert!(IfName::parse(bad).is_err(), "{bad}");
        }
        assert!(Ident::parse("3f1c2b7e-9a4d-4c1e-8f00-123456789abc").is_ok());
        for bad in ["", "-x", "a b", "a;b", "a}", "a\nb"] {
            assert!(Ident::parse(bad).is_err(), "{bad}");
        }
        assert!(NsName::parse("qdhcp-3f1c2b7e").is_ok());
        for bad in ["../etc", "-n", "a/b", ".x"] {
            assert!(NsName::parse(bad).is_err(), "{bad}");
        }
        assert!(HostName::parse("host-198-18-1-5").is_ok());
        for bad in ["-a", "a-", "a,b", "a b", "a.b"] {
            assert!(HostName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn macs() {
        let m = Mac::parse("FA:16:3e:00:0a:01").expect("valid");
        assert_eq!(m.to_string(), "fa:16:3e:00:0a:01");
        assert_eq!(m.host_side().to_string(), "fe:16:3e:00:0a:01");
        for bad in [
            "fa:16:3e:00:0a",
            "fa-16-3e-00-0a-01",
            "01:00:5e:00:00:01",
            "fa:16:3e:00:0a:1g",
        ] {
            assert!(Mac::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes() {
        assert_eq!(
            ipv4_prefix("198.18.1.7").expect("ok").to_string(),
            "198.18.1.7/32"
        );
        assert_eq!(
            ipv4_prefix("198.18.1.7/24").expect("ok").to_string(),
            "198.18.1.0/24"
        );
        assert!(ipv4_prefix("198.18.1.0/33").is_err());
        assert!(ipv4_prefix("fe80::1").is_err());
        let agg = aggregate(&[
            ipv4_prefix("198.18.1.5").expect("ok"),
            ipv4_prefix("198.18.1.0/24").expect("ok"),
        ]);
        assert_eq!(agg.len(), 1);
        assert_eq!(nft_prefix(&agg[0]), "198.18.1.0/24");
        assert_eq!(
            nft_prefix(&ipv4_prefix("198.18.1.5").expect("ok")),
            "198.18.1.5"
        );
    }
}
