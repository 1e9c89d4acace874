//! From an operation (and what the case has learned so far) to the request sent through
//! the gateway and, for reads, the same read in canonical form for the store.

use http::Method;
use serde_json::{json, Map, Value};

use super::corpus::{canonical, spell, TenantDef, TenantId, CUSTOMERS, KEYS, TENANTS};
use super::http::{Request, Target};
use super::ops::{
    Case, ItemKind, KeySpelling, Op, PathSpelling, Proto, Query, StartOwner, SvcRef, TenantRef,
    TenantSpelling,
};

const PREFIX: &str = "/genesys/1/cs";

/// Start timestamps (index 4: none, the store's now).
const START_TS: [&str; 4] = [
    "2024-01-10T08:00:00.000Z",
    "2024-02-10T08:00:00.000Z",
    "2024-03-10T08:00:00.000Z",
    "2024-04-10T08:00:00.000Z",
];
/// End timestamps, after every start one (index 2: none).
const END_TS: [&str; 2] = ["2024-06-10T08:00:00.000Z", "2024-07-10T08:00:00.000Z"];

/// Query values, by the 1-based indices of [`Query`] (0 = absent).
const SERVICE_TYPES: [&str; 7] = [
    "1",
    "1,3",
    "3&service_types=1",
    "Billing",
    "45,Wireless",
    "2",
    "",
];
const FLAG_NAMES: [&str; 4] = [
    "active_states",
    "completed_states",
    "active_tasks",
    "completed_tasks",
];
const FLAG_VALUES: [Option<&str>; 5] = [Some("true"), None, Some("1"), Some("FALSE"), Some("yes")];
const DATES: [&str; 6] = [
    "2024-01-01T00:00:00Z",
    "2024-02-15T00:00:00.5+01:00",
    "2024-03-10T08:00:00.000Z",
    "2024-05-20T00:00:00Z",
    "2024-07-01T00:00:00Z",
    "2023-02-30T00:00:00Z",
];
const EXTENSIONS: [&str; 3] = ["seg", "seg,score", "*"];
const FILTERS: [&str; 5] = [
    "seg=gold",
    "score=85",
    "seg=silver",
    "tags=gold",
    "score=%2285%22",
];
const EXT_NAMES: [&str; 4] = ["seg", "score", "tags", "prefs"];

/// A started service, as the case has learned it from the answers.
#[derive(Clone, Debug)]
pub struct Service {
    pub id: String,
    /// Corpus index of the tenant it was started under.
    pub tenant: usize,
    /// False when the start's tenant may not be where the write landed (a hop-by-hop
    /// tenant header the gateway accepted).
    pub tenant_sure: bool,
    pub contact_key: Option<String>,
    pub customer: Option<String>,
    pub states: Vec<String>,
    pub tasks: Vec<String>,
}

/// What a case has learned so far.
#[derive(Default, Debug)]
pub struct Model {
    pub services: Vec<Service>,
}

/// What a request may read or change, for deciding which concurrent reads compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Foot {
    /// Anything at all (the tenant a write lands in is unknown).
    All,
    Anonymous(TenantId, String),
    Customer(TenantId, String),
    Service(String),
}

impl Foot {
    pub fn meets(&self, other: &Foot) -> bool {
        matches!(self, Foot::All) || matches!(other, Foot::All) || self == other
    }
}

/// What a successful write teaches the model.
#[derive(Clone, Debug)]
pub enum Effect {
    None,
    Started {
        tenant: usize,
        tenant_sure: bool,
        contact_key: Option<String>,
        customer: Option<String>,
    },
    Item {
        service: usize,
        kind: ItemKind,
    },
    Associated {
        service: usize,
        customer: String,
    },
}

/// One operation made concrete.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub gateway: Request,
    /// Reads: the same read for the store (canonical path, canonical tenant headers).
    pub store: Option<Request>,
    /// The fixed gateway refuses this request with 400 (then nothing is written and the
    /// answer is not compared).
    pub refusable: bool,
    pub foot: Vec<Foot>,
    pub effect: Effect,
}

impl Prepared {
    pub fn is_write(&self) -> bool {
        self.store.is_none()
    }
}

