//! The OpenAPI 3 document, generated from the handlers' `#[utoipa::path]` annotations and
//! the request and response types. A test checks it against [`crate::route_table`], so
//! every route is documented and every documented route exists.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::*;

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
        list_jwt_keys, put_jwt_key, remove_jwt_key, list_cas, add_ca, revoke_cert,
        list_retained, delete_retained, publish, query_telemetry,
        read_audit, verify_audit,
        get_limits, get_bans, put_bans, reload, checkpoint,
    ),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
