//! Reading leases: one, or a filtered page.

use crate::objects::{Error, Message};
use crate::wire;

use super::super::broker::TenantBroker;
use super::super::lease::{self, Filter};
use super::super::rejection::{Failure, Rejection};
use super::super::{Ctx, jit, printable};

/// One lease.
#[derive(Debug)]
pub struct GetLease {
    pub id: String,
}

impl Message for GetLease {
    type Reply = Result<wire::Lease, Rejection>;
    const READ_ONLY: bool = true;
}

/// A page of leases, newest first.
#[derive(Debug)]
pub struct ListLeases {
    pub filter: Filter,
}

impl Message for ListLeases {
    type Reply = Result<wire::Page<wire::Lease>, Rejection>;
    const READ_ONLY: bool = true;
}

pub async fn get(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    get: GetLease,
) -> Result<wire::Lease, Failure> {
    if let Some(lease) = t.book.get(&get.id) {
        return Ok(t.lease_view(lease));
    }
    match lease::fetch(ctx.db()?, &get.id)? {
        Some(lease) => {
            let mut view = [t.lease_view(&lease)];
            jit::attach(ctx, &mut view).await?;
            let [view] = view;
            Ok(view)
        }
        None => Err(not_found(&get.id).into()),
    }
}

pub async fn list(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    list: ListLeases,
) -> Result<wire::Page<wire::Lease>, Failure> {
    let limit = list.filter.limit;
    let mut leases = lease::list(ctx.db()?, &list.filter)?;
    let next_cursor = if leases.len() > limit {
        leases.truncate(limit);
        leases.last().map(|l| l.id.clone())
    } else {
        None
    };
    // Open leases are answered from memory: the book is what the object acts on.
    let mut items: Vec<wire::Lease> = leases
        .iter()
        .map(|stored| match t.book.get(&stored.id) {
            Some(live) => t.lease_view(live),
            None => t.lease_view(stored),
        })
        .collect();
    jit::attach(ctx, &mut items).await?;
    Ok(wire::Page { items, next_cursor })
}

/// A lease that does not exist.
pub fn not_found(id: &str) -> Rejection {
    Rejection::NotFound(format!("lease `{}` not found", printable(id)))
}

/// Why a lease that is not open cannot be acted on: it ended, or never existed.
pub async fn ended_or_missing(ctx: &mut Ctx<'_>, id: &str) -> Result<Rejection, Error> {
    Ok(if lease::exists(ctx.db()?, id)? {
        Rejection::LeaseEnded(format!("lease {id} has ended"))
    } else {
        not_found(id)
    })
}