fn pick<T: Copy>(slots: &[T], slot: u8) -> T {
    slots[usize::from(slot) % slots.len()]
}

/// Headers of a tenant as the operation spells them: (headers, refusable, the store sees
/// this tenant).
fn tenant_headers(
    def: &TenantDef,
    spelling: TenantSpelling,
    proto: Proto,
) -> (Vec<(String, String)>, bool, bool) {
    let mut headers = Vec::new();
    let mut refusable = def.over_long();
    let mut sure = true;
    let padded = spelling == TenantSpelling::Padded;
    let value = |v: &str| {
        if padded {
            format!(" {v} ")
        } else {
            v.to_owned()
        }
    };
    if let Some(cc) = def.contact_center {
        headers.push(("contactcenterid".to_owned(), value(cc)));
    }
    if let Some(group) = def.group {
        headers.push(("groupid".to_owned(), value(group)));
    }
    match spelling {
        TenantSpelling::Exact => {}
        TenantSpelling::EmptyGroup if def.group.is_none() => {
            headers.push(("groupid".to_owned(), String::new()));
        }
        TenantSpelling::EmptyGroup => {}
        TenantSpelling::Padded => refusable |= !headers.is_empty(),
        TenantSpelling::HopByHop if proto != Proto::H2 && !headers.is_empty() => {
            headers.push((
                "connection".to_owned(),
                "ContactCenterId, GroupId".to_owned(),
            ));
            refusable = true;
            sure = false;
        }
        TenantSpelling::HopByHop => {}
    }
    (headers, refusable, sure)
}

/// The tenant headers the store is sent for a read: the values as the store reads them.
fn canonical_tenant(def: &TenantDef) -> Vec<(String, String)> {
    let (cc, group) = def.id();
    let mut headers = Vec::new();
    if let Some(cc) = cc {
        headers.push(("contactcenterid".to_owned(), cc));
    }
    if let Some(group) = group {
        headers.push(("groupid".to_owned(), group));
    }
    headers
}

/// A path segment of a write route.
enum Seg<'a> {
    Word(&'static str),
    Id(&'a str),
    Param(&'a str),
}

/// A write path in the spelling `sp` asks for; `true` when the fixed gateway refuses it.
fn write_path(segs: &[Seg<'_>], sp: PathSpelling) -> (String, bool) {
    let words: Vec<usize> = segs
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, Seg::Word(_)))
        .map(|(i, _)| i)
        .collect();
    let has_id = segs.iter().any(|s| matches!(s, Seg::Id(_)));
    let mode = if sp.mode == 2 && !has_id { 1 } else { sp.mode };
    let encoded_word = words[(sp.seed as usize) % words.len()];
    let last_word = *words.last().expect("every route has a word");
    let mut out: Vec<String> = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        out.push(match seg {
            Seg::Word(word) if mode == 1 && i == encoded_word => {
                let pos = ((sp.seed >> 8) as usize) % word.len();
                let b = word.as_bytes()[pos];
                let hex = if (sp.seed >> 16) & 1 == 1 {
                    format!("%{b:02x}")
                } else {
                    format!("%{b:02X}")
                };
                format!("{}{hex}{}", &word[..pos], &word[pos + 1..])
            }
            Seg::Word(word) if mode == 4 && i == last_word && sp.seed % 3 == 1 => {
                let mut w = (*word).to_owned();
                w[..1].make_ascii_uppercase();
                w
            }
            Seg::Word(word) if mode == 4 && i == last_word && sp.seed % 3 == 2 => {
                let cut = word.len() - 1;
                format!("{}%{}", &word[..cut], &word[cut..])
            }
            Seg::Word(word) => (*word).to_owned(),
            Seg::Id(id) if mode == 2 => match (sp.seed >> 8) % 4 {
                0 => format!("00{id}"),
                1 => format!("+{id}"),
                2 if sp.seed & 1 == 1 => format!("%2b{id}"),
                2 => format!("%2B{id}"),
                _ => spell(id, 1, sp.seed),
            },
            Seg::Id(id) => (*id).to_owned(),
            Seg::Param(text) if mode == 0 || mode == 4 => spell(text, 0, 0),
            Seg::Param(text) => spell(text, 3, sp.seed),
        });
    }
    let double = mode == 4 && sp.seed.is_multiple_of(3);
    let mut path = format!(
        "{PREFIX}/{}{}",
        if double { "/" } else { "" },
        out.join("/")
    );
    if mode == 3 {
        path.push('/');
    }
    (path, mode == 4)
}

