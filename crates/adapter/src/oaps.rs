//! Which OAP answers a read. A cluster may run several OAPs (one per team or environment),
//! and an HPA must read the metrics of the OAP its workload reports to: reading another
//! one gives wrong values, silently. Each read chooses, in this order:
//!
//! 1. the selector's `oap` label: `<namespace>/<name>` of an `OAPServer`, the name of a
//!    static OAP (`--oap NAME=URL`), or `default`. A label value cannot hold `/`, so an
//!    `OAPServer` is named SWCK-escaped (`oap.str.0=team`, `oap.byte.1=2f`, ...; see
//!    [`skylift_api::metric_selector`]), as the operator writes it in the HPAs it makes;
//! 2. the route of the HPA's namespace (`--oap-routes`: namespace → an OAP as in 1);
//! 3. the `OAPServer` of the HPA's namespace, when there is exactly one;
//! 4. the default OAP (`--oap-url`).
//!
//! `OAPServer`s are discovered by watching them ([`crate::discovery`]); each is read at the
//! GraphQL endpoint of its `status.address.http`, or where `--oap <namespace>/<name>=URL`
//! says (an adapter that cannot resolve the cluster's Service names, or that runs outside
//! the cluster).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use skylift_api::label_selector::Requirement;
use skylift_api::metric_selector;

use crate::entity;
use crate::reader::{OapConfig, OapReader};

/// The selector key that names an OAP.
pub const KEY: &str = "oap";
/// The name of the default OAP in a selector or a route.
pub const DEFAULT: &str = "default";

/// An OAP a read may go to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OapRef {
    /// `--oap-url`.
    Default,
    /// `--oap NAME=URL`.
    Static(String),
    /// An `OAPServer`.
    Server { namespace: String, name: String },
}

impl OapRef {
    /// `default`, `NAME` or `NAMESPACE/NAME`.
    pub fn parse(text: &str) -> Result<OapRef, RouteError> {
        match text.split_once('/') {
            None if text == DEFAULT => Ok(OapRef::Default),
            None if !text.is_empty() => Ok(OapRef::Static(text.to_string())),
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(OapRef::Server {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(RouteError::Malformed(text.to_string())),
        }
    }
}

impl fmt::Display for OapRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OapRef::Default => f.write_str(DEFAULT),
            OapRef::Static(name) => f.write_str(name),
            OapRef::Server { namespace, name } => write!(f, "{namespace}/{name}"),
        }
    }
}

/// Why a read has no OAP to go to; the message tells the user what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error(
        "oap {0:?} is neither default, the name of an --oap, nor NAMESPACE/NAME of an OAPServer"
    )]
    Malformed(String),
    #[error("oap {name:?} is not one of the adapter's OAPs ({known})")]
    UnknownStatic { name: String, known: String },
    #[error(
        "no OAPServer {0} is known to the adapter (is it created, and may the adapter watch OAPServers?)"
    )]
    UnknownServer(String),
    #[error("OAPServer {0} has no HTTP address in its status yet")]
    NoAddress(String),
    #[error(
        "namespace {namespace:?} has several OAPServers ({servers}): name one in the selector, oap=<namespace>/<name> (SWCK-escaped), or route the namespace with --oap-routes"
    )]
    Ambiguous { namespace: String, servers: String },
    #[error("the oap selector key takes one value, with equality: oap=<name>")]
    NotEquality,
    #[error(transparent)]
    Escaping(#[from] metric_selector::DecodeError),
}

impl RouteError {
    /// Whether it may pass without the user doing anything (an address being written).
    pub fn is_transient(&self) -> bool {
        matches!(self, RouteError::NoAddress(_))
    }
}

/// Takes the `oap` key (plain or escaped) out of a selector's requirements: the OAP it
/// names, if any, and the requirements left for the entity.
pub fn split(
    requirements: &[Requirement],
) -> Result<(Option<OapRef>, Vec<Requirement>), RouteError> {
    let mut pieces: Vec<(&str, &str)> = Vec::new();
    let mut rest = Vec::with_capacity(requirements.len());
    for requirement in requirements {
        if entity::base_key(requirement.key()) != KEY {
            rest.push(requirement.clone());
            continue;
        }
        match requirement {
            Requirement::Equals(key, value) => pieces.push((key, value)),
            Requirement::In(key, values) if values.len() == 1 => pieces.push((key, &values[0])),
            _ => return Err(RouteError::NotEquality),
        }
    }
    if pieces.is_empty() {
        return Ok((None, rest));
    }
    let decoded = metric_selector::decode(pieces)?;
    let text = decoded.get(KEY).map_or("", String::as_str);
    Ok((Some(OapRef::parse(text)?), rest))
}

