//! SMI `TrafficSplit` (`split.smi-spec.io`), the one CRD Weft reads.
//!
//! The versions differ only in how a weight is written (v1alpha1: a
//! quantity such as `500m`; v1alpha2 and later: an integer) and in
//! v1alpha3+'s `matches`, which Weft does not act on. Both shapes read into
//! one type; weights are relative to each other.

use serde::{Deserialize, Serialize};

/// The API group.
pub const GROUP: &str = "split.smi-spec.io";
/// The kind.
pub const KIND: &str = "TrafficSplit";
/// Versions read, newest first.
pub const VERSIONS: &[&str] = &["v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1"];

/// The part of an object's metadata discovery needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrafficSplit {
    #[serde(default)]
    pub metadata: Meta,
    pub spec: TrafficSplitSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrafficSplitSpec {
    /// The apex service clients address.
    pub service: String,
    #[serde(default)]
    pub backends: Vec<TrafficSplitBackend>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrafficSplitBackend {
    /// A service in the split's namespace.
    pub service: String,
    pub weight: Weight,
}

/// A weight as any SMI version writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Weight {
    Integer(i64),
    /// A Kubernetes quantity (v1alpha1): `1`, `500m`, `0.5`.
    Quantity(String),
}

/// Why a split cannot be used; it is then ignored as a whole and the apex
/// service routes to its own endpoints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("spec.service is empty")]
    NoService,
    #[error("spec.backends is empty")]
    NoBackends,
    #[error("backend {0:?}: weight {1:?} is not a non-negative number")]
    BadWeight(String, String),
    #[error("the backends' weights add up to zero")]
    ZeroTotal,
}

impl SplitError {
    /// A short metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            SplitError::NoService => "no_service",
            SplitError::NoBackends => "no_backends",
            SplitError::BadWeight(..) => "bad_weight",
            SplitError::ZeroTotal => "zero_total_weight",
        }
    }
}

impl Weight {
    /// The weight in thousandths, so that quantities like `500m` and
    /// integers compare on one scale.
    pub fn millis(&self) -> Option<u64> {
        match self {
            Weight::Integer(n) => u64::try_from(*n).ok()?.checked_mul(1000),
            Weight::Quantity(q) => {
                let q = q.trim();
                if let Some(m) = q.strip_suffix('m') {
                    return m.parse().ok();
                }
                let v: f64 = q.parse().ok()?;
                (0.0..1e15)
                    .contains(&v)
                    .then(|| (v * 1000.0).round() as u64)
            }
        }
    }
}

impl TrafficSplit {
    /// The backends and their weights in thousandths, or why the split is
    /// unusable.
    pub fn weighted_backends(&self) -> Result<Vec<(String, u64)>, SplitError> {
        self.spec.weighted_backends()
    }
}

impl TrafficSplitSpec {
    /// The backends and their weights in thousandths, or why the split is
    /// unusable.
    pub fn weighted_backends(&self) -> Result<Vec<(String, u64)>, SplitError> {
        if self.service.trim().is_empty() {
            return Err(SplitError::NoService);
        }
        if self.backends.is_empty() {
            return Err(SplitError::NoBackends);
        }
        let mut out = Vec::with_capacity(self.backends.len());
        for b in &self.backends {
            let w = b.weight.millis().ok_or_else(|| {
                SplitError::BadWeight(b.service.clone(), format!("{:?}", b.weight))
            })?;
            out.push((b.service.clone(), w));
        }
        if out.iter().all(|(_, w)| *w == 0) {
            return Err(SplitError::ZeroTotal);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(json: &str) -> TrafficSplit {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn reads_integer_and_quantity_weights() {
        let s = split(
            r#"{"metadata":{"name":"web","namespace":"demo"},
                "spec":{"service":"web","backends":[
                  {"service":"web-v1","weight":90},{"service":"web-v2","weight":10}]}}"#,
        );
        assert_eq!(
            s.weighted_backends().unwrap(),
            vec![("web-v1".into(), 90_000), ("web-v2".into(), 10_000)]
        );
        let s = split(
            r#"{"spec":{"service":"web","backends":[
                  {"service":"a","weight":"500m"},{"service":"b","weight":"1.5"},
                  {"service":"c","weight":"2"}]}}"#,
        );
        assert_eq!(
            s.weighted_backends().unwrap(),
            vec![("a".into(), 500), ("b".into(), 1500), ("c".into(), 2000)]
        );
    }

    #[test]
    fn refuses_unusable_splits() {
        let zero = split(r#"{"spec":{"service":"web","backends":[{"service":"a","weight":0}]}}"#);
        assert_eq!(zero.weighted_backends(), Err(SplitError::ZeroTotal));
        let none = split(r#"{"spec":{"service":"web","backends":[]}}"#);
        assert_eq!(none.weighted_backends(), Err(SplitError::NoBackends));
        let neg = split(r#"{"spec":{"service":"web","backends":[{"service":"a","weight":-1}]}}"#);
        assert!(matches!(
            neg.weighted_backends(),
            Err(SplitError::BadWeight(..))
        ));
        let junk =
            split(r#"{"spec":{"service":"web","backends":[{"service":"a","weight":"lots"}]}}"#);
        assert!(matches!(
            junk.weighted_backends(),
            Err(SplitError::BadWeight(..))
        ));
        let nosvc = split(r#"{"spec":{"service":" ","backends":[{"service":"a","weight":1}]}}"#);
        assert_eq!(nosvc.weighted_backends(), Err(SplitError::NoService));
    }
}