fn query_string(q: &Query) -> String {
    let mut pairs: Vec<String> = Vec::new();
    if q.service_types > 0 {
        pairs.push(format!(
            "service_types={}",
            SERVICE_TYPES[usize::from(q.service_types - 1) % SERVICE_TYPES.len()]
        ));
    }
    for (name, v) in FLAG_NAMES.iter().zip(q.flags) {
        if v > 0 {
            match FLAG_VALUES[usize::from(v - 1) % FLAG_VALUES.len()] {
                Some(value) => pairs.push(format!("{name}={value}")),
                None => pairs.push((*name).to_owned()),
            }
        }
    }
    for (name, v) in [
        ("started_from", q.started_from),
        ("started_to", q.started_to),
        ("completed_from", q.completed_from),
        ("completed_to", q.completed_to),
    ] {
        if v > 0 {
            let date = DATES[usize::from(v - 1) % DATES.len()].replace('+', "%2B");
            pairs.push(format!("{name}={date}"));
        }
    }
    if q.extensions > 0 {
        pairs.push(format!(
            "extensions={}",
            EXTENSIONS[usize::from(q.extensions - 1) % EXTENSIONS.len()]
        ));
    }
    if q.filter > 0 {
        pairs.push(FILTERS[usize::from(q.filter - 1) % FILTERS.len()].to_owned());
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", pairs.join("&"))
    }
}

fn lifecycle_suffix(lifecycle: u8) -> &'static str {
    match lifecycle % 3 {
        0 => "",
        1 => "/active",
        _ => "/completed",
    }
}

fn event(ts: Option<&str>) -> Map<String, Value> {
    let mut body = Map::new();
    if let Some(ts) = ts {
        body.insert("timestamp".into(), json!(ts));
    }
    body
}

fn start_extension(ext: u8) -> Vec<(&'static str, Value)> {
    match ext % 5 {
        0 => vec![],
        1 => vec![("seg", json!("gold"))],
        2 => vec![("seg", json!("silver")), ("score", json!(85))],
        3 => vec![("score", json!("85")), ("tags", json!(["a", "gold"]))],
        _ => vec![("prefs", json!({"lang": "fr"}))],
    }
}

fn extension_value(value: u8) -> Value {
    match value % 6 {
        0 => json!("gold"),
        1 => json!("silver"),
        2 => json!(85),
        3 => json!("85"),
        4 => json!(["gold", "x"]),
        _ => json!({"lang": "en", "vip": true}),
    }
}

