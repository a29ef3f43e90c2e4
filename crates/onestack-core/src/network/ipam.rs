//! IPv4 address management: subnet validation, default gateway and pools, and picking a free
//! address. Pure functions; the store's unique (network, address) key is what makes allocation safe
//! under concurrency, these only choose.

use super::model::AllocationPool;
use ipnet::Ipv4Net;
use std::collections::HashSet;
use std::net::Ipv4Addr;

pub fn parse_cidr(cidr: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = cidr
        .trim()
        .parse()
        .map_err(|_| format!("'{cidr}' is not a valid IPv4 CIDR"))?;
    if net.prefix_len() > 30 {
        return Err(format!(
            "Invalid input for cidr. Reason: '{cidr}' is too small, it must be /30 or larger."
        ));
    }
    if net.network() != net.addr() {
        return Err(format!(
            "Invalid input for cidr. Reason: '{cidr}' isn't a recommended CIDR, use '{}' instead.",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Ranges a subnet must not touch: "this network" (0/8), loopback, link-local (the metadata
/// address lives there), multicast and the reserved class E with the broadcast address. Neutron
/// refuses the first ones for DHCP subnets; here every subnet has a data plane, so all are refused.
pub fn check_tenant_cidr(net: Ipv4Net) -> Result<(), String> {
    if net.prefix_len() == 0 {
        return Err(format!(
            "Invalid input for operation: {net} is not a valid subnet: it covers every address."
        ));
    }
    const SPECIAL: &[(&str, &str)] = &[
        ("0.0.0.0/8", "\"this network\" IP subnet is not supported."),
        ("127.0.0.0/8", "Loopback IP subnet is not supported."),
        ("169.254.0.0/16", "Link-local IP subnet is not supported."),
        ("224.0.0.0/4", "Multicast IP subnet is not supported."),
        (
            "240.0.0.0/4",
            "Reserved (class E) IP subnet is not supported.",
        ),
    ];
    for (range, why) in SPECIAL {
        if range.parse::<Ipv4Net>().is_ok_and(|r| overlaps(r, net)) {
            return Err(format!("Invalid input for operation: {why}"));
        }
    }
    Ok(())
}

pub fn parse_ip(ip: &str) -> Result<Ipv4Addr, String> {
    ip.trim()
        .parse()
        .map_err(|_| format!("'{ip}' is not a valid IPv4 address"))
}

/// First usable address (Neutron's default gateway).
pub fn default_gateway(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1)
}

fn first_host(net: Ipv4Net) -> u32 {
    u32::from(net.network()) + 1
}

fn last_host(net: Ipv4Net) -> u32 {
    u32::from(net.broadcast()) - 1
}

/// The whole host range minus the gateway, split around it.
pub fn default_pools(net: Ipv4Net, gateway: Option<Ipv4Addr>) -> Vec<AllocationPool> {
    let (lo, hi) = (first_host(net), last_host(net));
    let mut ranges = vec![(lo, hi)];
    if let Some(gw) = gateway.map(u32::from).filter(|g| (lo..=hi).contains(g)) {
        ranges = vec![(lo, gw.saturating_sub(1)), (gw + 1, hi)];
        ranges.retain(|(a, b)| a <= b && *a >= lo && *b <= hi);
    }
    ranges
        .into_iter()
        .map(|(a, b)| AllocationPool {
            start: Ipv4Addr::from(a).to_string(),
            end: Ipv4Addr::from(b).to_string(),
        })
        .collect()
}

/// Checks user-given pools: inside the subnet's host range, start ≤ end, not overlapping each
/// other, not containing the gateway. Returns them normalized.
pub fn validate_pools(
    net: Ipv4Net,
    gateway: Option<Ipv4Addr>,
    pools: &[AllocationPool],
) -> Result<Vec<AllocationPool>, String> {
    let mut ranges = Vec::new();
    for p in pools {
        let (s, e) = (parse_ip(&p.start)?, parse_ip(&p.end)?);
        let (a, b) = (u32::from(s), u32::from(e));
        if a > b {
            return Err(format!("Invalid allocation pool {}-{}.", p.start, p.end));
        }
        if a < first_host(net) || b > last_host(net) {
            return Err(format!(
                "The allocation pool {}-{} spans beyond the subnet cidr {net}.",
                p.start, p.end
            ));
        }
        if let Some(gw) = gateway.map(u32::from) {
            if (a..=b).contains(&gw) {
                return Err(format!(
                    "Gateway ip {} conflicts with allocation pool {}-{}.",
                    Ipv4Addr::from(gw),
                    p.start,
                    p.end
                ));
            }
        }
        ranges.push((a, b));
    }
    ranges.sort();
    for w in ranges.windows(2) {
        if w[1].0 <= w[0].1 {
            return Err("Found overlapping allocation pools.".into());
        }
    }
    Ok(ranges
        .into_iter()
        .map(|(a, b)| AllocationPool {
            start: Ipv4Addr::from(a).to_string(),
            end: Ipv4Addr::from(b).to_string(),
        })
        .collect())
}

pub fn in_pools(pools: &[AllocationPool], ip: Ipv4Addr) -> bool {
    let ip = u32::from(ip);
    pools.iter().any(|p| {
        matches!((parse_ip(&p.start), parse_ip(&p.end)),
            (Ok(s), Ok(e)) if (u32::from(s)..=u32::from(e)).contains(&ip))
    })
}

/// An address usable as a port's fixed IP: in the subnet's host range.
pub fn is_host_address(net: Ipv4Net, ip: Ipv4Addr) -> bool {
    (first_host(net)..=last_host(net)).contains(&u32::from(ip))
}

/// The lowest free address of the pools, or None when they are exhausted.
pub fn pick_free(pools: &[AllocationPool], used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    for p in pools {
        let (Ok(s), Ok(e)) = (parse_ip(&p.start), parse_ip(&p.end)) else {
            continue;
        };
        for n in u32::from(s)..=u32::from(e) {
            let ip = Ipv4Addr::from(n);
            if !used.contains(&ip) {
                return Some(ip);
            }
        }
    }
    None
}

pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// `fa:16:3e` (OpenStack's OUI) plus three random octets.
pub fn random_mac() -> String {
    let b: [u8; 3] = rand::random();
    format!("fa:16:3e:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

pub fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
        // Not multicast (low bit of the first octet), nor all zeros (neutron-lib's
        // INVALID_MAC_ADDRESSES; all ones is multicast already).
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
        && parts.iter().any(|p| *p != "00")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> Ipv4Net {
        parse_cidr(s).expect("cidr")
    }

    #[test]
    fn special_ranges_and_macs_are_refused() {
        for bad in [
            "0.0.0.0/0",
            "0.0.0.0/8",
            "127.0.0.0/8",
            "127.1.0.0/16",
            "169.254.169.0/24",
            "224.0.0.0/4",
            "239.1.2.0/24",
            "255.255.255.0/30",
            "126.0.0.0/7",
        ] {
            let n: Ipv4Net = bad.parse().expect("cidr");
            assert!(check_tenant_cidr(n).is_err(), "{bad}");
        }
        for good in [
            "198.18.0.0/15",
            "10.0.0.0/8",
            "1.0.0.0/8",
            "223.255.255.0/24",
        ] {
            let n: Ipv4Net = good.parse().expect("cidr");
            assert!(check_tenant_cidr(n).is_ok(), "{good}");
        }
        assert!(!valid_mac("00:00:00:00:00:00"));
        assert!(!valid_mac("ff:ff:ff:ff:ff:ff"));
        assert!(valid_mac("fa:16:3e:00:00:00"));
        assert!(valid_mac("00:00:00:00:00:01"));
    }

    #[test]
    fn defaults_exclude_network_broadcast_and_gateway() {
        let n = net("198.18.1.0/24");
        let gw = default_gateway(n);
        assert_eq!(gw.to_string(), "198.18.1.1");
        let pools = default_pools(n, Some(gw));
        assert_eq!(
            pools,
            vec![AllocationPool {
                start: "198.18.1.2".into(),
                end: "198.18.1.254".into()
            }]
        );
        let mid = default_pools(n, Some("198.18.1.100".parse().expect("ip")));
        assert_eq!(mid.len(), 2);
        assert_eq!(mid[0].end, "198.18.1.99");
        assert_eq!(mid[1].start, "198.18.1.101");
    }

    #[test]
    fn bad_cidrs_and_pools_are_refused() {
        assert!(parse_cidr("198.18.1.5/24").is_err());
        assert!(parse_cidr("198.18.1.0/31").is_err());
        assert!(parse_cidr("nonsense").is_err());
        let n = net("198.18.1.0/24");
        let gw = Some(default_gateway(n));
        let pool = |s: &str, e: &str| AllocationPool {
            start: s.into(),
            end: e.into(),
        };
        assert!(validate_pools(n, gw, &[pool("198.18.1.0", "198.18.1.9")]).is_err());
        assert!(validate_pools(n, gw, &[pool("198.18.1.1", "198.18.1.9")]).is_err());
        assert!(validate_pools(n, gw, &[pool("198.18.1.9", "198.18.1.3")]).is_err());
        assert!(validate_pools(
            n,
            gw,
            &[
                pool("198.18.1.2", "198.18.1.9"),
                pool("198.18.1.9", "198.18.1.20")
            ]
        )
        .is_err());
        assert!(validate_pools(n, gw, &[pool("198.18.1.10", "198.18.1.20")]).is_ok());
    }

    proptest! {
        /// Whatever is taken, a picked address is free, in a pool, and never the gateway.
        #[test]
        fn picked_addresses_are_free_and_in_pool(prefix in 24u8..=30, taken in proptest::collection::vec(0u32..256, 0..80)) {
            let n = Ipv4Net::new(Ipv4Addr::new(198, 18, 4, 0), prefix).expect("net").trunc();
            let gw = default_gateway(n);
            let pools = default_pools(n, Some(gw));
            let mut used: HashSet<Ipv4Addr> = taken.iter().map(|t| Ipv4Addr::from(u32::from(n.network()) + t)).collect();
            let mut seen = HashSet::new();
            while let Some(ip) = pick_free(&pools, &used) {
                prop_assert!(in_pools(&pools, ip));
                prop_assert!(ip != gw && is_host_address(n, ip));
                prop_assert!(seen.insert(ip));
                used.insert(ip);
            }
            // Exhausted: every pool address is used.
            for h in 0..(1u32 << (32 - prefix)) {
                let ip = Ipv4Addr::from(u32::from(n.network()) + h);
                if in_pools(&pools, ip) { prop_assert!(used.contains(&ip)); }
            }
        }
    }
}
