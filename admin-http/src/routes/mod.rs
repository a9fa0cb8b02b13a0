//! Every route of the admin plane, in one table: the router is built from it and the
//! OpenAPI test compares it with the document, so a route cannot exist undocumented.

mod admins;
mod api_keys;
mod audit;
mod auth;
mod clients;
mod devices;
mod messages;
mod operations;
mod security;
mod system;
mod tenants;

use axum::http::Method;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{middleware, Router};

use crate::Shared;

pub(crate) use admins::*;
pub(crate) use api_keys::*;
pub(crate) use audit::*;
pub(crate) use auth::*;
pub(crate) use clients::*;
pub(crate) use devices::*;
pub(crate) use messages::*;
pub(crate) use operations::*;
pub(crate) use security::*;
pub(crate) use system::*;
pub(crate) use tenants::*;

struct Api {
    router: Router<Shared>,
    routes: Vec<(Method, &'static str)>,
}

impl Api {
    fn at(mut self, method: Method, path: &'static str, handler: MethodRouter<Shared>) -> Self {
        self.routes.push((method, path));
        self.router = self.router.route(path, handler);
        self
    }
}

fn filter(m: &Method) -> MethodFilter {
    match *m {
        Method::POST => MethodFilter::POST,
        Method::PUT => MethodFilter::PUT,
        Method::PATCH => MethodFilter::PATCH,
        Method::DELETE => MethodFilter::DELETE,
        _ => MethodFilter::GET,
    }
}

macro_rules! api {
    ($($method:ident $path:literal => $handler:path,)*) => {
        fn api() -> Api {
            let api = Api { router: Router::new(), routes: Vec::new() };
            $(let api = api.at(Method::$method, $path, on(filter(&Method::$method), $handler));)*
            api
        }
    };
}

api! {
    GET "/healthz" => healthz,
    GET "/readyz" => readyz,
    GET "/metrics" => metrics,
    GET "/api/v1/openapi.json" => openapi_json,
    POST "/api/v1/auth/login" => login,
    POST "/api/v1/auth/refresh" => refresh,
    POST "/api/v1/auth/logout" => logout,
    GET "/api/v1/auth/me" => me,
    POST "/api/v1/auth/password" => change_password,
    POST "/api/v1/auth/totp/enrol" => totp_enrol,
    POST "/api/v1/auth/totp/confirm" => totp_confirm,
    GET "/api/v1/admins" => list_admins,
    POST "/api/v1/admins" => create_admin,
    GET "/api/v1/admins/{username}" => get_admin,
    PATCH "/api/v1/admins/{username}" => update_admin,
    DELETE "/api/v1/admins/{username}" => delete_admin,
    GET "/api/v1/api-keys" => list_api_keys,
    POST "/api/v1/api-keys" => create_api_key,
    DELETE "/api/v1/api-keys/{id}" => delete_api_key,
    GET "/api/v1/tenants" => list_tenants,
    POST "/api/v1/tenants" => create_tenant,
    GET "/api/v1/tenants/{tenant}" => get_tenant,
    PATCH "/api/v1/tenants/{tenant}" => update_tenant,
    GET "/api/v1/tenants/{tenant}/devices" => list_devices,
    POST "/api/v1/tenants/{tenant}/devices" => create_device,
    GET "/api/v1/tenants/{tenant}/devices/{username}" => get_device,
    PATCH "/api/v1/tenants/{tenant}/devices/{username}" => update_device,
    DELETE "/api/v1/tenants/{tenant}/devices/{username}" => delete_device,
    GET "/api/v1/tenants/{tenant}/clients" => list_clients,
    DELETE "/api/v1/tenants/{tenant}/clients/{client_id}" => kick_client,
    GET "/api/v1/tenants/{tenant}/sessions" => list_sessions,
    GET "/api/v1/tenants/{tenant}/sessions/{client_id}/subscriptions" => list_subscriptions,
    GET "/api/v1/tenants/{tenant}/acl" => list_rules,
    POST "/api/v1/tenants/{tenant}/acl" => add_rule,
    DELETE "/api/v1/tenants/{tenant}/acl/{id}" => remove_rule,
    GET "/api/v1/tenants/{tenant}/jwt-keys" => list_jwt_keys,
    POST "/api/v1/tenants/{tenant}/jwt-keys" => put_jwt_key,
    DELETE "/api/v1/tenants/{tenant}/jwt-keys/{kid}" => remove_jwt_key,
    GET "/api/v1/tenants/{tenant}/cas" => list_cas,
    POST "/api/v1/tenants/{tenant}/cas" => add_ca,
    DELETE "/api/v1/tenants/{tenant}/cas/{fingerprint}" => remove_ca,
    POST "/api/v1/tenants/{tenant}/revoked-certs" => revoke_cert,
    GET "/api/v1/tenants/{tenant}/retained" => list_retained,
    DELETE "/api/v1/tenants/{tenant}/retained" => delete_retained,
    POST "/api/v1/tenants/{tenant}/publish" => publish,
    GET "/api/v1/tenants/{tenant}/telemetry" => query_telemetry,
    GET "/api/v1/audit" => read_audit,
    GET "/api/v1/audit/verify" => verify_audit,
    GET "/api/v1/audit/head" => audit_head,
    GET "/api/v1/limits" => get_limits,
    GET "/api/v1/bans" => get_bans,
    PUT "/api/v1/bans" => put_bans,
    POST "/api/v1/operations/reload" => reload,
    POST "/api/v1/operations/checkpoint" => checkpoint,
}

/// Every route: (method, path), paths in OpenAPI/axum template syntax.
pub fn route_table() -> Vec<(String, String)> {
    api()
        .routes
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_owned()))
        .collect()
}

/// The router over `state`, every request passing [`crate::principal::authenticate`].
pub(crate) fn router(state: Shared) -> Router {
    api()
        .router
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::principal::authenticate,
        ))
        .with_state(state)
}
