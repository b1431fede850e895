//! External metric names: `<prefix>|<oap metric>` (SWCK's form, so existing HPA objects
//! keep working) and `<prefix>|mqe|<name>` for a named MQE expression from
//! `--expressions`.

/// What a metric name asks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// An OAP metric, read with `latest(<name>)`.
    Oap(String),
    /// A named expression.
    Expression(String),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    #[error(
        "metric {name:?} is not served here: names are {prefix}|<oap metric> or {prefix}|mqe|<expression name>"
    )]
    OtherPrefix { name: String, prefix: String },
    #[error(
        "metric {0:?}: an OAP metric name has only letters, digits and underscores, starting with a letter or underscore"
    )]
    BadOapName(String),
    #[error("metric {0:?}: an expression name has only letters, digits, '_', '-' and '.'")]
    BadExpressionName(String),
}

fn is_oap_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_expression_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[derive(Debug, thiserror::Error)]
pub enum ExpressionsError {
    #[error(
        "the expressions file is not a YAML map of name to MQE expression (or federated expression): {0}"
    )]
    NotAMap(String),
    #[error("expression name {0:?}: only letters, digits, '_', '-' and '.' are allowed")]
    BadName(String),
    #[error("expression {0:?} is empty")]
    Empty(String),
    #[error("expression {name:?}: {reason}")]
    BadFederation { name: String, reason: String },
}

/// A named expression: its MQE, and the OAPs it is read from and combined across when it
/// is federated ([`crate::federation`]).
#[derive(Clone, Debug, PartialEq)]
pub struct NamedExpression {
    pub expression: String,
    pub federation: Option<crate::federation::Federation>,
}

/// Reads the `--expressions` file: a YAML map of name → MQE expression, or → a federated
/// expression (a map, see [`crate::federation`]).
pub fn parse_expressions(
    yaml: &str,
) -> Result<std::collections::HashMap<String, NamedExpression>, ExpressionsError> {
    let map: std::collections::BTreeMap<String, serde_yaml::Value> = if yaml.trim().is_empty() {
        Default::default()
    } else {
        serde_yaml::from_str(yaml).map_err(|e| ExpressionsError::NotAMap(e.to_string()))?
    };
    map.into_iter()
        .map(|(name, value)| {
            if !is_expression_name(&name) {
                return Err(ExpressionsError::BadName(name));
            }
            let named = match value {
                serde_yaml::Value::String(expression) => NamedExpression {
                    expression: expression.trim().to_string(),
                    federation: None,
                },
                federated @ serde_yaml::Value::Mapping(_) => {
                    let bad = |reason: String| ExpressionsError::BadFederation {
                        name: name.clone(),
                        reason,
                    };
                    let spec: crate::federation::FederatedSpec =
                        serde_yaml::from_value(federated).map_err(|e| bad(e.to_string()))?;
                    let (expression, federation) = spec.validate().map_err(bad)?;
                    NamedExpression {
                        expression,
                        federation: Some(federation),
                    }
                }
                other => {
                    return Err(ExpressionsError::NotAMap(format!(
                        "{name}: {other:?} is neither an expression nor a federated expression"
                    )));
                }
            };
            if named.expression.is_empty() {
                return Err(ExpressionsError::Empty(name));
            }
            Ok((name, named))
        })
        .collect()
}

/// Reads an external metric name (already percent-decoded).
pub fn parse(prefix: &str, name: &str) -> Result<Metric, MetricError> {
    let Some(rest) = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('|'))
    else {
        return Err(MetricError::OtherPrefix {
            name: name.to_string(),
            prefix: prefix.to_string(),
        });
    };
    if let Some(expression) = rest.strip_prefix("mqe|") {
        return if is_expression_name(expression) {
            Ok(Metric::Expression(expression.to_string()))
        } else {
            Err(MetricError::BadExpressionName(name.to_string()))
        };
    }
    // Checked strictly: the name is written into an MQE expression.
    if is_oap_name(rest) {
        Ok(Metric::Oap(rest.to_string()))
    } else {
        Err(MetricError::BadOapName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expressions_file_maps_names_to_expressions() {
        let expressions = parse_expressions(
            "p95: latest(service_percentile{p='95'})\nerror-ratio: |\n  latest(100 - service_sla / 100)\n",
        )
        .unwrap();
        assert_eq!(
            expressions["p95"].expression,
            "latest(service_percentile{p='95'})"
        );
        assert_eq!(
            expressions["error-ratio"].expression,
            "latest(100 - service_sla / 100)"
        );
        assert!(expressions["p95"].federation.is_none());
        let federated = parse_expressions(
            "cpm-everywhere:\n  expression: latest(service_cpm)\n  oaps: [default, eu]\n  combine: sum\n",
        )
        .unwrap();
        let cpm = &federated["cpm-everywhere"];
        assert_eq!(cpm.expression, "latest(service_cpm)");
        assert_eq!(cpm.federation.as_ref().unwrap().oaps.len(), 2);
        let refused = parse_expressions("x:\n  expression: m\n  oaps: []\n  combine: sum\n")
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("\"x\"") && refused.contains("no OAP"),
            "{refused}"
        );
        assert!(parse_expressions("").unwrap().is_empty());
        assert!(matches!(
            parse_expressions("- a\n- b\n"),
            Err(ExpressionsError::NotAMap(_))
        ));
        assert!(matches!(
            parse_expressions("\"a b\": x\n"),
            Err(ExpressionsError::BadName(_))
        ));
        assert!(matches!(
            parse_expressions("a: \" \"\n"),
            Err(ExpressionsError::Empty(_))
        ));
    }

    const PREFIX: &str = "skywalking.apache.org";

    #[test]
    fn swck_names_and_expression_names_are_read() {
        assert_eq!(
            parse(
                PREFIX,
                "skywalking.apache.org|satellite_service_grpc_connect_count"
            ),
            Ok(Metric::Oap("satellite_service_grpc_connect_count".into()))
        );
        assert_eq!(
            parse(PREFIX, "skywalking.apache.org|mqe|p95-latency"),
            Ok(Metric::Expression("p95-latency".into()))
        );
    }

    #[test]
    fn other_names_and_injection_attempts_are_refused() {
        assert!(matches!(
            parse(PREFIX, "example.com|service_cpm"),
            Err(MetricError::OtherPrefix { .. })
        ));
        assert!(matches!(
            parse(PREFIX, "skywalking.apache.orgservice_cpm"),
            Err(MetricError::OtherPrefix { .. })
        ));
        for bad in ["service_cpm)+avg(x", "1cpm", "", "a b"] {
            assert_eq!(
                parse(PREFIX, &format!("{PREFIX}|{bad}")),
                Err(MetricError::BadOapName(format!("{PREFIX}|{bad}")))
            );
        }
        assert!(matches!(
            parse(PREFIX, "skywalking.apache.org|mqe|a'b"),
            Err(MetricError::BadExpressionName(_))
        ));
    }
}
