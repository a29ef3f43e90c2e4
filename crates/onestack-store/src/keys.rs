//! The token keys (fernet), shared by every controller of the database: index 0 is the staged
//! key, the highest index the primary, the others still accepted (Keystone's repository layout,
//! in a table instead of a directory each controller would have to keep in sync).

use crate::{retry_transient, LockName, Result, Store};

impl Store {
    /// Every key, by index.
    pub async fn token_keys(&self) -> Result<Vec<(i64, String)>> {
        Ok(
            sqlx::query_as("SELECT idx, key_material FROM token_keys ORDER BY idx")
                .fetch_all(self.pool())
                .await?,
        )
    }

    /// Puts `keys` in place unless there are keys already (the first controller's start, or an
    /// import of a key directory); true when they were written.
    pub async fn init_token_keys(&self, keys: &[(i64, String)]) -> Result<bool> {
        let _lock = self.lock(LockName::TokenKeys).await?;
        retry_transient("init token keys", || async move {
            let mut tx = self.pool().begin().await?;
            // A write first: SQLite's write lock for another process's rotation or start.
            sqlx::query("DELETE FROM token_keys WHERE idx < 0")
                .execute(&mut *tx)
                .await?;
            let (n,): (i64,) = sqlx::query_as("SELECT CAST(COUNT(*) AS BIGINT) FROM token_keys")
                .fetch_one(&mut *tx)
                .await?;
            if n > 0 {
                return Ok(false);
            }
            for (i, k) in keys {
                sqlx::query("INSERT INTO token_keys (idx, key_material) VALUES ($1, $2)")
                    .bind(i)
                    .bind(k)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    /// Rotates in one serialized transaction: the staged key becomes the primary (the next
    /// index), `new_staged` is staged, and only the newest `keep` others stay.
    pub async fn rotate_token_keys(&self, new_staged: &str, keep: usize) -> Result<()> {
        let _lock = self.lock(LockName::TokenKeys).await?;
        retry_transient("rotate token keys", || async move {
            let mut tx = self.pool().begin().await?;
            sqlx::query("DELETE FROM token_keys WHERE idx < 0")
                .execute(&mut *tx)
                .await?;
            let (next,): (i64,) =
                sqlx::query_as("SELECT CAST(COALESCE(MAX(idx), 0) + 1 AS BIGINT) FROM token_keys")
                    .fetch_one(&mut *tx)
                    .await?;
            sqlx::query("UPDATE token_keys SET idx = $1 WHERE idx = 0")
                .bind(next)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO token_keys (idx, key_material) VALUES (0, $1)")
                .bind(new_staged)
                .execute(&mut *tx)
                .await?;
            let keep = i64::try_from(keep.max(1)).unwrap_or(i64::MAX);
            sqlx::query(
                "DELETE FROM token_keys WHERE idx > 0 AND idx NOT IN \
                 (SELECT idx FROM token_keys WHERE idx > 0 ORDER BY idx DESC LIMIT $1)",
            )
            .bind(keep)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}
