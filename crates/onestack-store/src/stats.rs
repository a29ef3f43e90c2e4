//! Cloud-wide counts for monitoring (`/metrics`): grouped in the database, so a scrape reads a
//! few rows however many servers and volumes there are.

use crate::{Result, Store};

impl Store {
    /// Instances that are not deleted, by `vm_state`.
    pub async fn count_instances_by_vm_state(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT vm_state, CAST(COUNT(*) AS BIGINT) FROM instances WHERE deleted = 0 \
             GROUP BY vm_state ORDER BY vm_state",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// Volumes by `status` (a deleted volume's row is gone).
    pub async fn count_volumes_by_status(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT status, CAST(COUNT(*) AS BIGINT) FROM volumes GROUP BY status ORDER BY status",
        )
        .fetch_all(self.pool())
        .await?)
    }
}
