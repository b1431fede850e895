//! Reading values from OAP over GraphQL (reqwest): MQE first, and the metrics-v2 queries
//! for an OAP without MQE (older than 9.5), remembered once found out. Windows are written
//! in the OAP's time zone and by the OAP's clock, both read with `getTimeInfo` and
//! refreshed every few minutes.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::entity::Entity;
use crate::oap::{self, OapVersion, QueryError, Reading, Window};

/// How often the OAP's clock and time zone are read again.
const CLOCK_REFRESH: Duration = Duration::from_secs(300);

/// Where and how OAP is reached.
#[derive(Clone, Debug)]
pub struct OapConfig {
    /// The GraphQL endpoint, e.g. `http://oap:12800/graphql`.
    pub url: String,
    pub timeout: Duration,
    /// HTTP basic auth, when OAP sits behind it.
    pub basic_auth: Option<(String, String)>,
}

/// What is read: an OAP metric, or a named MQE expression.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Metric(String),
    Expression { name: String, expression: String },
}

/// Why no value could be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// OAP could not be reached or answered something unreadable (HTTP 503).
    #[error("OAP at {url} is unavailable: {reason}")]
    Unavailable { url: String, reason: String },
    /// OAP refused the query: an unknown metric, a bad expression (HTTP 404).
    #[error("{0}")]
    Refused(String),
    /// An expression on an OAP without MQE (HTTP 404).
    #[error("expression {0:?} needs OAP 9.5 or later (MQE); this OAP only serves plain metrics")]
    NeedsMqe(String),
}

#[derive(Clone, Copy, Debug)]
struct Clock {
    offset_minutes: i32,
    /// OAP's clock minus ours, in ms.
    skew_ms: i64,
    read_at: Instant,
}

pub struct OapReader {
    http: reqwest::Client,
    config: OapConfig,
    /// Set once OAP turned out not to serve MQE.
    metrics_v2_only: AtomicBool,
    clock: Mutex<Option<Clock>>,
    /// OAP's version (`None`: it could not say), and when it was asked; read for labeled
    /// metrics, whose labels OAP 10 selects by name.
    version: Mutex<Option<(Option<OapVersion>, Instant)>>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl OapReader {
    /// The process's rustls crypto provider must be installed first (the binaries install
    /// ring at start).
    pub fn new(config: OapConfig) -> Result<OapReader, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .build()?;
        Ok(OapReader {
            http,
            config,
            metrics_v2_only: AtomicBool::new(false),
            clock: Mutex::new(None),
            version: Mutex::new(None),
        })
    }

    /// Where and how this OAP is reached.
    pub fn config(&self) -> &OapConfig {
        &self.config
    }

    fn unavailable(&self, reason: impl Into<String>) -> ReadError {
        ReadError::Unavailable {
            url: self.config.url.clone(),
            reason: reason.into(),
        }
    }

    async fn post(&self, body: &Value) -> Result<Value, ReadError> {
        let mut request = self.http.post(&self.config.url).json(body);
        if let Some((user, password)) = &self.config.basic_auth {
            request = request.basic_auth(user, Some(password));
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.unavailable(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.unavailable(format!("HTTP {status}")));
        }
        response
            .json()
            .await
            .map_err(|e| self.unavailable(format!("answer is not JSON: {e}")))
    }

    /// The OAP's zone and clock, read again every few minutes. An OAP that cannot say is
    /// read as UTC by this host's clock.
    async fn clock(&self) -> Result<Clock, ReadError> {
        if let Some(clock) = *self.clock.lock().expect("never poisoned")
            && clock.read_at.elapsed() < CLOCK_REFRESH
        {
            return Ok(clock);
        }
        let answer = self.post(&oap::time_info_request()).await?;
        let clock = match oap::time_info(&answer) {
            Ok((oap_now, offset_minutes)) => Clock {
                offset_minutes,
                skew_ms: oap_now - now_ms(),
                read_at: Instant::now(),
            },
            Err(err) => {
                tracing::warn!(error = %err, "OAP's time zone is unknown; windows are written in UTC");
                Clock {
                    offset_minutes: 0,
                    skew_ms: 0,
                    read_at: Instant::now(),
                }
            }
        };
        *self.clock.lock().expect("never poisoned") = Some(clock);
        Ok(clock)
    }

