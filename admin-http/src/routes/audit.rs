//! `/api/v1/audit`: the hash-chained audit log, read in order and verified end to end.
//! Broker-wide: superadmins and global viewers.

use crate::extract::Query;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiResult, ErrorBody};
use crate::rbac::{Access, Area, Principal};
use crate::Shared;

/// One audit record.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// Unix ms.
    pub time_ms: u64,
    /// Who: an admin, `key:ID`, `broker`, `anonymous`.
    pub actor: String,
    /// What, e.g. `admin.login`, `device.add`, `client.kick`.
    pub action: String,
    /// Details.
    pub detail: String,
}

/// A page of the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// Records in chain order.
    pub items: Vec<AuditEntry>,
    /// The `from` of the next page; null at the end.
    pub next: Option<u64>,
}

/// Which records.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// First sequence number (default 1).
    #[param(minimum = 1)]
    pub from: Option<i64>,
    /// Records per page (1..=1000; default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Only records whose action starts with this.
    pub action: Option<String>,
    /// Only records of this actor.
    pub actor: Option<String>,
}

/// The verification of the whole chain.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditVerification {
    /// No link is broken.
    pub intact: bool,
    /// Records checked.
    pub records: u64,
    /// Sequence number of the first broken link, if any.
    pub first_broken: Option<u64>,
    /// What is wrong there.
    pub problem: Option<String>,
}

/// Read the audit log.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn read_audit(
    State(state): State<Shared>,
    p: Principal,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    p.allow(Area::Audit, Access::Read, None)?;
    let limit = crate::page::limit(q.limit)?;
    let from = match q.from {
        None => 1,
        Some(n) if n >= 1 => n as u64,
        Some(_) => {
            return Err(crate::error::AdminError::BadRequest(
                "from: at least 1".into(),
            ))
        }
    };
    // Filters skip records; the scan is bounded so a filter that matches nothing does not
    // walk the whole log in one request.
    let scan = (limit * 10).min(10_000);
    let (records, last) = state
        .blocking(move |s| {
            let rs = s.read_audit(from, scan)?;
            let last = rs.last().map(|r| r.seq);
            Ok((rs, last))
        })
        .await?;
    let scanned_all = records.len() < scan;
    let mut items = Vec::new();
    let mut next = None;
    for r in records {
        if items.len() == limit {
            next = Some(r.seq);
            break;
        }
        let action_ok = q
            .action
            .as_ref()
            .is_none_or(|a| r.event.action.starts_with(a.as_str()));
        let actor_ok = q.actor.as_ref().is_none_or(|a| r.event.actor == *a);
        if action_ok && actor_ok {
            items.push(AuditEntry {
                seq: r.seq,
                time_ms: r.event.time_ms,
                actor: r.event.actor,
                action: r.event.action,
                detail: r.event.detail,
            });
        }
    }
    if next.is_none() && !scanned_all {
        next = last.map(|l| l + 1);
    }
    Ok(Json(AuditPage { items, next }))
}

/// Verify the audit chain end to end.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit",
    responses((status = 200, body = AuditVerification), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn verify_audit(
    State(state): State<Shared>,
    p: Principal,
) -> ApiResult<Json<AuditVerification>> {
    p.allow(Area::Audit, Access::Read, None)?;
    let report = state.blocking(|s| Ok(s.verify_audit()?)).await?;
    Ok(Json(AuditVerification {
        intact: report.broken.is_none(),
        records: report.records,
        first_broken: report.broken.as_ref().map(|b| b.seq),
        problem: report.broken.map(|b| b.reason),
    }))
}