/// Chooses the OAP of a read (the order in the module's description): `explicit` from the
/// selector, `routes` by namespace, `servers_here` the `OAPServer`s of `namespace`.
pub fn choose(
    explicit: Option<OapRef>,
    namespace: &str,
    routes: &BTreeMap<String, OapRef>,
    servers_here: &[&str],
) -> Result<OapRef, RouteError> {
    if let Some(oap) = explicit {
        return Ok(oap);
    }
    if let Some(route) = routes.get(namespace) {
        return Ok(route.clone());
    }
    match servers_here {
        [] => Ok(OapRef::Default),
        [one] => Ok(OapRef::Server {
            namespace: namespace.to_string(),
            name: (*one).to_string(),
        }),
        several => Err(RouteError::Ambiguous {
            namespace: namespace.to_string(),
            servers: several.join(", "),
        }),
    }
}

/// Reads `--oap-routes`: a YAML map of namespace → `default`, `NAME` or `NAMESPACE/NAME`.
pub fn parse_routes(text: &str) -> Result<BTreeMap<String, OapRef>, String> {
    let raw: BTreeMap<String, String> = serde_yaml::from_str::<Option<_>>(text)
        .map_err(|e| format!("not a map of namespace to OAP: {e}"))?
        .unwrap_or_default();
    raw.into_iter()
        .map(|(namespace, oap)| {
            OapRef::parse(&oap)
                .map(|oap| (namespace.clone(), oap))
                .map_err(|e| format!("namespace {namespace:?}: {e}"))
        })
        .collect()
}

/// An `OAPServer` as discovered: its GraphQL endpoint, once its status has an address.
struct Server {
    url: Option<String>,
    reader: Option<Arc<OapReader>>,
}

/// The OAPs reads can go to, and how each is read.
pub struct Directory {
    default: Arc<OapReader>,
    statics: BTreeMap<String, Arc<OapReader>>,
    routes: BTreeMap<String, OapRef>,
    /// By namespace, then name.
    servers: RwLock<BTreeMap<String, BTreeMap<String, Server>>>,
    /// How long a query to a discovered OAP may take.
    discovered_timeout: Duration,
}

impl Directory {
    /// `discovered_timeout`: per query to an `OAPServer` (read without credentials: OAP's
    /// GraphQL has none of its own).
    pub fn new(
        default: OapReader,
        statics: BTreeMap<String, OapReader>,
        routes: BTreeMap<String, OapRef>,
        discovered_timeout: Duration,
    ) -> Directory {
        Directory {
            default: Arc::new(default),
            statics: statics
                .into_iter()
                .map(|(name, reader)| (name, Arc::new(reader)))
                .collect(),
            routes,
            servers: RwLock::default(),
            discovered_timeout,
        }
    }

    /// A directory of one OAP.
    pub fn single(default: OapReader) -> Directory {
        let timeout = default.config().timeout;
        Directory::new(default, BTreeMap::new(), BTreeMap::new(), timeout)
    }

    /// The OAP a read for `namespace` goes to, and its reader.
    pub fn resolve(
        &self,
        explicit: Option<OapRef>,
        namespace: &str,
    ) -> Result<(OapRef, Arc<OapReader>), RouteError> {
        let oap = {
            let servers = self.servers.read().expect("never poisoned");
            let here: Vec<&str> = servers
                .get(namespace)
                .map(|names| names.keys().map(String::as_str).collect())
                .unwrap_or_default();
            choose(explicit, namespace, &self.routes, &here)?
        };
        let reader = self.reader(&oap)?;
        Ok((oap, reader))
    }

