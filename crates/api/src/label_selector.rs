//! Kubernetes label selectors in their text form, as kube-apiserver reads `labelSelector`
//! (and the HPA sends it to a metrics API): `a=b`, `a==b`, `a!=b`, `a in (x,y)`,
//! `a notin (x)`, `a`, `!a`, `a>1`, `a<1`, comma-separated, with free whitespace. One
//! parser for the adapter (what an external metric accepts of a selector) and the
//! API-server double (which objects a list selects).

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
    GreaterThan(String, String),
    LessThan(String, String),
}

impl Requirement {
    pub fn key(&self) -> &str {
        match self {
            Requirement::Equals(k, _)
            | Requirement::NotEquals(k, _)
            | Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::DoesNotExist(k)
            | Requirement::GreaterThan(k, _)
            | Requirement::LessThan(k, _) => k,
        }
    }

    /// Whether labels (`label` looks one up) meet the requirement, as kube-apiserver's
    /// `labels.Requirement.Matches` decides: `!=` and `notin` hold for a missing label;
    /// `>` and `<` compare integers and fail on a missing or non-integer one.
    pub fn matches<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        let integer = |text: &str| text.parse::<i64>().ok();
        match self {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| !vs.iter().any(|v| v == l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::DoesNotExist(k) => label(k).is_none(),
            Requirement::GreaterThan(k, v) => {
                matches!((label(k).and_then(integer), integer(v)), (Some(l), Some(v)) if l > v)
            }
            Requirement::LessThan(k, v) => {
                matches!((label(k).and_then(integer), integer(v)), (Some(l), Some(v)) if l < v)
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("label selector {selector:?}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

fn is_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.at..]
    }

    fn skip_spaces(&mut self) {
        let trimmed = self.rest().trim_start();
        self.at = self.text.len() - trimmed.len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_spaces();
        if self.rest().starts_with(token) {
            self.at += token.len();
            true
        } else {
            false
        }
    }

    fn word(&mut self, allowed: fn(char) -> bool) -> &str {
        self.skip_spaces();
        let len = self
            .rest()
            .find(|c: char| !allowed(c))
            .unwrap_or(self.rest().len());
        let word = &self.text[self.at..self.at + len];
        self.at += len;
        word
    }

    /// `in` / `notin` need a space or `(` after them, so keys like `instance` still parse.
    fn eat_keyword(&mut self, keyword: &str) -> bool {
        self.skip_spaces();
        let rest = self.rest();
        if rest.starts_with(keyword)
            && rest[keyword.len()..]
                .chars()
                .next()
                .is_some_and(|c| c == '(' || c.is_whitespace())
        {
            self.at += keyword.len();
            true
        } else {
            false
        }
    }

    fn values(&mut self) -> Result<Vec<String>, String> {
        if !self.eat("(") {
            return Err("expected ( after in / notin".into());
        }
        let mut values = Vec::new();
        loop {
            values.push(self.word(is_value_char).to_string());
            if self.eat(")") {
                return Ok(values);
            }
            if !self.eat(",") {
                return Err("expected , or ) in a value set".into());
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        if self.eat("!") {
            let key = self.word(is_key_char);
            if key.is_empty() {
                return Err("expected a key after !".into());
            }
            return Ok(Requirement::DoesNotExist(key.to_string()));
        }
        let key = self.word(is_key_char).to_string();
        if key.is_empty() {
            return Err(format!("expected a key at {:?}", self.rest()));
        }
        let requirement = if self.eat("==") || self.eat("=") {
            Requirement::Equals(key, self.word(is_value_char).to_string())
        } else if self.eat("!=") {
            Requirement::NotEquals(key, self.word(is_value_char).to_string())
        } else if self.eat(">") {
            Requirement::GreaterThan(key, self.word(is_value_char).to_string())
        } else if self.eat("<") {
            Requirement::LessThan(key, self.word(is_value_char).to_string())
        } else if self.eat_keyword("notin") {
            Requirement::NotIn(key, self.values()?)
        } else if self.eat_keyword("in") {
            Requirement::In(key, self.values()?)
        } else {
            Requirement::Exists(key)
        };
        Ok(requirement)
    }
}

/// Parses a selector; an empty one selects everything (no requirements).
pub fn parse(selector: &str) -> Result<Vec<Requirement>, SelectorError> {
    let mut parser = Parser {
        text: selector,
        at: 0,
    };
    let error = |reason: String| SelectorError {
        selector: selector.to_string(),
        reason,
    };
    let mut requirements = Vec::new();
    parser.skip_spaces();
    if parser.rest().is_empty() {
        return Ok(requirements);
    }
    loop {
        requirements.push(parser.requirement().map_err(error)?);
        parser.skip_spaces();
        if parser.rest().is_empty() {
            return Ok(requirements);
        }
        if !parser.eat(",") {
            return Err(error(format!("unexpected {:?}", parser.rest())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Requirement::*;

    fn s(v: &str) -> String {
        v.to_string()
    }

    #[test]
    fn every_operator_parses_with_free_whitespace() {
        assert_eq!(
            parse(" service.str.0 = satellite ,service.byte.1==3a, a!=b, env in (x, y),tier notin(z),present, !absent, n>1, m<2").unwrap(),
            [
                Equals(s("service.str.0"), s("satellite")),
                Equals(s("service.byte.1"), s("3a")),
                NotEquals(s("a"), s("b")),
                In(s("env"), vec![s("x"), s("y")]),
                NotIn(s("tier"), vec![s("z")]),
                Exists(s("present")),
                DoesNotExist(s("absent")),
                GreaterThan(s("n"), s("1")),
                LessThan(s("m"), s("2")),
            ]
        );
    }

    #[test]
    fn keys_that_start_like_operators_and_empty_values_parse() {
        assert_eq!(
            parse("instance=i-1,internal,label=").unwrap(),
            [
                Equals(s("instance"), s("i-1")),
                Exists(s("internal")),
                Equals(s("label"), s("")),
            ]
        );
        assert_eq!(parse("").unwrap(), []);
        assert_eq!(parse("   ").unwrap(), []);
    }

    #[test]
    fn requirements_match_as_kube_apiserver_matches_them() {
        let labels = |key: &str| match key {
            "app" => Some("oap"),
            "tier" => Some("backend"),
            "shards" => Some("3"),
            _ => None,
        };
        for (selector, expected) in [
            ("app=oap", true),
            ("app==oap,tier=backend", true),
            ("app!=oap", false),
            ("zone!=a", true),
            ("tier in (backend, frontend)", true),
            ("tier notin (backend)", false),
            ("zone notin (a)", true),
            ("app", true),
            ("!app", false),
            ("!zone", true),
            ("shards>2,shards<4", true),
            ("shards>3", false),
            ("app>1", false),
            ("zone<1", false),
            ("", true),
        ] {
            let requirements = parse(selector).unwrap();
            assert_eq!(
                requirements.iter().all(|r| r.matches(labels)),
                expected,
                "{selector}"
            );
        }
    }

    #[test]
    fn broken_selectors_say_where() {
        for bad in ["a=b,", "a in x", "a in (x", "=b", "a=b c", "!"] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.selector, bad);
            assert!(!err.reason.is_empty(), "{bad}");
        }
    }
}
