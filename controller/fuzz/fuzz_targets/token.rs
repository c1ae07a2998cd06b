//! Service-account tokens a proxy presents for its certificate: file-source
//! JWTs (the first byte even) and the API server's TokenReview answers (odd,
//! as JSON). Invariants: no panic; a JWT is accepted only if it verifies
//! under the fixture's key (made with `weft-controller token-key`), with
//! the right audience and issuer, and then names the service account of
//! its subject; a TokenReview is accepted only when it says authenticated,
//! for the asked audience, of a service-account user.
#![no_main]

use k8s_openapi::api::authentication::v1::TokenReviewStatus;
use libfuzzer_sys::fuzz_target;
use weft_controller::token::{TokenVerifier, review_outcome};

const VERIFY_KEY: &[u8] = include_bytes!("../token-signing.pub");
const AUDIENCE: &str = weft_api::identity::TOKEN_AUDIENCE;

fuzz_target!(|input: &[u8]| {
    let Some((&choice, rest)) = input.split_first() else {
        return;
    };
    if choice & 1 == 0 {
        let Ok(token) = std::str::from_utf8(rest) else {
            return;
        };
        let verifier = TokenVerifier::file(VERIFY_KEY, AUDIENCE).expect("the fixture key");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        if let Ok(account) = runtime.block_on(verifier.verify(token)) {
            assert!(!account.namespace.is_empty() && !account.name.is_empty());
            assert_eq!(token.trim().split('.').count(), 3, "{token}");
        }
        return;
    }
    let Ok(status) = serde_json::from_slice::<TokenReviewStatus>(rest) else {
        return;
    };
    if let Ok(account) = review_outcome(AUDIENCE, status.clone()) {
        assert_eq!(status.authenticated, Some(true));
        let user = status.user.and_then(|u| u.username).unwrap_or_default();
        assert_eq!(
            user,
            format!(
                "system:serviceaccount:{}:{}",
                account.namespace, account.name
            )
        );
        assert!(
            status
                .audiences
                .is_some_and(|a| a.iter().any(|a| a == AUDIENCE))
        );
    }
});
