//! The OpenAPI 3 document, generated from the handlers' `#[utoipa::path]` annotations and
//! the request and response types. A test checks it against [`crate::route_table`], so
//! every route is documented and every documented route exists.

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::error::ErrorBody;
use crate::routes::*;

/// The error answers every operation can give, added to each so the document is complete
/// without repeating them on every handler: 400 (a malformed query, path or body), 401/403
/// (secured operations), 404, 409, 413/415 (with a body), 429 and 503.
struct StandardErrors;

impl StandardErrors {
    fn add(op: &mut Operation, secured: bool) {
        let mut codes = vec![
            ("400", "malformed request"),
            ("404", "not found (or not yours to see)"),
            ("503", "the store cannot serve now"),
        ];
        if secured {
            codes.push(("401", "not logged in, or the token is invalid or expired"));
            codes.push(("403", "logged in, but not allowed"));
        }
        if op.request_body.is_some() {
            codes.push(("409", "conflicts with what exists"));
            codes.push(("413", "body larger than [admin] max_body_bytes"));
            codes.push(("415", "body is not application/json"));
            codes.push(("429", "too many attempts"));
        }
        for (code, what) in codes {
            op.responses
                .responses
                .entry(code.into())
                .or_insert_with(|| {
                    RefOr::T(
                        ResponseBuilder::new()
                            .description(what)
                            .content(
                                "application/json",
                                ContentBuilder::new()
                                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                                    .build(),
                            )
                            .build(),
                    )
                });
        }
    }
}

impl Modify for StandardErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/api/v1/") || path == "/api/v1/openapi.json" {
                continue;
            }
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                Self::add(op, secured);
            }
        }
    }
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT access token or mak.* API key")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "messs admin API", version = "1",
        description = "Operate a messs MQTT broker: tenants, devices, clients, sessions, audit. \
            Log in at /api/v1/auth/login, then send `Authorization: Bearer ACCESS_TOKEN`."),
    paths(
        healthz, readyz, metrics, openapi_json,
        login, refresh, logout, me, change_password, totp_enrol, totp_confirm,
        list_admins, create_admin, get_admin, update_admin, delete_admin,
        list_api_keys, create_api_key, delete_api_key,
        list_tenants, create_tenant, get_tenant, update_tenant,
        list_devices, create_device, get_device, update_device, delete_device,
        list_clients, kick_client, list_sessions, list_subscriptions,
        list_rules, add_rule, remove_rule,
        list_jwt_keys, put_jwt_key, remove_jwt_key, list_cas, add_ca, remove_ca, revoke_cert,
        list_retained, delete_retained, publish, query_telemetry,
        read_audit, verify_audit, audit_head,
        get_limits, get_bans, put_bans, reload, checkpoint,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth, &StandardErrors),
)]
struct ApiDoc;

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
