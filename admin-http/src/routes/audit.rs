//! `/api/v1/audit`: the chained audit log, read in order, verified end to end (against a
//! head exported earlier, if given), and its head, signed with the audit key, for an
//! operator to keep outside the broker. Broker-wide: superadmins and global viewers.

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
    /// Details (empty once redacted).
    pub detail: String,
    /// The tenant whose client caused it (its audit retention applies); null for the
    /// broker's and operators' records.
    pub tenant: Option<String>,
    /// Its details (actor and detail) were dropped by its tenant's audit retention; its
    /// time, action and link remain, and the chain still verifies.
    pub redacted: bool,
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
    /// Only records of this tenant.
    pub tenant: Option<String>,
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
    /// The first record linked with the audit key (earlier ones are hash-linked only);
    /// null: none is.
    pub keyed_from: Option<u64>,
    /// The head the walk ended at, `SEQ:HEX`.
    pub head: String,
}

/// A head exported earlier, to verify against.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VerifyQuery {
    /// `SEQ:HEX` from an earlier GET /api/v1/audit/head (or the broker's log): the chain
    /// must still reach that record and hold the same one there.
    pub head: Option<String>,
}

/// The audit chain's head.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditHeadView {
    /// Sequence number of the newest record.
    pub seq: u64,
    /// Its link (HMAC-SHA256 under the audit key, or SHA-256 without one), hex.
    pub link: String,
    /// Both as `SEQ:HEX`, the form `messs storage verify --audit-head` and
    /// `GET /api/v1/audit/verify?head=` take.
    pub head: String,
    /// Whether records are linked with an audit key.
    pub keyed: bool,
    /// HMAC-SHA256 under the audit key of "messs audit head v1" || seq (u64 BE) || link,
    /// hex; null without a key.
    pub signature: Option<String>,
}

/// The audit chain's head now, signed: keep copies outside the broker (a rolled-back or
/// truncated store verifies on its own, but not against a head it no longer reaches).
#[utoipa::path(get, path = "/api/v1/audit/head", tag = "audit",
    responses((status = 200, body = AuditHeadView), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn audit_head(
    State(state): State<Shared>,
    p: Principal,
) -> ApiResult<Json<AuditHeadView>> {
    p.allow(Area::Audit, Access::Read, None)?;
    state
        .blocking(|s| {
            // The head of what is written: a head served before its record is durable
            // would, after a crash, look like a rollback.
            s.sync()?;
            let head = s.audit_head();
            Ok(Json(AuditHeadView {
                seq: head.seq,
                link: crate::secret::hex(&head.link),
                head: head.encode(),
                keyed: s.audit_keyed(),
                signature: s.sign_audit_head(&head).map(|m| crate::secret::hex(&m)),
            }))
        })
        .await
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
    // Anonymous events counted but not yet summed up are written first, so a reader
    // sees them all.
    state.flush_anonymous(true).await;
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
        let tenant_ok = q
            .tenant
            .as_ref()
            .is_none_or(|t| r.event.tenant.as_deref() == Some(t.as_str()));
        if action_ok && actor_ok && tenant_ok {
            items.push(AuditEntry {
                seq: r.seq,
                time_ms: r.event.time_ms,
                actor: r.event.actor,
                action: r.event.action,
                detail: r.event.detail,
                tenant: r.event.tenant,
                redacted: r.redacted,
            });
        }
    }
    if next.is_none() && !scanned_all {
        next = last.map(|l| l + 1);
    }
    Ok(Json(AuditPage { items, next }))
}

/// Verify the audit chain end to end.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit", params(VerifyQuery),
    responses((status = 200, body = AuditVerification), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn verify_audit(
    State(state): State<Shared>,
    p: Principal,
    Query(q): Query<VerifyQuery>,
) -> ApiResult<Json<AuditVerification>> {
    p.allow(Area::Audit, Access::Read, None)?;
    let exported = q
        .head
        .as_deref()
        .map(messs_storage::audit::AuditHead::parse)
        .transpose()
        .map_err(|e| crate::error::AdminError::BadRequest(e.to_string()))?;
    let report = state
        .blocking(move |s| Ok(s.verify_audit_against(exported.as_ref())?))
        .await?;
    Ok(Json(AuditVerification {
        intact: report.broken.is_none(),
        records: report.records,
        first_broken: report.broken.as_ref().map(|b| b.seq),
        problem: report.broken.map(|b| b.reason),
        keyed_from: report.keyed_from,
        head: report.head.encode(),
    }))
}
