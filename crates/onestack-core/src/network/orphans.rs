//! What the leader's port reaper needs from the network service: the servers compute ports are
//! bound to, and when each binding last changed; and, at start-up, which device each port of an
//! older cloud really is attached to.

use super::model::*;
use super::*;

impl NetworkService {
    /// `(server id, last change)` of every port compute attached to a server.
    pub async fn compute_port_bindings(&self) -> CoreResult<Vec<(String, String)>> {
        let ports: Vec<Rec<Port>> = self.all(NetFilter::of(PORT)).await?;
        Ok(ports
            .into_iter()
            .filter(|p| p.val.is_server_nic(&p.val.device_id))
            .map(|p| (p.val.device_id, p.row.updated_at))
            .collect())
    }

    /// Records, for ports written before OneStack kept it, whether the service attached each to
    /// its device (`Port::bound_device`), judged the way the service would have made it: a
    /// server's port of the server's project, a router's leg of the router's project, a
    /// network's own DHCP port, the gateway and floating ports their records name. A port that
    /// names another project's device was a user's label and stays attached to nothing. Runs at
    /// start-up; idempotent (only records without the mark are read twice).
    pub async fn backfill_attachments(&self) -> CoreResult<usize> {
        let ports: Vec<Rec<Port>> = self.all(NetFilter::of(PORT)).await?;
        if ports.iter().all(|p| p.val.bound_device.is_some()) {
            return Ok(0);
        }
        let networks: Vec<Rec<Network>> = self.all(NetFilter::of(NETWORK)).await?;
        let routers: Vec<Rec<Router>> = self.all(NetFilter::of(ROUTER)).await?;
        let fips: Vec<Rec<FloatingIp>> = self.all(NetFilter::of(FLOATINGIP)).await?;
        let mut marks = Vec::new();
        for p in ports.iter().filter(|p| p.val.bound_device.is_none()) {
            let v = &p.val;
            let genuine = if v.device_id.is_empty() {
                false
            } else if v.compute_owned {
                true
            } else if v.device_owner == OWNER_DHCP {
                v.device_id == dhcp_device(&v.network_id)
                    && networks
                        .iter()
                        .any(|n| n.val.id == v.network_id && n.val.project_id == v.project_id)
            } else if v.device_owner == OWNER_ROUTER_INTERFACE {
                routers
                    .iter()
                    .any(|r| r.val.id == v.device_id && r.val.project_id == v.project_id)
            } else if v.device_owner == OWNER_ROUTER_GATEWAY {
                routers.iter().any(|r| {
                    r.val.id == v.device_id
                        && r.val.gateway.as_ref().is_some_and(|g| g.port_id == v.id)
                })
            } else if v.device_owner == OWNER_FLOATINGIP {
                fips.iter()
                    .any(|f| f.val.id == v.device_id && f.val.floating_port_id == v.id)
            } else if v.device_owner.starts_with("compute:") {
                match self.store.get_instance(&v.device_id).await {
                    Ok(i) => i.project_id == v.project_id,
                    // A server gone since: the reaper releases what it held.
                    Err(StoreError::NotFound) => true,
                    Err(e) => return Err(internal(e)),
                }
            } else {
                false
            };
            marks.push((v.id.clone(), genuine));
        }
        let marks = &marks;
        self.write("backfill port attachments", |mut tx| async move {
            let mut n = 0;
            for (id, genuine) in marks {
                let Ok(mut p) = self.fetch::<Port>(&mut tx, PORT, id).await else {
                    continue;
                };
                if p.val.bound_device.is_some() {
                    continue;
                }
                p.val.bound_device = Some(if *genuine {
                    p.val.device_id.clone()
                } else {
                    String::new()
                });
                let row = updated_row(&p.row, &p.val, &p.val.name, p.row.device_id.as_deref())?;
                tx.update(&row).await.map_err(store_err)?;
                n += 1;
            }
            self.commit(tx).await?;
            Ok(n)
        })
        .await
    }
}
