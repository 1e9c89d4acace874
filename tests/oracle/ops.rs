//! The operations a case is made of, and their proptest strategies. Operations name
//! keys, customers and tenants by slot (an index into the case's small working set, so
//! that the same owner comes back often) and services, states and tasks by index into
//! what the case has learned so far from the answers (taken modulo, so any index is
//! valid and shrinking stays meaningful).

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::Union;

use super::corpus::{CUSTOMERS, KEYS, TENANTS};

/// The client an operation is sent with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1, header names lower case.
    H1,
    /// HTTP/1.1, header names in title case (`Contactcenterid`).
    H1Title,
    /// HTTP/2 with prior knowledge (h2c).
    H2,
}

/// A tenant choice: a slot of the case's tenants and how its headers are spelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantRef {
    pub slot: u8,
    pub spelling: TenantSpelling,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantSpelling {
    /// The values as the corpus has them.
    Exact,
    /// An extra empty `GroupId` when there is none (the same tenant).
    EmptyGroup,
    /// Values with surrounding whitespace. Over HTTP/2 the field is malformed (RFC 9113
    /// §8.2.1) and the fixed gateway refuses it; over HTTP/1.1 the parser drops it.
    Padded,
    /// `Connection: ContactCenterId, GroupId` (HTTP/1.1 only): the fixed gateway refuses a
    /// hop-by-hop tenant.
    HopByHop,
}

/// A service the case has started (index into the learned list, modulo its length),
/// written under its own tenant or, sometimes, another slot's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SvcRef {
    pub ix: u8,
    pub foreign: Option<u8>,
    pub spelling: TenantSpelling,
}

/// How a write's path is spelled. Modes 0-3 are legal spellings the store routes as the
/// write; mode 4 spellings are refused by the fixed gateway (and not routed by the store).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathSpelling {
    pub mode: u8,
    pub seed: u32,
}

/// How a read's key or customer segment is spelled ([`super::corpus::spell`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySpelling {
    pub mode: u8,
    pub seed: u32,
    pub trailing_slash: bool,
}

/// Who a start names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartOwner {
    Anonymous { key: u8 },
    Customer { customer: u8 },
    Both { key: u8, customer: u8 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemKind {
    State,
    Task,
}

impl ItemKind {
    pub fn word(self) -> &'static str {
        match self {
            ItemKind::State => "states",
            ItemKind::Task => "tasks",
        }
    }

    pub fn id_field(self) -> &'static str {
        match self {
            ItemKind::State => "state_id",
            ItemKind::Task => "task_id",
        }
    }
}

/// Query Services parameters, each an index into the value tables of `super::request`
/// (0 = absent). Some values are invalid on purpose (both sides must refuse them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Query {
    pub service_types: u8,
    pub flags: [u8; 4],
    pub started_from: u8,
    pub started_to: u8,
    pub completed_from: u8,
    pub completed_to: u8,
    pub extensions: u8,
    pub filter: u8,
}

/// One operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Start {
        tenant: TenantRef,
        owner: StartOwner,
        service_type: u8,
        ts: u8,
        ext: u8,
        path: PathSpelling,
        proto: Proto,
    },
    StartItem {
        svc: SvcRef,
        kind: ItemKind,
        item_type: u8,
        state: u8,
        path: PathSpelling,
        proto: Proto,
    },
    EndItem {
        svc: SvcRef,
        kind: ItemKind,
        item: u8,
        path: PathSpelling,
        proto: Proto,
    },
    Transition {
        svc: SvcRef,
        item: u8,
        to_type: u8,
        path: PathSpelling,
        proto: Proto,
    },
    Associate {
        svc: SvcRef,
        customer: u8,
        path: PathSpelling,
        proto: Proto,
    },
    Extension {
        svc: SvcRef,
        name: u8,
        value: u8,
        merge: bool,
        path: PathSpelling,
        proto: Proto,
    },
    Expiry {
        svc: SvcRef,
        path: PathSpelling,
        proto: Proto,
    },
    EndService {
        svc: SvcRef,
        ts: u8,
        path: PathSpelling,
        proto: Proto,
    },
    Delete {
        svc: SvcRef,
        path: PathSpelling,
        proto: Proto,
    },
    ReadAnonymous {
        tenant: TenantRef,
        key: u8,
        spelling: KeySpelling,
        lifecycle: u8,
        query: Query,
        proto: Proto,
    },
    ReadCustomer {
        tenant: TenantRef,
        customer: u8,
        spelling: KeySpelling,
        lifecycle: u8,
        query: Query,
        proto: Proto,
    },
    ReadById {
        svc: SvcRef,
        flags: [u8; 4],
        extensions: u8,
        proto: Proto,
    },
}

