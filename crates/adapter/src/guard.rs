//! The gate in front of every route: the caller is authenticated (front-proxy certificate
//! and headers, else bearer token, else anonymous) and authorized with a
//! SubjectAccessReview before the request reaches the API; anonymous callers reach only the
//! health paths. Answers are 401 and 403 `Status` objects as kube-apiserver writes them.
//! Every answer is counted by request kind and code.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;

use crate::access::{Access, ClientCert};
use crate::auth::{self, Identity};
use crate::metrics::{Metrics, request_kind};
use crate::server::failure;

struct Gate {
    access: Arc<Access>,
    metrics: Arc<Metrics>,
}

/// `router` behind authentication, authorization and request metrics.
pub fn guarded(router: Router, access: Arc<Access>, metrics: Arc<Metrics>) -> Router {
    let gate = Arc::new(Gate { access, metrics });
    router.layer(middleware::from_fn_with_state(gate, gate_request))
}

async fn gate_request(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let kind = request_kind(request.uri().path());
    // The body is set aside during the reviews: a borrowed request could not be held
    // across them (its body is not Sync), and copying its headers would cost every request.
    let (parts, body) = request.into_parts();
    let no_cert = ClientCert::default();
    let cert = parts.extensions.get::<ClientCert>().unwrap_or(&no_cert);
    let response = match check(&gate, parts.uri.path(), cert, &parts.headers).await {
        Ok(()) => next.run(Request::from_parts(parts, body)).await,
        Err(refusal) => refusal,
    };
    gate.metrics
        .request(kind, response.status().as_u16(), started.elapsed());
    response
}

/// `Ok` when the request may go on; otherwise the answer to give.
async fn check(
    gate: &Gate,
    path: &str,
    cert: &ClientCert,
    headers: &HeaderMap,
) -> Result<(), Response> {
    if auth::is_public(path) {
        return Ok(());
    }
    let identity: Identity = match gate.access.authenticate(cert, headers).await {
        Ok(Some(identity)) => identity,
        Ok(None) => {
            return Err(failure(StatusCode::UNAUTHORIZED, "Unauthorized"));
        }
        Err(err) => {
            // As kube-apiserver: the caller learns only that it is not authenticated.
            tracing::warn!(%path, error = %err, "request not authenticated");
            return Err(failure(StatusCode::UNAUTHORIZED, "Unauthorized"));
        }
    };
    let attributes = auth::attributes(path);
    match gate.access.authorize(&identity, &attributes).await {
        Ok(decision) if decision.allowed => {
            gate.metrics.authorization("allowed");
            Ok(())
        }
        Ok(decision) => {
            gate.metrics.authorization("denied");
            let message = auth::forbidden_message(&identity, &attributes, &decision.reason);
            tracing::info!(%path, user = %identity.user, "forbidden");
            Err(failure(StatusCode::FORBIDDEN, &message))
        }
        Err(err) => {
            gate.metrics.authorization("error");
            tracing::error!(%path, error = %err, "authorization failed");
            Err(failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("Internal error occurred: {err}"),
            ))
        }
    }
}