/// Makes `op` concrete against the case's working set and what the model knows.
pub fn prepare(case: &Case, model: &Model, op: &Op) -> Prepared {
    let tenant_of = |slot: u8| pick(&case.tenants, slot);
    let key_of = |slot: u8| KEYS[pick(&case.keys, slot)].clone();
    let customer_of = |slot: u8| CUSTOMERS[pick(&case.customers, slot)].to_owned();
    match *op {
        Op::Start {
            tenant,
            owner,
            service_type,
            ts,
            ext,
            path,
            proto,
        } => {
            let TenantRef { slot, spelling } = tenant;
            let tenant_ix = tenant_of(slot);
            let def = TENANTS[tenant_ix];
            let (mut headers, refusable_tenant, sure) = tenant_headers(&def, spelling, proto);
            let (contact_key, customer) = match owner {
                StartOwner::Anonymous { key } => (Some(key_of(key)), None),
                StartOwner::Customer { customer } => (None, Some(customer_of(customer))),
                StartOwner::Both { key, customer } => {
                    (Some(key_of(key)), Some(customer_of(customer)))
                }
            };
            let mut body = event(START_TS.get(usize::from(ts)).copied());
            if let Some(c) = &customer {
                body.insert("customer_id".into(), json!(c));
            }
            if let Some(k) = &contact_key {
                body.insert("contact_key".into(), json!(k));
            }
            body.insert(
                "service_type".into(),
                match service_type % 6 {
                    0 => json!(1),
                    1 => json!(3),
                    2 => json!(45),
                    3 => json!(2),
                    4 => json!("Billing"),
                    _ => json!("Wireless"),
                },
            );
            for (name, value) in start_extension(ext) {
                body.insert(name.into(), value);
            }
            headers.push(("content-type".into(), "application/json".into()));
            let (path, refusable_path) =
                write_path(&[Seg::Word("services"), Seg::Word("start")], path);
            let id = def.id();
            let mut foot = Vec::new();
            if !sure {
                foot.push(Foot::All);
            }
            if let Some(k) = &contact_key {
                foot.push(Foot::Anonymous(id.clone(), k.clone()));
            }
            if let Some(c) = &customer {
                foot.push(Foot::Customer(id, c.clone()));
            }
            Prepared {
                gateway: Request {
                    proto,
                    target: Target::Gateway(0),
                    method: Method::POST,
                    path,
                    headers,
                    body: Some(Value::Object(body).to_string()),
                },
                store: None,
                refusable: refusable_tenant || refusable_path,
                foot,
                effect: Effect::Started {
                    tenant: tenant_ix,
                    tenant_sure: sure,
                    contact_key,
                    customer,
                },
            }
        }
        Op::ReadAnonymous {
            tenant,
            key,
            spelling,
            lifecycle,
            query,
            proto,
        } => {
            let key = key_of(key);
            read(
                case,
                tenant,
                proto,
                query,
                lifecycle,
                spelling,
                "services/anonymous",
                "",
                &key,
                |id| Foot::Anonymous(id, key.clone()),
            )
        }
        Op::ReadCustomer {
            tenant,
            customer,
            spelling,
            lifecycle,
            query,
            proto,
        } => {
            let customer = customer_of(customer);
            read(
                case,
                tenant,
                proto,
                query,
                lifecycle,
                spelling,
                "customers",
                "/services",
                &customer,
                |id| Foot::Customer(id, customer.clone()),
            )
        }
        Op::ReadById {
            svc,
            flags,
            extensions,
            proto,
        } => {
            let target = service_target(case, model, svc, proto);
            let mut query = Query {
                flags,
                ..Query::default()
            };
            query.extensions = 0;
            let mut qs = query_string(&query);
            if extensions > 0 {
                let list = ["seg", "*", "seg,prefs"][usize::from(extensions - 1) % 3];
                qs.push_str(if qs.is_empty() { "?" } else { "&" });
                qs.push_str(&format!("extensions={list}"));
            }
            let path = format!("{PREFIX}/services/{}{qs}", target.id);
            let def = TENANTS[target.tenant];
            Prepared {
                gateway: Request {
                    proto,
                    target: Target::Gateway(0),
                    method: Method::GET,
                    path: path.clone(),
                    headers: target.headers.clone(),
                    body: None,
                },
                store: Some(Request {
                    proto: Proto::H1,
                    target: Target::Store,
                    method: Method::GET,
                    path,
                    headers: canonical_tenant(&def),
                    body: None,
                }),
                refusable: target.refusable,
                foot: vec![Foot::Service(target.id.clone())],
                effect: Effect::None,
            }
        }
        Op::StartItem {
            svc,
            kind,
            item_type,
            state,
            path,
            proto,
        } => {
            let target = service_target(case, model, svc, proto);
            let mut body = event(START_TS.get(usize::from(item_type % 5)).copied());
            let type_field = match kind {
                ItemKind::State => "state_type",
                ItemKind::Task => "task_type",
            };
            body.insert(type_field.into(), json!(item_type));
            if kind == ItemKind::Task {
                if let Some(state) = target
                    .service
                    .and_then(|s| model.services[s].states.get(usize::from(state)))
                {
                    body.insert("state_id".into(), json!(state.parse::<i64>().unwrap_or(0)));
                }
            }
            let segs = [
                Seg::Word("services"),
                Seg::Id(&target.id),
                Seg::Word(kind.word()),
                Seg::Word("start"),
            ];
            let effect = match target.service {
                Some(service) => Effect::Item { service, kind },
                None => Effect::None,
            };
            service_write(
                target.clone(),
                Method::POST,
                &segs,
                path,
                proto,
                Some(Value::Object(body)),
                effect,
            )
        }
        Op::EndItem {
            svc,
            kind,
            item,
            path,
            proto,
        } => {
            let target = service_target(case, model, svc, proto);
            let items = target.service.map(|s| match kind {
                ItemKind::State => &model.services[s].states,
                ItemKind::Task => &model.services[s].tasks,
            });
            let item_id = items
                .filter(|list| !list.is_empty())
                .map(|list| list[usize::from(item) % list.len()].clone())
                .unwrap_or_else(|| "999".to_owned());
            let body = event(END_TS.get(usize::from(item % 3)).copied());
            let segs = [
                Seg::Word("services"),
                Seg::Id(&target.id),
                Seg::Word(kind.word()),
                Seg::Id(&item_id),
                Seg::Word("end"),
            ];
            service_write(
                target.clone(),
                Method::POST,
                &segs,
                path,
                proto,
                Some(Value::Object(body)),
                Effect::None,
            )
        }
        Op::Transition {
            svc,
            item,
            to_type,
            path,
            proto,
        } => {
            let target = service_target(case, model, svc, proto);
            let from = target
                .service
                .map(|s| &model.services[s].states)
                .filter(|list| !list.is_empty())
                .map(|list| {
                    list[usize::from(item) % list.len()]
                        .parse::<i64>()
                        .unwrap_or(0)
                })
                .unwrap_or(999);
            let body = json!({"from": {"state_id": from}, "to": {"state_type": to_type}});
            let segs = [
                Seg::Word("services"),
                Seg::Id(&target.id),
                Seg::Word("states"),
                Seg::Word("transition"),
            ];
            let effect = match target.service {
                Some(service) => Effect::Item {
                    service,
                    kind: ItemKind::State,
                },
                None => Effect::None,
            };
            service_write(
                target.clone(),
                Method::POST,
                &segs,
                path,
                proto,
                Some(body),
                effect,
            )
        }
        Op::Associate {
            svc,
            customer,
            path,
            proto,
        } => {
            let target = service_target(case, model, svc, proto);
            let customer = customer_of(customer);
            let segs = [
                Seg::Word("customers"),
                Seg::Param(&customer),
                Seg::Word("services"),
                Seg::Id(&target.id),
            ];
            let effect = match target.service {
                Some(service) => Effect::Associated {
                    service,
                    customer: customer.clone(),
                },
                None => Effect::None,
            };
            let mut prepared = service_write(
                target.clone(),
                Method::POST,
                &segs,
                path,
                proto,
                None,
                effect,
            );
            prepared
                .foot
                .push(Foot::Customer(TENANTS[target.tenant].id(), customer));
            prepared
        }
        Op::Extension {
            svc,
            name,
            value,
            merge,
            path,
            proto,
        } => {
            let target = service_target(case, model, svc, proto);
            let name = EXT_NAMES[usize::from(name) % EXT_NAMES.len()];
            let mut segs = vec![
                Seg::Word("services"),
                Seg::Id(&target.id),
                Seg::Word("extensions"),
                Seg::Param(name),
            ];
            if merge {
                segs.push(Seg::Word("merge"));
            }
            service_write(
                target.clone(),
                Method::PUT,
                &segs,
                path,
                proto,
                Some(extension_value(value)),
                Effect::None,
            )
        }
        Op::Expiry { svc, path, proto } => {
            let target = service_target(case, model, svc, proto);
            let segs = [Seg::Word("services"), Seg::Id(&target.id)];
            service_write(
                target.clone(),
                Method::PUT,
                &segs,
                path,
                proto,
                Some(json!({"ttl": 86400})),
                Effect::None,
            )
        }
        Op::EndService {
            svc,
            ts,
            path,
            proto,
        } => {
            let target = service_target(case, model, svc, proto);
            let mut body = event(END_TS.get(usize::from(ts)).copied());
            body.insert("disposition".into(), json!(1));
            let segs = [Seg::Word("services"), Seg::Id(&target.id), Seg::Word("end")];
            service_write(
                target.clone(),
                Method::POST,
                &segs,
                path,
                proto,
                Some(Value::Object(body)),
                Effect::None,
            )
        }
        Op::Delete { svc, path, proto } => {
            let target = service_target(case, model, svc, proto);
            let segs = [Seg::Word("services"), Seg::Id(&target.id)];
            service_write(
                target.clone(),
                Method::DELETE,
                &segs,
                path,
                proto,
                None,
                Effect::None,
            )
        }
    }
}