    fn reader(&self, oap: &OapRef) -> Result<Arc<OapReader>, RouteError> {
        match oap {
            OapRef::Default => Ok(self.default.clone()),
            OapRef::Static(name) => {
                self.statics
                    .get(name)
                    .cloned()
                    .ok_or_else(|| RouteError::UnknownStatic {
                        name: name.clone(),
                        known: std::iter::once(DEFAULT)
                            .chain(self.statics.keys().map(String::as_str))
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
            }
            OapRef::Server { namespace, name } => {
                // Given by `--oap <namespace>/<name>=URL`: read there, whatever its status.
                if let Some(reader) = self.statics.get(&oap.to_string()) {
                    return Ok(reader.clone());
                }
                let servers = self.servers.read().expect("never poisoned");
                let server = servers
                    .get(namespace)
                    .and_then(|names| names.get(name))
                    .ok_or_else(|| RouteError::UnknownServer(oap.to_string()))?;
                server
                    .reader
                    .clone()
                    .ok_or_else(|| RouteError::NoAddress(oap.to_string()))
            }
        }
    }

    /// Records an `OAPServer` and its HTTP address (`http://host:port`), keeping its reader
    /// (its clock, what it serves) while the address stays the same.
    pub fn set_server(&self, namespace: &str, name: &str, http: Option<&str>) {
        let url = http.map(|http| format!("{}/graphql", http.trim_end_matches('/')));
        let mut servers = self.servers.write().expect("never poisoned");
        let names = servers.entry(namespace.to_string()).or_default();
        if names.get(name).is_some_and(|known| known.url == url) {
            return;
        }
        let reader = url.as_ref().and_then(|url| {
            let config = OapConfig {
                url: url.clone(),
                timeout: self.discovered_timeout,
                basic_auth: None,
            };
            match OapReader::new(config) {
                Ok(reader) => Some(Arc::new(reader)),
                Err(err) => {
                    tracing::warn!(%namespace, %name, %url, error = %err, "cannot read this OAPServer");
                    None
                }
            }
        });
        tracing::info!(%namespace, %name, url = url.as_deref().unwrap_or("none yet"), "OAPServer known");
        names.insert(name.to_string(), Server { url, reader });
    }

    pub fn remove_server(&self, namespace: &str, name: &str) {
        let mut servers = self.servers.write().expect("never poisoned");
        if let Some(names) = servers.get_mut(namespace) {
            names.remove(name);
            if names.is_empty() {
                servers.remove(namespace);
            }
        }
    }

    /// Forgets every `OAPServer` not in `present` (after a relist).
    pub fn retain_servers(&self, present: &[(String, String)]) {
        let mut servers = self.servers.write().expect("never poisoned");
        for (namespace, names) in servers.iter_mut() {
            names.retain(|name, _| present.iter().any(|(ns, n)| ns == namespace && n == name));
        }
        servers.retain(|_, names| !names.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skylift_api::label_selector::parse;

    fn server(namespace: &str, name: &str) -> OapRef {
        OapRef::Server {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    #[test]
    fn the_selector_names_an_oap_plainly_or_escaped_and_the_rest_is_the_entity() {
        let (oap, rest) = split(&parse("service=checkout,oap=central").unwrap()).unwrap();
        assert_eq!(oap, Some(OapRef::Static("central".into())));
        assert_eq!(rest, parse("service=checkout").unwrap());
        // `team-a/skywalking` as the operator writes it.
        let escaped = metric_selector::escape(KEY, "team-a/skywalking");
        let selector: Vec<String> = escaped.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let (oap, rest) =
            split(&parse(&format!("service=a,{}", selector.join(","))).unwrap()).unwrap();
        assert_eq!(oap, Some(server("team-a", "skywalking")));
        assert_eq!(rest.len(), 1);
        assert_eq!(split(&parse("service=a").unwrap()).unwrap().0, None);
        assert_eq!(
            split(&parse("service=a,oap=default").unwrap()).unwrap().0,
            Some(OapRef::Default)
        );
        assert_eq!(
            split(&parse("service=a,oap!=x").unwrap()),
            Err(RouteError::NotEquality)
        );
        assert!(matches!(
            OapRef::parse("a/b/c"),
            Err(RouteError::Malformed(_))
        ));
        assert!(matches!(OapRef::parse("/b"), Err(RouteError::Malformed(_))));
    }

    #[test]
    fn the_selector_wins_then_the_namespace_route_then_the_one_oapserver_then_the_default() {
        let routes = BTreeMap::from([("legacy".to_string(), OapRef::Static("old".into()))]);
        let explicit = Some(server("team-b", "oap"));
        assert_eq!(
            choose(explicit.clone(), "legacy", &routes, &["x"]),
            Ok(server("team-b", "oap"))
        );
        assert_eq!(
            choose(None, "legacy", &routes, &["x"]),
            Ok(OapRef::Static("old".into()))
        );
        assert_eq!(
            choose(None, "team-a", &routes, &["skywalking"]),
            Ok(server("team-a", "skywalking"))
        );
        assert_eq!(choose(None, "apps", &routes, &[]), Ok(OapRef::Default));
        let ambiguous = choose(None, "team-a", &routes, &["one", "two"]).unwrap_err();
        assert!(ambiguous.to_string().contains("one, two"), "{ambiguous}");
    }

    #[test]
    fn routes_are_a_map_of_namespace_to_oap() {
        let routes =
            parse_routes("legacy: old\nteam-a: team-a/skywalking\napps: default\n").unwrap();
        assert_eq!(routes["legacy"], OapRef::Static("old".into()));
        assert_eq!(routes["team-a"], server("team-a", "skywalking"));
        assert_eq!(routes["apps"], OapRef::Default);
        assert!(parse_routes("").unwrap().is_empty());
        let bad = parse_routes("x: a/b/c").unwrap_err();
        assert!(bad.contains("\"x\""), "{bad}");
        assert!(parse_routes("- a").is_err());
    }

    fn reader(url: &str) -> OapReader {
        let _ = rustls::crypto::ring::default_provider().install_default();
        OapReader::new(OapConfig {
            url: url.into(),
            timeout: Duration::from_secs(1),
            basic_auth: None,
        })
        .unwrap()
    }

    #[test]
    fn discovered_oapservers_are_read_at_their_status_address() {
        let directory = Directory::new(
            reader("http://default:12800/graphql"),
            BTreeMap::from([("central".to_string(), reader("https://central/graphql"))]),
            BTreeMap::new(),
            Duration::from_secs(1),
        );
        let url = |explicit: Option<OapRef>, namespace: &str| {
            directory
                .resolve(explicit, namespace)
                .map(|(oap, reader)| (oap.to_string(), reader.config().url.clone()))
        };
        assert_eq!(
            url(None, "team-a"),
            Ok(("default".into(), "http://default:12800/graphql".into()))
        );
        directory.set_server("team-a", "skywalking", None);
        assert_eq!(
            url(None, "team-a"),
            Err(RouteError::NoAddress("team-a/skywalking".into()))
        );
        directory.set_server("team-a", "skywalking", Some("http://sw.team-a.svc:12800/"));
        assert_eq!(
            url(None, "team-a"),
            Ok((
                "team-a/skywalking".into(),
                "http://sw.team-a.svc:12800/graphql".into()
            ))
        );
        assert_eq!(
            url(Some(OapRef::Static("central".into())), "team-a")
                .unwrap()
                .1,
            "https://central/graphql"
        );
        let unknown = url(Some(OapRef::Static("nope".into())), "team-a").unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "oap \"nope\" is not one of the adapter's OAPs (default, central)"
        );
        assert_eq!(
            url(Some(server("team-b", "x")), "team-a"),
            Err(RouteError::UnknownServer("team-b/x".into()))
        );
        directory.retain_servers(&[]);
        assert_eq!(url(None, "team-a").unwrap().0, "default");
        // An OAPServer given an address of its own: read there, discovered or not.
        let pinned = Directory::new(
            reader("http://default:12800/graphql"),
            BTreeMap::from([(
                "team-a/skywalking".to_string(),
                reader("http://10.0.0.7:12800/graphql"),
            )]),
            BTreeMap::new(),
            Duration::from_secs(1),
        );
        pinned.set_server("team-a", "skywalking", Some("http://sw.team-a.svc:12800"));
        let (oap, reader) = pinned.resolve(None, "team-a").unwrap();
        assert_eq!(oap, server("team-a", "skywalking"));
        assert_eq!(reader.config().url, "http://10.0.0.7:12800/graphql");
        let (_, reader) = pinned
            .resolve(Some(server("team-a", "skywalking")), "apps")
            .unwrap();
        assert_eq!(reader.config().url, "http://10.0.0.7:12800/graphql");
    }
}
