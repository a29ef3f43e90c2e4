//! The compute agent: one per compute host. It registers the host, heartbeats, and reconciles the
//! host's VMs to the desired state the controller serves over its internal API.

pub mod access;
pub mod agent;
pub mod client;
pub mod configdrive;
pub mod driver;
pub mod host;
pub mod http;
pub mod metadata;
pub mod metrics;
pub mod net;
pub mod qemu;
pub mod retry;
