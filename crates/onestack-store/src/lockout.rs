//! Failed password logins per user, for Keystone's `[security_compliance]` lockout. Kept in the
//! store so every controller of a database counts the same failures; each step is one statement,
//! so failures counted by two controllers at once are all counted.

use crate::{Result, Store};

/// What one more failed login did to a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureCount {
    /// Failures in a row, this one included.
    pub failures: i64,
    /// This failure locked the account (it was not locked before).
    pub locked_now: bool,
}

impl Store {
    /// Whether the user's account is locked at `now_us`.
    pub async fn login_locked(&self, user_id: &str, now_us: i64) -> Result<bool> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT locked_until_us FROM login_failures WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some_and(|(until,)| until > now_us))
    }

    /// Counts a failed login. A lock that has run out starts the count again; the failure that
    /// reaches `attempts` locks the account until `now_us + lock_us`.
    pub async fn record_login_failure(
        &self,
        user_id: &str,
        now_us: i64,
        attempts: i64,
        lock_us: i64,
    ) -> Result<FailureCount> {
        sqlx::query(
            "INSERT INTO login_failures (user_id, failures, last_failure_us, locked_until_us) \
             VALUES ($1, 0, 0, 0) ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        let (failures,): (i64,) = sqlx::query_as(
            "UPDATE login_failures SET \
               failures = CASE WHEN locked_until_us > 0 AND locked_until_us <= $2 THEN 1 \
                               ELSE failures + 1 END, \
               locked_until_us = CASE WHEN locked_until_us > 0 AND locked_until_us <= $2 THEN 0 \
                                      ELSE locked_until_us END, \
               last_failure_us = $2 \
             WHERE user_id = $1 RETURNING failures",
        )
        .bind(user_id)
        .bind(now_us)
        .fetch_one(&self.pool)
        .await?;
        let mut locked_now = false;
        if failures >= attempts {
            let r = sqlx::query(
                "UPDATE login_failures SET locked_until_us = $2 \
                 WHERE user_id = $1 AND locked_until_us = 0",
            )
            .bind(user_id)
            .bind(now_us + lock_us)
            .execute(&self.pool)
            .await?;
            locked_now = r.rows_affected() == 1;
        }
        Ok(FailureCount {
            failures,
            locked_now,
        })
    }

    /// A successful login, or an admin's change of the account, ends the count and any lock.
    pub async fn clear_login_failures(&self, user_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM login_failures WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
