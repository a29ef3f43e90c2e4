//! The domain error type. The API layer maps each variant to a status code and the body shape of
//! the service that answers; `Internal` detail is logged, never shown to the user.

use onestack_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Over a size limit or out of storage (HTTP 413).
    #[error("{0}")]
    TooLarge(String),
    /// The resource disappeared while the request ran (HTTP 410).
    #[error("{0}")]
    Gone(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// An error with a service-specific type name (Neutron's `NeutronError.type`).
    #[error("{message}")]
    Typed {
        status: u16,
        kind: &'static str,
        message: String,
    },
}

pub type CoreResult<T> = Result<T, CoreError>;

impl CoreError {
    /// Maps a store error, naming the resource for a NotFound.
    pub fn from_store(e: StoreError, what: &str, id: &str) -> CoreError {
        match e {
            StoreError::NotFound => CoreError::NotFound(format!("Could not find {what}: {id}.")),
            StoreError::Conflict(_) => {
                CoreError::Conflict(format!("Conflict occurred attempting to store {what}."))
            }
            other => CoreError::Internal(other.to_string()),
        }
    }
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => CoreError::NotFound("Could not find the resource.".into()),
            StoreError::Conflict(m) => CoreError::Conflict(format!("Conflict: {m}")),
            other => CoreError::Internal(other.to_string()),
        }
    }
}