/// The service a write or by-id read names, and the tenant headers it is sent with.
#[derive(Clone)]
struct ServiceTarget {
    service: Option<usize>,
    id: String,
    /// Corpus index of the tenant the request names.
    tenant: usize,
    headers: Vec<(String, String)>,
    refusable: bool,
    foot: Vec<Foot>,
}

fn service_target(case: &Case, model: &Model, svc: SvcRef, proto: Proto) -> ServiceTarget {
    let service = (!model.services.is_empty()).then(|| usize::from(svc.ix) % model.services.len());
    let known = service.map(|s| &model.services[s]);
    let own_tenant = known.map_or(case.tenants[0], |s| s.tenant);
    let tenant = svc
        .foreign
        .map_or(own_tenant, |slot| pick(&case.tenants, slot));
    let id = known.map_or_else(|| "999999".to_owned(), |s| s.id.clone());
    let def = TENANTS[tenant];
    let (headers, refusable, sure) = tenant_headers(&def, svc.spelling, proto);
    let mut foot = vec![Foot::Service(id.clone())];
    match known {
        Some(s) if sure && s.tenant_sure && TENANTS[s.tenant].id() == def.id() => {
            let owner_id = TENANTS[s.tenant].id();
            if let Some(k) = &s.contact_key {
                foot.push(Foot::Anonymous(owner_id.clone(), k.clone()));
            }
            if let Some(c) = &s.customer {
                foot.push(Foot::Customer(owner_id, c.clone()));
            }
        }
        Some(_) => foot.push(Foot::All),
        None => {}
    }
    ServiceTarget {
        service,
        id,
        tenant,
        headers,
        refusable,
        foot,
    }
}

