//! The controllers of one database: each records where its APIs answer and beats a heartbeat;
//! the one holding the leader lease (`LockName::Leader`) marks itself. Agents learn the other
//! controllers from here, identity rewrites catalogs with it, and `status` shows it.

use crate::{Result, Store};

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ControllerRecord {
    /// This controller's name (its host name, or `compute.host` in its config).
    pub name: String,
    /// JSON object: service type (and `internal`) → this controller's base URL.
    pub endpoints: String,
    pub started_at: String,
    /// Last heartbeat, µs since the epoch.
    pub heartbeat_us: i64,
    /// Since when this controller holds the leader lease (None: it does not).
    pub leader_since_us: Option<i64>,
}

impl ControllerRecord {
    /// Every base URL of this controller, by service type (empty when the record is unreadable).
    pub fn endpoints(&self) -> std::collections::HashMap<String, String> {
        serde_json::from_str(&self.endpoints).unwrap_or_default()
    }

    /// The base URL of `service` (e.g. `compute`, `identity`) at this controller.
    pub fn endpoint(&self, service: &str) -> Option<String> {
        self.endpoints().remove(service)
    }
}

impl Store {
    /// Records a heartbeat of controller `name`. `leader`: it holds the lease now, so every
    /// other controller's mark is cleared in the same transaction (one leader on record).
    pub async fn controller_heartbeat(
        &self,
        name: &str,
        endpoints: &str,
        started_at: &str,
        now_us: i64,
        leader: bool,
    ) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        let updated = sqlx::query(
            "UPDATE controllers SET endpoints = $2, started_at = $3, heartbeat_us = $4, \
             leader_since_us = CASE WHEN $5 = 0 THEN NULL \
                                    ELSE COALESCE(leader_since_us, $4) END \
             WHERE name = $1",
        )
        .bind(name)
        .bind(endpoints)
        .bind(started_at)
        .bind(now_us)
        .bind(i64::from(leader))
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            sqlx::query(
                "INSERT INTO controllers (name, endpoints, started_at, heartbeat_us, \
                 leader_since_us) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(name)
            .bind(endpoints)
            .bind(started_at)
            .bind(now_us)
            .bind(leader.then_some(now_us))
            .execute(&mut *tx)
            .await?;
        }
        if leader {
            sqlx::query("UPDATE controllers SET leader_since_us = NULL WHERE name <> $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every controller on record, by name.
    pub async fn list_controllers(&self) -> Result<Vec<ControllerRecord>> {
        Ok(sqlx::query_as(
            "SELECT name, endpoints, started_at, heartbeat_us, leader_since_us \
             FROM controllers ORDER BY name",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// Takes a controller off the record (it left, or was stopped for good).
    pub async fn remove_controller(&self, name: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM controllers WHERE name = $1")
            .bind(name)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_leader_on_record() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&format!("sqlite://{}/s.db", dir.path().display()))
            .await
            .expect("open");
        let ep = r#"{"compute":"http://198.18.0.1:8774"}"#;
        store
            .controller_heartbeat("a", ep, "t", 10, true)
            .await
            .expect("a");
        store
            .controller_heartbeat("b", ep, "t", 11, false)
            .await
            .expect("b");
        store
            .controller_heartbeat("a", ep, "t", 12, true)
            .await
            .expect("a again");
        let all = store.list_controllers().await.expect("list");
        assert_eq!(all.len(), 2);
        assert_eq!(
            all[0].leader_since_us,
            Some(10),
            "leadership keeps its start"
        );
        assert_eq!(all[1].leader_since_us, None);
        assert_eq!(all[0].heartbeat_us, 12);
        // b takes over: a's mark goes in the same step.
        store
            .controller_heartbeat("b", ep, "t", 20, true)
            .await
            .expect("b leads");
        let all = store.list_controllers().await.expect("list");
        assert_eq!(all[0].leader_since_us, None);
        assert_eq!(all[1].leader_since_us, Some(20));
        assert_eq!(
            all[1].endpoint("compute").as_deref(),
            Some("http://198.18.0.1:8774")
        );
        assert!(store.remove_controller("a").await.expect("rm"));
        assert_eq!(store.list_controllers().await.expect("list").len(), 1);
    }
}
