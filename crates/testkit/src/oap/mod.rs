//! A stand-in for a SkyWalking OAP cluster, for tests and the demo; not part of the product.
//!
//! Each node has OAP's two ports: gRPC (every SkyWalking v3 report service, answered as OAP
//! answers, counted per method, service and instance) and HTTP (`/graphql`, `/healthcheck`,
//! and `/stats` with that node's counts). The nodes of one cluster share their storage, as
//! OAP nodes share their database: a proxy's meters may reach any node, and every node's
//! GraphQL answers from all of them. Nodes can be stopped (every connection cut at once, as
//! when an OAP pod dies), started again on the same ports, and added.
//!
//! - [`meters`]: the meter analyzer (`satellite` rules, other meters by name);
//! - [`store`]: per-minute values as OAP's `avg` keeps them;
//! - [`query`]: MQE and metrics v2 over the store;
//! - [`graphql`]: OAP's GraphQL endpoint as the adapter queries it.

pub mod graphql;
pub mod meters;
pub mod query;
pub mod store;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};

use crate::oap::graphql::{GraphqlOap, OapData};
use crate::sink::{Observer, Received, Sink, receivers};
use meters::MeterAnalyzer;
use store::MetricStore;

/// Where the cluster's nodes listen and what they say about themselves.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub host: IpAddr,
    /// Node `i` listens on `grpc_port + i`; 0 gives every node a free port.
    pub grpc_port: u16,
    /// Node `i` listens on `http_port + i`; 0 gives every node a free port.
    pub http_port: u16,
    /// As `getTimeInfo` gives it (`+0800`).
    pub timezone: String,
    pub version: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            host: IpAddr::from([127, 0, 0, 1]),
            grpc_port: 0,
            http_port: 0,
            timezone: "+0000".into(),
            version: "10.2.0-standin".into(),
        }
    }
}

/// Messages that arrived on one method.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct MethodStats {
    pub messages: u64,
    /// Service → instance → messages.
    pub services: BTreeMap<String, BTreeMap<String, u64>>,
}

/// What one node received.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct NodeStats {
    pub messages: u64,
    /// Calls OAP's handler closed with an error (malformed protobuf, an event without a
    /// layer, ...).
    pub malformed: u64,
    /// Method (`skywalking.v3.TraceSegmentReportService/collect`) → counts.
    pub methods: BTreeMap<String, MethodStats>,
}

impl NodeStats {
    /// Messages that arrived on every spelling of `method` (`TraceSegmentReportService/collect`).
    pub fn on(&self, method: &str) -> u64 {
        self.methods
            .iter()
            .filter(|(path, _)| {
                receivers::lookup(&format!("/{path}")).is_some_and(|m| m.short() == method)
            })
            .map(|(_, stats)| stats.messages)
            .sum()
    }
}

struct Running {
    sink: Sink,
    _graphql: GraphqlOap,
}

struct Node {
    grpc: SocketAddr,
    http: SocketAddr,
    stats: Arc<Mutex<NodeStats>>,
    running: Option<Running>,
}

/// A node as `GET /nodes` lists it.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct NodeView {
    pub node: usize,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub running: bool,
    pub connections_accepted: u64,
    pub stats: NodeStats,
}

/// Where one node listens.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct NodeAddresses {
    pub node: usize,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

/// The line `skylift-oap-standin` prints once it listens.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Announcement {
    /// The control API's base URL.
    pub control: String,
    pub nodes: Vec<NodeAddresses>,
}

/// A running stand-in cluster.
pub struct Cluster {
    config: ClusterConfig,
    store: Arc<MetricStore>,
    analyzer: Arc<MeterAnalyzer>,
    nodes: tokio::sync::Mutex<Vec<Node>>,
}

fn observer(
    stats: Arc<Mutex<NodeStats>>,
    store: Arc<MetricStore>,
    analyzer: Arc<MeterAnalyzer>,
) -> Observer {
    Arc::new(move |path: &str, messages: &[Bytes], received: &Received| {
        let mut stats = stats.lock().expect("never poisoned");
        stats.messages += messages.len() as u64;
        if received.refusal.is_some() {
            stats.malformed += 1;
        }
        let method = stats
            .methods
            .entry(path.trim_start_matches('/').to_string())
            .or_default();
        method.messages += messages.len() as u64;
        for report in &received.reports {
            let (service, instance) = report.who.clone();
            *method
                .services
                .entry(service)
                .or_default()
                .entry(instance)
                .or_default() += 1;
        }
        for report in &received.meter_reports {
            analyzer.analyze(report, &store);
        }
    })
}

fn port_for(base: u16, index: usize) -> u16 {
    if base == 0 {
        0
    } else {
        base.saturating_add(index as u16)
    }
}

impl Cluster {
    /// Starts `instances` nodes.
    pub async fn start(config: ClusterConfig, instances: usize) -> std::io::Result<Arc<Cluster>> {
        let cluster = Arc::new(Cluster {
            config,
            store: Arc::default(),
            analyzer: Arc::default(),
            nodes: tokio::sync::Mutex::new(Vec::new()),
        });
        for _ in 0..instances {
            cluster.add().await?;
        }
        Ok(cluster)
    }

