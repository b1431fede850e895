//! SkyWalking's `authentication` metadata on every call to the upstreams, from a file
//! (`--authentication-file`, a Secret mounted in the pod), read again when it changes.
//!
//! OAP with its `authentication` setting refuses calls without the token. Batched reports
//! mix many clients' messages, so they cannot carry a client's token: the proxy carries
//! its own, on everything it sends upstream (batches, forwarded calls, health checks and
//! its telemetry), in place of whatever a client sent.

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::Duration;

use http::HeaderValue;

#[derive(Debug, thiserror::Error)]
pub enum AuthenticationError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} does not hold a usable token (empty, or not a valid header value)")]
    Unusable(PathBuf),
}

/// The token, kept current with its file.
pub struct Authentication {
    path: PathBuf,
    token: RwLock<HeaderValue>,
}

fn read(path: &PathBuf) -> Result<HeaderValue, AuthenticationError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthenticationError::Read {
        path: path.clone(),
        source,
    })?;
    // Secrets written by hand often end in a newline.
    let token = text.trim();
    if token.is_empty() {
        return Err(AuthenticationError::Unusable(path.clone()));
    }
    let mut value =
        HeaderValue::from_str(token).map_err(|_| AuthenticationError::Unusable(path.clone()))?;
    value.set_sensitive(true);
    Ok(value)
}

impl Authentication {
    pub fn load(path: PathBuf) -> Result<Authentication, AuthenticationError> {
        let token = read(&path)?;
        Ok(Authentication {
            path,
            token: RwLock::new(token),
        })
    }

    /// The `authentication` value to send.
    pub fn current(&self) -> HeaderValue {
        self.token.read().expect("never poisoned").clone()
    }

    /// Reads the file again whenever it changes, looking every `every`; an unusable
    /// change is reported and the last good token kept. Runs until aborted.
    pub async fn follow(self: std::sync::Arc<Self>, every: Duration) {
        crate::watched::reload(
            vec![self.path.clone()],
            every,
            "authentication token",
            &self.token,
            || read(&self.path),
        )
        .await
    }
}
