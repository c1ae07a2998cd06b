//! Checking the service-account token a proxy presents.
//!
//! Two sources, as DESIGN.md describes:
//! - `kubernetes`: the API server's TokenReview, with Weft's own audience,
//!   so a token minted for anything else (the API server itself, say) is
//!   refused;
//! - `file`: ES256 JWTs shaped like projected service-account tokens,
//!   signed by a key the controller owns (`weft-controller token` mints
//!   them). The mesh on one machine hands one to each pod.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use weft_api::identity::{parse_service_account_username, service_account_username};

/// Issuer claim of file-source tokens.
pub const FILE_TOKEN_ISSUER: &str = "weft-controller/file";

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

/// Why a token was not accepted. Each maps to a `reason` label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token has expired")]
    Expired,
    #[error("token is not for audience {0}")]
    WrongAudience(String),
    #[error("token is not recognised: {0}")]
    Unknown(String),
    #[error("token review is unavailable: {0}")]
    Unavailable(String),
}

impl TokenRefusal {
    /// Every value [`Self::reason`] can take.
    pub const REASONS: [&'static str; 5] = [
        "malformed_token",
        "expired_token",
        "wrong_audience",
        "unknown_token",
        "token_review_unavailable",
    ];

    pub fn reason(&self) -> &'static str {
        match self {
            TokenRefusal::Malformed(_) => "malformed_token",
            TokenRefusal::Expired => "expired_token",
            TokenRefusal::WrongAudience(_) => "wrong_audience",
            TokenRefusal::Unknown(_) => "unknown_token",
            TokenRefusal::Unavailable(_) => "token_review_unavailable",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Vec<String>,
    exp: u64,
    iat: u64,
    nbf: u64,
}

/// Checks tokens from one of the two sources.
pub enum TokenVerifier {
    File {
        key: Box<DecodingKey>,
        audience: String,
    },
    Kubernetes {
        client: kube::Client,
        audience: String,
        /// TokenReviews in flight: a flood of certificate requests waits
        /// here (each call is bounded by the gRPC server's timeout) rather
        /// than becoming a flood at the API server.
        reviews: tokio::sync::Semaphore,
    },
}

/// TokenReviews the controller has in flight at once.
pub const MAX_TOKEN_REVIEWS: usize = 32;

impl TokenVerifier {
    /// The Kubernetes source: TokenReview with Weft's `audience`.
    pub fn kubernetes(client: kube::Client, audience: &str) -> Self {
        TokenVerifier::Kubernetes {
            client,
            audience: audience.into(),
            reviews: tokio::sync::Semaphore::new(MAX_TOKEN_REVIEWS),
        }
    }
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenVerifier::File { audience, .. } => {
                write!(f, "TokenVerifier::File {{ audience: {audience:?} }}")
            }
            TokenVerifier::Kubernetes { audience, .. } => {
                write!(f, "TokenVerifier::Kubernetes {{ audience: {audience:?} }}")
            }
        }
    }
}

impl TokenVerifier {
    /// The file source, checking with the public key in `pem`.
    pub fn file(pem: &[u8], audience: &str) -> anyhow::Result<Self> {
        Ok(TokenVerifier::File {
            key: Box::new(DecodingKey::from_ec_pem(pem)?),
            audience: audience.into(),
        })
    }

    pub async fn verify(&self, token: &str) -> Result<ServiceAccount, TokenRefusal> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenRefusal::Malformed("empty token".into()));
        }
        match self {
            TokenVerifier::File { key, audience } => verify_file_token(key, audience, token),
            TokenVerifier::Kubernetes {
                client,
                audience,
                reviews,
            } => {
                // Only what is shaped like a JWT is worth the API server's
                // time: garbage is refused here.
                jsonwebtoken::decode_header(token)
                    .map_err(|e| TokenRefusal::Malformed(format!("not a JWT: {e}")))?;
                let _review = reviews
                    .acquire()
                    .await
                    .map_err(|e| TokenRefusal::Unavailable(e.to_string()))?;
                token_review(client, audience, token).await
            }
        }
    }
}

fn verify_file_token(
    key: &DecodingKey,
    audience: &str,
    token: &str,
) -> Result<ServiceAccount, TokenRefusal> {
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[FILE_TOKEN_ISSUER]);
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    validation.validate_nbf = true;
    validation.leeway = 5;
    let data =
        jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => TokenRefusal::Expired,
            ErrorKind::InvalidAudience => TokenRefusal::WrongAudience(audience.into()),
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidIssuer
            | ErrorKind::ImmatureSignature
            | ErrorKind::InvalidAlgorithm => TokenRefusal::Unknown(e.to_string()),
            _ => TokenRefusal::Malformed(e.to_string()),
        })?;
    let (namespace, name) = parse_service_account_username(&data.claims.sub).ok_or_else(|| {
        TokenRefusal::Unknown(format!(
            "subject {:?} is not a service account",
            data.claims.sub
        ))
    })?;
    Ok(ServiceAccount {
        namespace: namespace.into(),
        name: name.into(),
    })
}

/// Mints a file-source token (the `token` command).
pub fn mint_file_token(
    signing_key_pem: &[u8],
    namespace: &str,
    service_account: &str,
    audience: &str,
    ttl: Duration,
    expired: bool,
) -> anyhow::Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (iat, exp) = if expired {
        // For tests of refusal: a token that ran out a while ago.
        (now - 2 * ttl.as_secs() - 60, now - ttl.as_secs() - 60)
    } else {
        (now, now + ttl.as_secs())
    };
    let claims = Claims {
        iss: FILE_TOKEN_ISSUER.into(),
        sub: service_account_username(namespace, service_account),
        aud: vec![audience.into()],
        exp,
        iat,
        nbf: iat,
    };
    let key = EncodingKey::from_ec_pem(signing_key_pem)?;
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &key,
    )?)
}