fn service_write(
    target: ServiceTarget,
    method: Method,
    segs: &[Seg<'_>],
    spelling: PathSpelling,
    proto: Proto,
    body: Option<Value>,
    effect: Effect,
) -> Prepared {
    let (path, refusable_path) = write_path(segs, spelling);
    let mut headers = target.headers;
    if body.is_some() {
        headers.push(("content-type".into(), "application/json".into()));
    }
    Prepared {
        gateway: Request {
            proto,
            target: Target::Gateway(0),
            method,
            path,
            headers,
            body: body.map(|b| b.to_string()),
        },
        store: None,
        refusable: target.refusable || refusable_path,
        foot: target.foot,
        effect,
    }
}

#[allow(clippy::too_many_arguments)]
fn read(
    case: &Case,
    tenant: TenantRef,
    proto: Proto,
    query: Query,
    lifecycle: u8,
    spelling: KeySpelling,
    before: &str,
    after: &str,
    owner: &str,
    foot: impl FnOnce(TenantId) -> Foot,
) -> Prepared {
    let def = TENANTS[pick(&case.tenants, tenant.slot)];
    let (headers, refusable, _) = tenant_headers(&def, tenant.spelling, proto);
    let suffix = lifecycle_suffix(lifecycle);
    let qs = query_string(&query);
    let slash = if spelling.trailing_slash { "/" } else { "" };
    let gateway_path = format!(
        "{PREFIX}/{before}/{}{after}{suffix}{slash}{qs}",
        spell(owner, spelling.mode, spelling.seed)
    );
    let store_path = format!("{PREFIX}/{before}/{}{after}{suffix}{qs}", canonical(owner));
    Prepared {
        gateway: Request {
            proto,
            target: Target::Gateway(0),
            method: Method::GET,
            path: gateway_path,
            headers,
            body: None,
        },
        store: Some(Request {
            proto: Proto::H1,
            target: Target::Store,
            method: Method::GET,
            path: store_path,
            headers: canonical_tenant(&def),
            body: None,
        }),
        refusable,
        foot: vec![foot(def.id())],
        effect: Effect::None,
    }
}
