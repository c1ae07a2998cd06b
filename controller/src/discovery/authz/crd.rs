//! Weft's `AuthorizationPolicy` (`policy.weft.io/v1alpha1`), as the CRD in
//! `examples/install/` defines it. It is shaped after the Gateway API's
//! GEP-3779 (identity-based authorization for meshes), which v1.6 ships
//! as a proposal without a CRD: `targetRefs`, `action`, `rules` of
//! `sources` and `networkAttributes`, `enforcementLevel`. Weft adds what
//! the GEP leaves for later: `DENY` and, at the `Application` level, HTTP
//! and gRPC matches.
//!
//! Plain serde types, like the routes': unknown fields are ignored, and a
//! value Weft does not know is kept as written so that it is reported
//! rather than stopping the watch of every policy.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::core::{NamespaceResourceScope, Resource};
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "policy.weft.io";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "AuthorizationPolicy";

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct AuthorizationPolicy {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: AuthorizationPolicySpec,
}

impl Resource for AuthorizationPolicy {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "authorizationpolicies".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    /// `ALLOW` or `DENY`.
    #[serde(default)]
    pub action: String,
    /// `Network` (sources and ports) or `Application` (also HTTP).
    #[serde(default)]
    pub enforcement_level: String,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

/// A Service (the pods it selects) or, with `selector`, Pods.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct TargetRef {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleSpec {
    /// Omitted: any client. Empty: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<SourceSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_attributes: Option<NetworkAttributes>,
    /// Weft's extension: any of these matches (needs `Application`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpMatchSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    /// `ServiceAccount` or `SPIFFE`.
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountSource>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct ServiceAccountSource {
    /// Unset: the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `*`: every service account of the namespace.
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct NetworkAttributes {
    #[serde(default)]
    pub ports: Vec<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct HttpMatchSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatchSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcMatchSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct PathMatchSpec {
    /// `Exact` or `PathPrefix` (the default).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct GrpcMatchSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}
