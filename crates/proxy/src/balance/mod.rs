//! Choosing an upstream, with no I/O: the upstream set and its sources, the routing
//! policies, and the ejection of failing or slow upstreams.
//!
//! - [`balancer`]: picking among healthy upstreams; ejecting failing ones;
//! - [`route`]: round-robin, smooth weighted round-robin and rendezvous hashing with a
//!   sticky LRU for meter data;
//! - [`routing`]: which keys route a request (meter instance, `--routing hash` header);
//! - [`outlier`]: the sweep that finds upstreams much slower than the rest of the pool;
//! - [`upstream_set`]: the upstreams, from flags or a watched file;
//! - [`configmap`]: the operator's ConfigMap as a source of the upstream set.

pub mod balancer;
pub mod configmap;
pub mod outlier;
pub mod route;
pub mod routing;
pub mod upstream_set;