    /// The storage every node reads and writes.
    pub fn store(&self) -> &Arc<MetricStore> {
        &self.store
    }

    async fn run(
        &self,
        grpc: SocketAddr,
        http: SocketAddr,
        stats: &Arc<Mutex<NodeStats>>,
    ) -> std::io::Result<(Running, SocketAddr, SocketAddr)> {
        let sink = Sink::start_observed(
            grpc,
            observer(stats.clone(), self.store.clone(), self.analyzer.clone()),
        )
        .await?;
        let listener = tokio::net::TcpListener::bind(http).await?;
        let http = listener.local_addr()?;
        let node_stats = stats.clone();
        let extra = axum::Router::new().route(
            "/stats",
            get(move || {
                let stats = node_stats.lock().expect("never poisoned").clone();
                async move { axum::Json(stats) }
            }),
        );
        let data = OapData {
            timezone: self.config.timezone.clone(),
            version: self.config.version.clone(),
            ..OapData::default()
        };
        let graphql = GraphqlOap::serve(listener, data, Some(self.store.clone()), extra)?;
        let grpc = sink.address().parse().expect("the sink's own address");
        Ok((
            Running {
                sink,
                _graphql: graphql,
            },
            grpc,
            http,
        ))
    }

    /// Adds a node on the next ports; answers its index.
    pub async fn add(&self) -> std::io::Result<usize> {
        let index = self.nodes.lock().await.len();
        let host = self.config.host;
        self.add_at(
            SocketAddr::new(host, port_for(self.config.grpc_port, index)),
            SocketAddr::new(host, port_for(self.config.http_port, index)),
        )
        .await
    }

    /// Adds a node serving gRPC at `grpc` and HTTP at `http` (an OAP pod at its own
    /// address); answers its index.
    pub async fn add_at(&self, grpc: SocketAddr, http: SocketAddr) -> std::io::Result<usize> {
        let mut nodes = self.nodes.lock().await;
        let index = nodes.len();
        let stats = Arc::new(Mutex::new(NodeStats::default()));
        let (running, grpc, http) = self.run(grpc, http, &stats).await?;
        nodes.push(Node {
            grpc,
            http,
            stats,
            running: Some(running),
        });
        Ok(index)
    }

    /// Stops node `index` as a crash would: listeners closed, every connection cut.
    /// Its counts stay readable. `false` when there is no such node.
    pub async fn stop(&self, index: usize) -> bool {
        let mut nodes = self.nodes.lock().await;
        let Some(node) = nodes.get_mut(index) else {
            return false;
        };
        if let Some(running) = node.running.take() {
            running.sink.kill();
        }
        true
    }

    /// Starts a stopped node again on its ports, keeping its counts.
    pub async fn restart(&self, index: usize) -> std::io::Result<bool> {
        let mut nodes = self.nodes.lock().await;
        let Some(node) = nodes.get_mut(index) else {
            return Ok(false);
        };
        if node.running.is_none() {
            let (running, _, _) = self.run(node.grpc, node.http, &node.stats).await?;
            node.running = Some(running);
        }
        Ok(true)
    }

    /// Every node with its counts.
    pub async fn nodes(&self) -> Vec<NodeView> {
        let nodes = self.nodes.lock().await;
        nodes
            .iter()
            .enumerate()
            .map(|(index, node)| NodeView {
                node: index,
                grpc: node.grpc,
                http: node.http,
                running: node.running.is_some(),
                connections_accepted: node.running.as_ref().map_or(0, |r| r.sink.connections()),
                stats: node.stats.lock().expect("never poisoned").clone(),
            })
            .collect()
    }

    /// The control API: `GET /nodes`, `POST /nodes` (add one), `POST /nodes/{i}/stop`,
    /// `POST /nodes/{i}/start`.
    pub fn control(self: &Arc<Self>) -> axum::Router {
        async fn list(State(cluster): State<Arc<Cluster>>) -> axum::Json<Vec<NodeView>> {
            axum::Json(cluster.nodes().await)
        }
        async fn add(State(cluster): State<Arc<Cluster>>) -> (StatusCode, axum::Json<Value>) {
            match cluster.add().await {
                Ok(index) => {
                    let view = cluster.nodes().await.swap_remove(index);
                    (StatusCode::CREATED, axum::Json(json!(view)))
                }
                Err(err) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(json!({"error": format!("starting a node: {err}")})),
                ),
            }
        }
        async fn stop(State(cluster): State<Arc<Cluster>>, Path(index): Path<usize>) -> StatusCode {
            if cluster.stop(index).await {
                StatusCode::NO_CONTENT
            } else {
                StatusCode::NOT_FOUND
            }
        }
        async fn start(
            State(cluster): State<Arc<Cluster>>,
            Path(index): Path<usize>,
        ) -> (StatusCode, String) {
            match cluster.restart(index).await {
                Ok(true) => (StatusCode::NO_CONTENT, String::new()),
                Ok(false) => (StatusCode::NOT_FOUND, format!("no node {index}")),
                Err(err) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("starting node {index}: {err}"),
                ),
            }
        }
        axum::Router::new()
            .route("/nodes", get(list).post(add))
            .route("/nodes/{index}/stop", post(stop))
            .route("/nodes/{index}/start", post(start))
            .with_state(self.clone())
    }
}