async fn token_review(
    client: &kube::Client,
    audience: &str,
    token: &str,
) -> Result<ServiceAccount, TokenRefusal> {
    use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.into()),
            audiences: Some(vec![audience.into()]),
        },
        ..Default::default()
    };
    let api: kube::Api<TokenReview> = kube::Api::all(client.clone());
    let reviewed = api
        .create(&kube::api::PostParams::default(), &review)
        .await
        .map_err(|e| TokenRefusal::Unavailable(e.to_string()))?;
    review_outcome(audience, reviewed.status.unwrap_or_default())
}

/// Interprets a TokenReview status (separate from the call, to test it).
pub fn review_outcome(
    audience: &str,
    status: k8s_openapi::api::authentication::v1::TokenReviewStatus,
) -> Result<ServiceAccount, TokenRefusal> {
    if status.authenticated != Some(true) {
        let error = status.error.unwrap_or_else(|| "not authenticated".into());
        // The API server only says why in prose.
        return Err(if error.contains("expired") {
            TokenRefusal::Expired
        } else if error.contains("audience") {
            TokenRefusal::WrongAudience(audience.into())
        } else {
            TokenRefusal::Unknown(error)
        });
    }
    // An API server that ignores audiences would accept any token; insist
    // that it confirmed ours.
    if !status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|a| a == audience))
    {
        return Err(TokenRefusal::WrongAudience(audience.into()));
    }
    let username = status.user.and_then(|u| u.username).unwrap_or_default();
    let (namespace, name) = parse_service_account_username(&username)
        .ok_or_else(|| TokenRefusal::Unknown(format!("{username:?} is not a service account")))?;
    Ok(ServiceAccount {
        namespace: namespace.into(),
        name: name.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    #[test]
    fn every_reason_is_listed() {
        for refusal in [
            TokenRefusal::Malformed(String::new()),
            TokenRefusal::Expired,
            TokenRefusal::WrongAudience(String::new()),
            TokenRefusal::Unknown(String::new()),
            TokenRefusal::Unavailable(String::new()),
        ] {
            assert!(TokenRefusal::REASONS.contains(&refusal.reason()));
        }
    }

    fn keys() -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        (key.serialize_pem(), key.public_key_pem())
    }

    #[tokio::test]
    async fn file_tokens_prove_their_service_account() {
        let (private, public) = keys();
        let verifier = TokenVerifier::file(public.as_bytes(), "aud").unwrap();
        let token = mint_file_token(
            private.as_bytes(),
            "demo",
            "web",
            "aud",
            Duration::from_secs(60),
            false,
        )
        .unwrap();
        assert_eq!(
            verifier.verify(&token).await,
            Ok(ServiceAccount {
                namespace: "demo".into(),
                name: "web".into()
            })
        );
    }

    #[tokio::test]
    async fn file_tokens_are_refused_with_reasons() {
        let (private, public) = keys();
        let (other_private, _) = keys();
        let verifier = TokenVerifier::file(public.as_bytes(), "aud").unwrap();
        let mint = |key: &str, aud: &str, expired: bool| {
            mint_file_token(
                key.as_bytes(),
                "demo",
                "web",
                aud,
                Duration::from_secs(60),
                expired,
            )
            .unwrap()
        };
        let reason = |r: Result<ServiceAccount, TokenRefusal>| r.unwrap_err().reason();
        assert_eq!(
            reason(verifier.verify(&mint(&private, "aud", true)).await),
            "expired_token"
        );
        assert_eq!(
            reason(verifier.verify(&mint(&private, "kubernetes", false)).await),
            "wrong_audience"
        );
        assert_eq!(
            reason(verifier.verify(&mint(&other_private, "aud", false)).await),
            "unknown_token"
        );
        assert_eq!(
            reason(verifier.verify("not.a.jwt").await),
            "malformed_token"
        );
        assert_eq!(reason(verifier.verify("").await), "malformed_token");
        // A token with a tampered payload no longer verifies.
        let token = mint(&private, "aud", false);
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        parts[1] = parts[1].replacen('e', "f", 1);
        assert!(verifier.verify(&parts.join(".")).await.is_err());
    }

    #[test]
    fn token_review_outcomes() {
        let ok = TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(vec!["aud".into()]),
            user: Some(UserInfo {
                username: Some("system:serviceaccount:demo:web".into()),
                ..Default::default()
            }),
            error: None,
        };
        assert_eq!(
            review_outcome("aud", ok.clone()).unwrap(),
            ServiceAccount {
                namespace: "demo".into(),
                name: "web".into()
            }
        );
        let no_audience = TokenReviewStatus {
            audiences: None,
            ..ok.clone()
        };
        assert_eq!(
            review_outcome("aud", no_audience).unwrap_err().reason(),
            "wrong_audience"
        );
        let user = TokenReviewStatus {
            user: Some(UserInfo {
                username: Some("alice".into()),
                ..Default::default()
            }),
            ..ok.clone()
        };
        assert_eq!(
            review_outcome("aud", user).unwrap_err().reason(),
            "unknown_token"
        );
        let expired = TokenReviewStatus {
            authenticated: Some(false),
            error: Some("[invalid bearer token, Token has expired.]".into()),
            ..Default::default()
        };
        assert_eq!(
            review_outcome("aud", expired).unwrap_err().reason(),
            "expired_token"
        );
    }
}
