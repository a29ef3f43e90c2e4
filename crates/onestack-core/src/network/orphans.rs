//! What the leader's port reaper needs from the network service: the servers compute ports are
//! bound to, and when each binding last changed.

use super::model::Port;
use super::{NetworkService, Rec, PORT};
use crate::CoreResult;
use onestack_store::NetFilter;

impl NetworkService {
    /// `(server id, last change)` of every port a server holds (`device_owner` `compute:…`).
    pub async fn compute_port_bindings(&self) -> CoreResult<Vec<(String, String)>> {
        let ports: Vec<Rec<Port>> = self.all(NetFilter::of(PORT)).await?;
        Ok(ports
            .into_iter()
            .filter(|p| p.val.device_owner.starts_with("compute:") && !p.val.device_id.is_empty())
            .map(|p| (p.val.device_id, p.row.updated_at))
            .collect())
    }
}
