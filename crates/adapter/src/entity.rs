//! What an external metric's selector names: the SkyWalking entity (service, instance,
//! endpoint, or a relation between two) plus an optional label and layer. Keys are given
//! plainly (`service=checkout`) or SWCK-escaped (`service.str.0`, `service.byte.1`, ...,
//! see [`skylift_api::metric_selector`]), and only as equalities.

use std::collections::BTreeMap;

use skylift_api::metric_selector;

use skylift_api::label_selector::Requirement;

/// The entity keys, in the order their errors are reported.
pub const KEYS: [&str; 8] = [
    "service",
    "instance",
    "endpoint",
    "dest_service",
    "dest_instance",
    "dest_endpoint",
    "label",
    "layer",
];

/// A SkyWalking entity a metric is read for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Entity {
    pub service: String,
    pub instance: Option<String>,
    pub endpoint: Option<String>,
    pub dest_service: Option<String>,
    pub dest_instance: Option<String>,
    pub dest_endpoint: Option<String>,
    /// One label value, for labeled metrics (e.g. a percentile).
    pub label: Option<String>,
    pub layer: Option<String>,
}

/// Why a selector does not name an entity; the message tells the user what to write.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntityError {
    #[error(
        "selector key {0:?} uses an operator other than equality; write {0}=<value> (SkyWalking names go in plainly or as SWCK's <key>.str.N / <key>.byte.N pieces)"
    )]
    NotEquality(String),
    #[error(
        "selector key {0:?} is not one of service, instance, endpoint, dest_service, dest_instance, dest_endpoint, label, layer (or their .str.N / .byte.N pieces), nor oap (which OAP to read)"
    )]
    UnknownKey(String),
    #[error(
        "the selector names no service: give service=<name> (or service.str.N / service.byte.N pieces)"
    )]
    NoService,
    #[error("{key} needs {needs} as well")]
    Incomplete {
        key: &'static str,
        needs: &'static str,
    },
    #[error(transparent)]
    Escaping(#[from] metric_selector::DecodeError),
}

/// The key a selector label belongs to: `service` for `service` and `service.str.0`.
pub(crate) fn base_key(label: &str) -> &str {
    let mut parts = label.rsplitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some("str" | "byte"), Some(key)) => key,
        _ => label,
    }
}

/// The entity named by a selector's requirements.
pub fn from_requirements(requirements: &[Requirement]) -> Result<Entity, EntityError> {
    let mut labels: Vec<(&str, &str)> = Vec::new();
    for requirement in requirements {
        let key = requirement.key();
        if !KEYS.contains(&base_key(key)) {
            return Err(EntityError::UnknownKey(key.to_string()));
        }
        match requirement {
            Requirement::Equals(key, value) => labels.push((key, value)),
            // `in` with a single value is an equality too.
            Requirement::In(key, values) if values.len() == 1 => labels.push((key, &values[0])),
            _ => return Err(EntityError::NotEquality(key.to_string())),
        }
    }
    let mut names: BTreeMap<String, String> = metric_selector::decode(labels)?;
    let mut take = |key: &str| names.remove(key).filter(|v| !v.is_empty());
    let entity = Entity {
        service: take("service").ok_or(EntityError::NoService)?,
        instance: take("instance"),
        endpoint: take("endpoint"),
        dest_service: take("dest_service"),
        dest_instance: take("dest_instance"),
        dest_endpoint: take("dest_endpoint"),
        label: take("label"),
        layer: take("layer"),
    };
    if entity.instance.is_some() && entity.endpoint.is_some() {
        return Err(EntityError::Incomplete {
            key: "instance and endpoint",
            needs: "to be given apart (an entity is a service, an instance or an endpoint)",
        });
    }
    if (entity.dest_instance.is_some() || entity.dest_endpoint.is_some())
        && entity.dest_service.is_none()
    {
        return Err(EntityError::Incomplete {
            key: "dest_instance / dest_endpoint",
            needs: "dest_service",
        });
    }
    if entity.dest_instance.is_some() && entity.instance.is_none() {
        return Err(EntityError::Incomplete {
            key: "dest_instance",
            needs: "instance",
        });
    }
    if entity.dest_endpoint.is_some() && entity.endpoint.is_none() {
        return Err(EntityError::Incomplete {
            key: "dest_endpoint",
            needs: "endpoint",
        });
    }
    Ok(entity)
}

impl Entity {
    /// The labels an answer carries, plain names (for `metricLabels`).
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        let fields = [
            ("service", Some(&self.service)),
            ("instance", self.instance.as_ref()),
            ("endpoint", self.endpoint.as_ref()),
            ("dest_service", self.dest_service.as_ref()),
            ("dest_instance", self.dest_instance.as_ref()),
            ("dest_endpoint", self.dest_endpoint.as_ref()),
            ("label", self.label.as_ref()),
            ("layer", self.layer.as_ref()),
        ];
        for (key, value) in fields {
            if let Some(value) = value {
                if metric_selector::is_legal_label_value(value) {
                    labels.insert(key.to_string(), value.clone());
                } else {
                    labels.extend(metric_selector::escape(key, value));
                }
            }
        }
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skylift_api::label_selector::parse;

    fn entity(selector: &str) -> Result<Entity, EntityError> {
        from_requirements(&parse(selector).unwrap())
    }

    #[test]
    fn swck_escaped_and_plain_selectors_name_the_same_service() {
        let swck = entity("service.str.0=satellite,service.byte.1=3a,service.byte.2=3a,service.str.3=satellite,service.byte.4=2d,service.str.5=service").unwrap();
        assert_eq!(swck.service, "satellite::satellite-service");
        let plain = entity("service=checkout, instance in (checkout-1)").unwrap();
        assert_eq!(plain.service, "checkout");
        assert_eq!(plain.instance.as_deref(), Some("checkout-1"));
        // Answers label the entity the way the selector could name it.
        assert_eq!(swck.labels()["service.byte.1"], "3a");
        assert_eq!(plain.labels()["instance"], "checkout-1");
    }

    #[test]
    fn relations_need_their_source_and_destination() {
        let relation = entity("service=a,dest_service=b,instance=a-1,dest_instance=b-1").unwrap();
        assert_eq!(relation.dest_instance.as_deref(), Some("b-1"));
        assert!(matches!(
            entity("service=a,dest_instance=b-1"),
            Err(EntityError::Incomplete { .. })
        ));
        assert!(matches!(
            entity("service=a,dest_service=b,dest_endpoint=x"),
            Err(EntityError::Incomplete { .. })
        ));
    }

    #[test]
    fn what_cannot_name_an_entity_says_what_to_write() {
        assert_eq!(entity("instance=i"), Err(EntityError::NoService));
        assert_eq!(entity(""), Err(EntityError::NoService));
        assert_eq!(
            entity("service!=a"),
            Err(EntityError::NotEquality("service".into()))
        );
        assert_eq!(
            entity("service=a,app=b"),
            Err(EntityError::UnknownKey("app".into()))
        );
        assert!(matches!(
            entity("service.str.0=a,service.byte.2=3a"),
            Err(EntityError::Escaping(_))
        ));
        let message = entity("service in (a,b)").unwrap_err().to_string();
        assert!(message.contains("service=<value>"), "{message}");
    }
}
