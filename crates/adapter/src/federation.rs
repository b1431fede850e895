//! Federated metrics: one named expression read from several OAPs (the OAP clusters of
//! several clouds, each watching its part of a service) and combined into the one value an
//! HPA scales on. Declared in the `--expressions` file:
//!
//! ```yaml
//! checkout-cpm-everywhere:
//!   expression: latest(service_cpm)
//!   oaps: [default, eu, us]      # default, an --oap NAME, or NAMESPACE/NAME of an OAPServer
//!   combine: sum                 # sum, max, min, or average (weighted by `weight`)
//!   weight: latest(service_cpm)  # average only: each OAP's value counts this much
//!   unreachable: partial         # fail (the default), or answer from the OAPs that did
//!   staleness: 2m                # partial: a value an OAP gave this recently stands in for it
//! ```
//!
//! An OAP with no value for the entity has nothing to add (it is left out, not counted as
//! 0); with none, the answer is no value. How a combination is made is pure and tested
//! here; the reads are in [`crate::server`].

use std::time::Duration;

use serde::Deserialize;

use crate::oaps::OapRef;

/// How the OAPs' values make one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Combine {
    Sum,
    Max,
    Min,
    /// Each OAP's value weighted by its `weight` expression.
    Average,
}

/// What an unreachable OAP does to the answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unreachable {
    /// No answer (503, naming the OAP): the HPA keeps its scale.
    #[default]
    Fail,
    /// Answer from the OAPs that answered, and from values unreachable ones gave within
    /// `staleness`.
    Partial,
}

/// A federated expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Federation {
    pub oaps: Vec<OapRef>,
    pub combine: Combine,
    /// With [`Combine::Average`]: the MQE expression weighting each OAP's value.
    pub weight: Option<String>,
    pub unreachable: Unreachable,
    pub staleness: Duration,
}

/// The file's form of a federated expression.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederatedSpec {
    pub expression: String,
    pub oaps: Vec<String>,
    pub combine: Combine,
    #[serde(default)]
    pub weight: Option<String>,
    #[serde(default)]
    pub unreachable: Unreachable,
    #[serde(default)]
    pub staleness: Option<String>,
}

impl FederatedSpec {
    /// The expression and its federation; `Err` says what is wrong with it.
    pub fn validate(self) -> Result<(String, Federation), String> {
        if self.oaps.is_empty() {
            return Err("oaps lists no OAP".into());
        }
        let oaps = self
            .oaps
            .iter()
            .map(|oap| OapRef::parse(oap).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let weight = self
            .weight
            .map(|w| w.trim().to_string())
            .filter(|w| !w.is_empty());
        match (self.combine, &weight) {
            (Combine::Average, None) => {
                return Err("combine: average needs a weight expression".into());
            }
            (Combine::Sum | Combine::Max | Combine::Min, Some(_)) => {
                return Err("weight is only for combine: average".into());
            }
            _ => {}
        }
        let staleness = match (&self.unreachable, &self.staleness) {
            (Unreachable::Fail, Some(_)) => {
                return Err("staleness is only for unreachable: partial".into());
            }
            (_, Some(text)) => skylift_api::duration::parse(text)
                .map_err(|e| format!("staleness {text:?}: {e}"))?,
            (_, None) => Duration::ZERO,
        };
        Ok((
            self.expression.trim().to_string(),
            Federation {
                oaps,
                combine: self.combine,
                weight,
                unreachable: self.unreachable,
                staleness,
            },
        ))
    }
}

/// One OAP's part: its value, and its weight (1 unless averaged by weight).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Part {
    pub value: f64,
    pub weight: f64,
}

/// The combination of the parts that have a value; `None` when none has (or, averaging,
/// when the weights add up to nothing).
pub fn combine(how: Combine, parts: &[Part]) -> Option<f64> {
    let values = parts.iter().map(|p| p.value);
    match how {
        _ if parts.is_empty() => None,
        Combine::Sum => Some(values.sum()),
        Combine::Max => values.reduce(f64::max),
        Combine::Min => values.reduce(f64::min),
        Combine::Average => {
            let total: f64 = parts.iter().map(|p| p.weight).sum();
            (total > 0.0).then(|| parts.iter().map(|p| p.value * p.weight).sum::<f64>() / total)
        }
    }
}

/// A combined value as a decimal OAP would give (`12`, `0.5`), for an exact Quantity.
pub fn decimal(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        // Rounded to what a metric means; trailing zeros dropped.
        let text = format!("{value:.6}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(value: f64, weight: f64) -> Part {
        Part { value, weight }
    }

    #[test]
    fn the_parts_make_one_value_each_way() {
        let parts = [part(10.0, 1.0), part(30.0, 3.0), part(2.0, 0.0)];
        assert_eq!(combine(Combine::Sum, &parts), Some(42.0));
        assert_eq!(combine(Combine::Max, &parts), Some(30.0));
        assert_eq!(combine(Combine::Min, &parts), Some(2.0));
        // (10*1 + 30*3 + 2*0) / 4
        assert_eq!(combine(Combine::Average, &parts), Some(25.0));
        assert_eq!(combine(Combine::Sum, &[]), None);
        assert_eq!(combine(Combine::Average, &[part(5.0, 0.0)]), None);
        assert_eq!(decimal(42.0), "42");
        assert_eq!(decimal(1500.5), "1500.5");
        assert_eq!(decimal(1.0 / 3.0), "0.333333");
    }

    fn spec(yaml: &str) -> Result<(String, Federation), String> {
        serde_yaml::from_str::<FederatedSpec>(yaml)
            .map_err(|e| e.to_string())?
            .validate()
    }

    #[test]
    fn a_federated_expression_says_where_from_and_how_to_combine() {
        let (expression, federation) = spec(
            "expression: latest(service_cpm)\noaps: [default, eu, team-a/skywalking]\ncombine: average\nweight: latest(service_cpm)\nunreachable: partial\nstaleness: 2m\n",
        )
        .unwrap();
        assert_eq!(expression, "latest(service_cpm)");
        assert_eq!(
            federation.oaps,
            [
                OapRef::Default,
                OapRef::Static("eu".into()),
                OapRef::Server {
                    namespace: "team-a".into(),
                    name: "skywalking".into()
                }
            ]
        );
        assert_eq!(federation.staleness, Duration::from_secs(120));
        assert_eq!(federation.unreachable, Unreachable::Partial);
        let (_, sum) = spec("expression: m\noaps: [eu]\ncombine: sum\n").unwrap();
        assert_eq!(
            (sum.unreachable, sum.staleness),
            (Unreachable::Fail, Duration::ZERO)
        );
        for (yaml, says) in [
            ("expression: m\noaps: []\ncombine: sum\n", "no OAP"),
            ("expression: m\noaps: [eu]\ncombine: average\n", "weight"),
            (
                "expression: m\noaps: [eu]\ncombine: sum\nweight: w\n",
                "only for",
            ),
            (
                "expression: m\noaps: [eu]\ncombine: sum\nstaleness: 1m\n",
                "only for",
            ),
            ("expression: m\noaps: [a/b/c]\ncombine: sum\n", "neither"),
            (
                "expression: m\noaps: [eu]\ncombine: median\n",
                "unknown variant",
            ),
            (
                "expression: m\noaps: [eu]\ncombine: sum\nextra: 1\n",
                "unknown field",
            ),
        ] {
            let refused = spec(yaml).unwrap_err();
            assert!(refused.contains(says), "{yaml}: {refused}");
        }
    }
}
