//! Test doubles for skylift's tests and benchmarks. Nothing here ships in the product.
//!
//! - [`aggregation`]: what a cluster gives skylift-adapter, for the API-server double;
//! - [`aggregator`]: kube-aggregator's side of an External metric read;
//! - [`hpa`]: the HPA's arithmetic for External metrics;
//! - [`apiserver`]: a stateful Kubernetes API-server double that follows kube-apiserver's
//!   semantics for what skylift uses (CRUD, label selectors, watches with resource
//!   versions, server-side apply, status and scale subresources, conflicts, garbage
//!   collection, CRD schema defaulting, pruning and validation including CEL rules);
//! - [`sink`]: a strict double of an OAP node's gRPC port: OAP's methods and their gRPC kinds,
//!   grpc-java's refusals, and what OAP's receivers attribute to whom;
//! - [`collector`]: a strict stand-in for an OpenTelemetry collector's OTLP gRPC receiver,
//!   recording spans by trace ID;
//! - [`protobuf`]: the doubles' own protobuf reader, and a writer for tests;
//! - [`reports`]: SkyWalking reports as agents send them;
//! - [`http`]: a minimal HTTP GET for reading local endpoints in tests and load tools;
//! - [`oap`]: an OAP cluster stand-in (reports counted, the meter pipeline, GraphQL),
//!   also the binary `skylift-oap-standin`;
//! - [`oap_http`]: an OAP node's HTTP port (REST receivers, the browser agent's paths);
//! - [`pki`]: client certificates signed by a test CA;
//! - [`cluster`]: a real control plane (etcd, kube-apiserver, kube-controller-manager from
//!   `KUBEBUILDER_ASSETS`), the kubelet's part played by the test, network namespaces for
//!   programs the API server calls, relays to the API server;
//! - [`process`]: child processes killed when dropped, their output in a file.

pub mod aggregation;
pub mod aggregator;
pub mod apiserver;
pub mod cluster;
pub mod collector;
pub mod h2raw;
pub mod hpa;
pub mod http;
pub mod oap;
pub mod oap_http;
pub mod pki;
pub mod process;
pub mod protobuf;
pub mod reports;
pub mod sink;
