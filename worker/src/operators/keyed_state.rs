//! Named keyed state of process functions (Flink's `ValueState`, `ListState`, `MapState`
//! and `ReducingState`, scoped to the current key): how entries are stored, declared and
//! checked. The typed descriptors and handles are in `state_handles`.
//!
//! A function names its states with typed descriptors (`ValueStateDescriptor::<u64>::new
//! ("count")`), declares them in `declare_state`, and reads them with `ctx.get_state(&desc)`.
//! Declaring them up front is what lets a restore prove it reads the right state: a snapshot
//! records every state's name, kind and type, and one whose states the job does not declare
//! alike is refused naming the state. Values are stored typed (no encoding per access) and
//! encoded with postcard only in snapshots.

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::operators::state_ttl::StateTtlConfig;

pub use crate::operators::state_handles::{
    ListState, ListStateDescriptor, MapState, MapStateDescriptor, ReducingState,
    ReducingStateDescriptor, ValueState, ValueStateDescriptor,
};

/// What a state may hold: any serde type that can move between threads.
pub trait StateData: Serialize + DeserializeOwned + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Send + 'static> StateData for T {}

/// One state of one key, typed by its declaration.
pub(crate) type Slot = Box<dyn Any + Send>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateKind {
    Value,
    List,
    Map,
    Reducing,
}

impl std::fmt::Display for StateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StateKind::Value => "value",
            StateKind::List => "list",
            StateKind::Map => "map",
            StateKind::Reducing => "reducing",
        })
    }
}

/// A value with the processing time of its last write (or read, see `state_ttl`).
#[derive(Serialize, Deserialize)]
pub(crate) struct Stamped<T> {
    pub at: i64,
    pub value: T,
}

impl<T> Stamped<T> {
    pub(crate) fn new(at: i64, value: T) -> Self {
        Stamped { at, value }
    }
}

/// How a state's entry is stored, and how TTL applies to it.
pub(crate) trait Storage: Any + Send + Serialize + DeserializeOwned {
    /// Drops expired parts; true if nothing is left.
    fn purge(&mut self, now: i64, ttl: &StateTtlConfig) -> bool;
    fn any_expired(&self, now: i64, ttl: &StateTtlConfig) -> bool;
}

impl<T: StateData> Storage for Stamped<T> {
    fn purge(&mut self, now: i64, ttl: &StateTtlConfig) -> bool {
        ttl.expired(self.at, now)
    }
    fn any_expired(&self, now: i64, ttl: &StateTtlConfig) -> bool {
        ttl.expired(self.at, now)
    }
}

impl<T: StateData> Storage for Vec<Stamped<T>> {
    fn purge(&mut self, now: i64, ttl: &StateTtlConfig) -> bool {
        self.retain(|s| !ttl.expired(s.at, now));
        self.is_empty()
    }
    fn any_expired(&self, now: i64, ttl: &StateTtlConfig) -> bool {
        self.iter().any(|s| ttl.expired(s.at, now))
    }
}

impl<K: StateData + Ord, V: StateData> Storage for BTreeMap<K, Stamped<V>> {
    fn purge(&mut self, now: i64, ttl: &StateTtlConfig) -> bool {
        self.retain(|_, s| !ttl.expired(s.at, now));
        self.is_empty()
    }
    fn any_expired(&self, now: i64, ttl: &StateTtlConfig) -> bool {
        self.values().any(|s| ttl.expired(s.at, now))
    }
}

pub(crate) const CHECKED: &str = "the slot's type was checked against its declaration";

fn encode<S: Storage>(slot: &(dyn Any + Send)) -> postcard::Result<Vec<u8>> {
    postcard::to_allocvec(slot.downcast_ref::<S>().expect(CHECKED))
}