impl Op {
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Op::ReadAnonymous { .. } | Op::ReadCustomer { .. } | Op::ReadById { .. }
        )
    }
}

/// A step of a case: one operation, or a few sent at the same time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    One(Op),
    Together(Vec<Op>),
}

/// A generated case: its working set (indices into the corpus) and its steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    pub keys: Vec<usize>,
    pub customers: Vec<usize>,
    pub tenants: Vec<usize>,
    pub steps: Vec<Step>,
}

impl Case {
    pub fn op_count(&self) -> usize {
        self.steps
            .iter()
            .map(|s| match s {
                Step::One(_) => 1,
                Step::Together(ops) => ops.len(),
            })
            .sum()
    }
}

fn proto() -> impl Strategy<Value = Proto> {
    prop_oneof![3 => Just(Proto::H1), 1 => Just(Proto::H1Title), 3 => Just(Proto::H2)]
}

fn tenant_spelling() -> impl Strategy<Value = TenantSpelling> {
    prop_oneof![
        20 => Just(TenantSpelling::Exact),
        2 => Just(TenantSpelling::EmptyGroup),
        1 => Just(TenantSpelling::Padded),
        1 => Just(TenantSpelling::HopByHop),
    ]
}

fn tenant_ref() -> impl Strategy<Value = TenantRef> {
    (0u8..4, tenant_spelling()).prop_map(|(slot, spelling)| TenantRef { slot, spelling })
}

fn svc_ref() -> impl Strategy<Value = SvcRef> {
    (
        0u8..8,
        prop_oneof![12 => Just(None), 1 => (0u8..4).prop_map(Some)],
        tenant_spelling(),
    )
        .prop_map(|(ix, foreign, spelling)| SvcRef {
            ix,
            foreign,
            spelling,
        })
}

fn path_spelling() -> impl Strategy<Value = PathSpelling> {
    (
        prop_oneof![12 => Just(0u8), 5 => Just(1u8), 2 => Just(2u8), 1 => Just(3u8), 1 => Just(4u8)],
        any::<u32>(),
    )
        .prop_map(|(mode, seed)| PathSpelling { mode, seed })
}

fn key_spelling() -> impl Strategy<Value = KeySpelling> {
    (0u8..4, any::<u32>(), prop::bool::weighted(0.1)).prop_map(|(mode, seed, trailing_slash)| {
        KeySpelling {
            mode,
            seed,
            trailing_slash,
        }
    })
}

fn flags() -> impl Strategy<Value = [u8; 4]> {
    let flag = || prop_oneof![6 => Just(0u8), 3 => 1u8..5, 1 => Just(5u8)];
    [flag(), flag(), flag(), flag()]
}

fn query() -> impl Strategy<Value = Query> {
    let rare = |n: u8| prop_oneof![4 => Just(0u8), 1 => 1..n];
    (
        prop_oneof![3 => Just(0u8), 2 => 1u8..8],
        flags(),
        (rare(7), rare(7), rare(7), rare(7)),
        prop_oneof![3 => Just(0u8), 1 => 1u8..4],
        prop_oneof![4 => Just(0u8), 1 => 1u8..6],
    )
        .prop_map(
            |(service_types, flags, (sf, st, cf, ct), extensions, filter)| Query {
                service_types,
                flags,
                started_from: sf,
                started_to: st,
                completed_from: cf,
                completed_to: ct,
                extensions,
                filter,
            },
        )
}

fn start_owner() -> impl Strategy<Value = StartOwner> {
    prop_oneof![
        6 => (0u8..3).prop_map(|key| StartOwner::Anonymous { key }),
        1 => (0u8..2).prop_map(|customer| StartOwner::Customer { customer }),
        1 => (0u8..3, 0u8..2).prop_map(|(key, customer)| StartOwner::Both { key, customer }),
    ]
}

fn item_kind() -> impl Strategy<Value = ItemKind> {
    prop_oneof![Just(ItemKind::State), Just(ItemKind::Task)]
}

