//! Networking: Neutron's model (networks, subnets, ports, routers, floating IPs, security groups)
//! and what each host must build of it.

pub mod proto;