fn decode<S: Storage>(bytes: &[u8]) -> Result<Slot, String> {
    match postcard::take_from_bytes::<S>(bytes) {
        Ok((s, [])) => Ok(Box::new(s)),
        Ok((_, rest)) => Err(format!("{} bytes left after the value", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

fn purge<S: Storage>(slot: &mut (dyn Any + Send), now: i64, ttl: &StateTtlConfig) -> bool {
    slot.downcast_mut::<S>().expect(CHECKED).purge(now, ttl)
}

fn any_expired<S: Storage>(slot: &(dyn Any + Send), now: i64, ttl: &StateTtlConfig) -> bool {
    slot.downcast_ref::<S>()
        .expect(CHECKED)
        .any_expired(now, ttl)
}

/// A declared state, untyped: its identity (name, kind, type) and how its entries are
/// encoded, decoded and expired.
pub struct StateDeclaration {
    pub(crate) name: Arc<str>,
    pub(crate) kind: StateKind,
    /// The value type(s) as the user wrote them ("u64", "String -> u64").
    pub(crate) type_name: String,
    storage: TypeId,
    pub(crate) ttl: Option<StateTtlConfig>,
    pub(crate) encode: fn(&(dyn Any + Send)) -> postcard::Result<Vec<u8>>,
    pub(crate) decode: fn(&[u8]) -> Result<Slot, String>,
    pub(crate) purge: fn(&mut (dyn Any + Send), i64, &StateTtlConfig) -> bool,
    pub(crate) any_expired: fn(&(dyn Any + Send), i64, &StateTtlConfig) -> bool,
}

impl StateDeclaration {
    pub(crate) fn of<S: Storage>(
        name: &Arc<str>,
        kind: StateKind,
        type_name: String,
        ttl: Option<StateTtlConfig>,
    ) -> Self {
        StateDeclaration {
            name: name.clone(),
            kind,
            type_name,
            storage: TypeId::of::<S>(),
            ttl,
            encode: encode::<S>,
            decode: decode::<S>,
            purge: purge::<S>,
            any_expired: any_expired::<S>,
        }
    }

    /// "list state 'seen' of alloc::string::String", for errors.
    pub(crate) fn describe(&self) -> String {
        describe(self.kind, &self.name, &self.type_name)
    }
}

pub(crate) fn describe(kind: StateKind, name: &str, type_name: &str) -> String {
    format!("{kind} state '{name}' of {type_name}")
}

/// The states a process function uses, in `declare_state`.
#[derive(Default)]
pub struct StateDeclarations {
    pub(crate) list: Vec<StateDeclaration>,
}

impl StateDeclarations {
    pub fn add<D: StateDescriptor>(&mut self, descriptor: &D) -> &mut Self {
        self.list.push(descriptor.declaration());
        self
    }
}

/// An operator's declared states, checked (names are unique).
pub(crate) struct StateTable {
    list: Vec<StateDeclaration>,
    /// The shortest TTL: how often the operator sweeps expired entries.
    min_ttl_ms: Option<i64>,
}

impl StateTable {
    pub fn new(declared: StateDeclarations) -> Result<Self, String> {
        let list = declared.list;
        for (i, d) in list.iter().enumerate() {
            if let Some(other) = list[..i].iter().find(|o| o.name == d.name) {
                return Err(format!(
                    "state '{}' is declared twice ({} and {})",
                    d.name,
                    other.describe(),
                    d.describe()
                ));
            }
        }
        let min_ttl_ms = list.iter().filter_map(|d| d.ttl.map(|t| t.ttl_ms())).min();
        Ok(StateTable { list, min_ttl_ms })
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn get(&self, i: usize) -> &StateDeclaration {
        &self.list[i]
    }

    pub fn iter(&self) -> impl Iterator<Item = &StateDeclaration> {
        self.list.iter()
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|d| &*d.name == name)
    }

    pub fn min_ttl_ms(&self) -> Option<i64> {
        self.min_ttl_ms
    }

    /// Drops the expired parts of one key's states; true if one of them changed.
    pub fn purge(&self, named: &mut [Option<Slot>], now: i64) -> bool {
        let mut changed = false;
        for (slot, d) in named.iter_mut().zip(&self.list) {
            if let (Some(s), Some(ttl)) = (slot.as_mut(), d.ttl.as_ref())
                && (d.any_expired)(&**s, now, ttl)
            {
                changed = true;
                if (d.purge)(&mut **s, now, ttl) {
                    *slot = None;
                }
            }
        }
        changed
    }

    /// Whether one key's states hold an expired entry.
    pub fn any_expired(&self, named: &[Option<Slot>], now: i64) -> bool {
        named.iter().zip(&self.list).any(|(slot, d)| {
            matches!((slot, d.ttl.as_ref()), (Some(s), Some(ttl)) if (d.any_expired)(&**s, now, ttl))
        })
    }

    /// The typed cell of state `name` for one key. Panics (failing the job, naming the
    /// operator) if the function did not declare it or declared it with another type.
    pub fn cell<'a, D: StateDescriptor + ?Sized>(
        &self,
        descriptor: &D,
        named: &'a mut Vec<Option<Slot>>,
        now: i64,
    ) -> StateCell<'a> {
        let name = descriptor.name();
        let Some(i) = self.index_of(name) else {
            panic!("state '{name}' is used but not declared: add its descriptor in declare_state");
        };
        let d = &self.list[i];
        let (kind, storage) = descriptor.identity();
        if d.kind != kind || d.storage != storage {
            panic!(
                "{} is used as {}",
                d.describe(),
                descriptor.declaration().describe()
            );
        }
        if named.len() <= i {
            named.resize_with(self.list.len(), || None);
        }
        StateCell {
            slot: &mut named[i],
            now,
            ttl: d.ttl,
        }
    }
}

/// One key's entry of one state, with the time and TTL that apply to it.
pub struct StateCell<'a> {
    pub(crate) slot: &'a mut Option<Slot>,
    pub(crate) now: i64,
    pub(crate) ttl: Option<StateTtlConfig>,
}

impl StateCell<'_> {
    pub(crate) fn get<S: 'static>(&mut self) -> Option<&mut S> {
        self.slot
            .as_mut()
            .map(|b| b.downcast_mut::<S>().expect(CHECKED))
    }

    /// The entry without its expired parts (dropped if nothing is left).
    pub(crate) fn live<S: Storage>(&mut self) -> Option<&mut S> {
        if let Some(ttl) = self.ttl {
            let (now, slot) = (self.now, &mut *self.slot);
            if slot
                .as_mut()
                .is_some_and(|b| b.downcast_mut::<S>().expect(CHECKED).purge(now, &ttl))
            {
                *slot = None;
            }
        }
        self.get::<S>()
    }

    pub(crate) fn refresh_on_read(&self) -> bool {
        self.ttl.is_some_and(|t| t.refresh_on_read())
    }

    pub(crate) fn set<S: Storage>(&mut self, value: S) {
        *self.slot = Some(Box::new(value));
    }

    pub(crate) fn clear(&mut self) {
        *self.slot = None;
    }

    /// A value or reducing state's value, refreshed if reads count as access.
    pub(crate) fn read_stamped<T: StateData>(&mut self) -> Option<&T> {
        let (now, refresh) = (self.now, self.refresh_on_read());
        let s = self.live::<Stamped<T>>()?;
        if refresh {
            s.at = now;
        }
        Some(&s.value)
    }

    pub(crate) fn write_stamped<T: StateData>(&mut self, value: T) {
        let now = self.now;
        match self.get::<Stamped<T>>() {
            Some(s) => *s = Stamped::new(now, value),
            None => self.set(Stamped::new(now, value)),
        }
    }
}

/// A typed, named state (Flink's `StateDescriptor`): declare it in `declare_state`, use it
/// with `ctx.get_state(&descriptor)`.
pub trait StateDescriptor {
    type Handle<'a>
    where
        Self: 'a;
    fn name(&self) -> &str;
    fn declaration(&self) -> StateDeclaration;
    #[doc(hidden)]
    fn identity(&self) -> (StateKind, TypeId);
    #[doc(hidden)]
    fn handle<'a>(&'a self, cell: StateCell<'a>) -> Self::Handle<'a>;
}