    /// OAP's version, asked again every few minutes (an upgrade changes how labels are
    /// written). An OAP that does not answer the question is read as before 10.
    async fn version(&self) -> Result<Option<OapVersion>, ReadError> {
        if let Some((version, read_at)) = *self.version.lock().expect("never poisoned")
            && read_at.elapsed() < CLOCK_REFRESH
        {
            return Ok(version);
        }
        let version = oap::version_of(&self.post(&oap::version_request()).await?);
        if version.is_none() {
            tracing::warn!(url = %self.config.url, "OAP did not say its version; labels are written as before OAP 10");
        }
        *self.version.lock().expect("never poisoned") = Some((version, Instant::now()));
        Ok(version)
    }

    async fn window(&self) -> Result<Window, ReadError> {
        let clock = self.clock().await?;
        Ok(oap::window(
            now_ms() + clock.skew_ms,
            clock.offset_minutes,
            oap::WINDOW_MINUTES,
        ))
    }

    /// Reads `target` for `entity`.
    pub async fn read(&self, target: &Target, entity: &Entity) -> Result<Reading, ReadError> {
        let window = self.window().await?;
        if !self.metrics_v2_only.load(Ordering::Relaxed) {
            let expression = match (target, entity.label.as_deref()) {
                (Target::Metric(metric), None) => format!("latest({metric})"),
                (Target::Metric(metric), label @ Some(_)) => {
                    let version = self.version().await?;
                    oap::latest(metric, label, version).map_err(ReadError::Refused)?
                }
                (Target::Expression { expression, .. }, _) => expression.clone(),
            };
            let answer = self
                .post(&oap::mqe_request(&expression, entity, &window))
                .await?;
            match oap::mqe_reading(&answer, &expression) {
                Ok(reading) => return Ok(reading),
                Err(QueryError::Unsupported(_)) => {
                    tracing::warn!(url = %self.config.url, "OAP has no MQE (older than 9.5): reading with the metrics-v2 queries");
                    self.metrics_v2_only.store(true, Ordering::Relaxed);
                }
                // A labeled metric MQE will not read: metrics v2 reads labels as SWCK did.
                Err(QueryError::Refused(message))
                    if matches!(target, Target::Metric(_)) && entity.label.is_some() =>
                {
                    tracing::debug!(%message, "MQE refused a labeled read; trying metrics v2");
                    return self
                        .read_v2(target, entity, &window)
                        .await
                        .map_err(|v2| match v2 {
                            ReadError::Refused(v2) => {
                                ReadError::Refused(format!("{message} (and metrics v2: {v2})"))
                            }
                            unavailable => unavailable,
                        });
                }
                Err(QueryError::Refused(message)) => return Err(ReadError::Refused(message)),
                Err(QueryError::Malformed(message)) => return Err(self.unavailable(message)),
            }
        }
        self.read_v2(target, entity, &window).await
    }

    /// Reads `target` with the metrics-v2 queries.
    async fn read_v2(
        &self,
        target: &Target,
        entity: &Entity,
        window: &Window,
    ) -> Result<Reading, ReadError> {
        let metric = match target {
            Target::Metric(metric) => metric,
            Target::Expression { name, .. } => return Err(ReadError::NeedsMqe(name.clone())),
        };
        let answer = self.post(&oap::v2_request(metric, entity, window)).await?;
        match oap::v2_reading(&answer, metric) {
            Ok(reading) => Ok(reading),
            Err(QueryError::Malformed(message)) => Err(self.unavailable(message)),
            Err(err) => Err(ReadError::Refused(err.to_string())),
        }
    }
}