/// Any operation, reads about as often as writes.
pub fn op() -> impl Strategy<Value = Op> {
    let start = (
        tenant_ref(),
        start_owner(),
        0u8..6,
        0u8..5,
        0u8..5,
        path_spelling(),
        proto(),
    )
        .prop_map(
            |(tenant, owner, service_type, ts, ext, path, proto)| Op::Start {
                tenant,
                owner,
                service_type,
                ts,
                ext,
                path,
                proto,
            },
        );
    let start_item = (
        svc_ref(),
        item_kind(),
        1u8..11,
        0u8..4,
        path_spelling(),
        proto(),
    )
        .prop_map(|(svc, kind, item_type, state, path, proto)| Op::StartItem {
            svc,
            kind,
            item_type,
            state,
            path,
            proto,
        });
    let end_item = (svc_ref(), item_kind(), 0u8..4, path_spelling(), proto()).prop_map(
        |(svc, kind, item, path, proto)| Op::EndItem {
            svc,
            kind,
            item,
            path,
            proto,
        },
    );
    let transition = (svc_ref(), 0u8..4, 1u8..11, path_spelling(), proto()).prop_map(
        |(svc, item, to_type, path, proto)| Op::Transition {
            svc,
            item,
            to_type,
            path,
            proto,
        },
    );
    let associate =
        (svc_ref(), 0u8..2, path_spelling(), proto()).prop_map(|(svc, customer, path, proto)| {
            Op::Associate {
                svc,
                customer,
                path,
                proto,
            }
        });
    let extension = (
        svc_ref(),
        0u8..4,
        0u8..6,
        any::<bool>(),
        path_spelling(),
        proto(),
    )
        .prop_map(|(svc, name, value, merge, path, proto)| Op::Extension {
            svc,
            name,
            value,
            merge,
            path,
            proto,
        });
    let expiry = (svc_ref(), path_spelling(), proto()).prop_map(|(svc, path, proto)| Op::Expiry {
        svc,
        path,
        proto,
    });
    let end = (svc_ref(), 0u8..3, path_spelling(), proto()).prop_map(|(svc, ts, path, proto)| {
        Op::EndService {
            svc,
            ts,
            path,
            proto,
        }
    });
    let delete = (svc_ref(), path_spelling(), proto()).prop_map(|(svc, path, proto)| Op::Delete {
        svc,
        path,
        proto,
    });
    let read_anonymous = (
        tenant_ref(),
        0u8..3,
        key_spelling(),
        0u8..3,
        query(),
        proto(),
    )
        .prop_map(
            |(tenant, key, spelling, lifecycle, query, proto)| Op::ReadAnonymous {
                tenant,
                key,
                spelling,
                lifecycle,
                query,
                proto,
            },
        );
    let read_customer = (
        tenant_ref(),
        0u8..2,
        key_spelling(),
        0u8..3,
        query(),
        proto(),
    )
        .prop_map(
            |(tenant, customer, spelling, lifecycle, query, proto)| Op::ReadCustomer {
                tenant,
                customer,
                spelling,
                lifecycle,
                query,
                proto,
            },
        );
    let read_by_id = (
        svc_ref(),
        flags(),
        prop_oneof![3 => Just(0u8), 1 => 1u8..4],
        proto(),
    )
        .prop_map(|(svc, flags, extensions, proto)| Op::ReadById {
            svc,
            flags,
            extensions,
            proto,
        });
    Union::new_weighted(vec![
        (12, start.boxed()),
        (3, start_item.boxed()),
        (2, end_item.boxed()),
        (1, transition.boxed()),
        (2, associate.boxed()),
        (3, extension.boxed()),
        (1, expiry.boxed()),
        (3, end.boxed()),
        (2, delete.boxed()),
        (22, read_anonymous.boxed()),
        (4, read_customer.boxed()),
        (3, read_by_id.boxed()),
    ])
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => op().prop_map(Step::One),
        1 => vec(op(), 2..=4).prop_map(Step::Together),
    ]
}

/// Cases of up to `max_steps` steps over a working set of 1-3 keys, 1-2 customers and
/// 1-2 tenants.
pub fn case(max_steps: usize) -> impl Strategy<Value = Case> {
    (
        vec(0..KEYS.len(), 1..=3),
        vec(0..CUSTOMERS.len(), 1..=2),
        vec(0..TENANTS.len(), 1..=2),
        vec(step(), 1..=max_steps),
    )
        .prop_map(|(keys, customers, tenants, steps)| Case {
            keys,
            customers,
            tenants,
            steps,
        })
}
