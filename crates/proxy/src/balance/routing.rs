//! Which keys route a request, by configuration: meter data by service instance, and with
//! `--routing hash` a request header chosen by the operator.

/// The routing keys in use.
#[derive(Clone, Debug, Default)]
pub struct Routing {
    /// Meter data keeps to one upstream per service instance (else it is balanced).
    pub fixed_meter_routing: bool,
    /// With `--routing hash`: the request header whose value picks the upstream.
    pub hash_header: Option<http::HeaderName>,
}

impl Routing {
    /// The hash key a request carries, with `--routing hash`.
    pub(crate) fn hash_key(&self, headers: &http::HeaderMap) -> Option<String> {
        let name = self.hash_header.as_ref()?;
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    }
}
