//! Keyed state handles for process functions (Flink's `ValueState`, `ListState`, `MapState`
//! and `ReducingState`), scoped to the current key.
//!
//! A function names its states with typed descriptors (`ValueStateDescriptor::<u64>::new
//! ("count")`), declares them in `declare_state`, and reads them with `ctx.get_state(&desc)`.
//! Declaring them up front is what lets a restore prove it reads the right state: a snapshot
//! records every state's name, kind and type, and one whose states the job does not declare
//! alike is refused naming the state. Values are stored typed (no encoding per access) and
//! encoded with postcard only in snapshots.

use std::any::{Any, TypeId, type_name};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::operators::state_ttl::{StateTtlConfig, is_expired};

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
struct Stamped<T> {
    at: i64,
    value: T,
}

impl<T> Stamped<T> {
    fn new(at: i64, value: T) -> Self {
        Stamped { at, value }
    }
}

/// How a state's entry is stored, and how TTL applies to it.
trait Storage: Any + Send + Serialize + DeserializeOwned {
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

const CHECKED: &str = "the slot's type was checked against its declaration";

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
    fn of<S: Storage>(
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
    slot: &'a mut Option<Slot>,
    now: i64,
    ttl: Option<StateTtlConfig>,
}

impl StateCell<'_> {
    fn get<S: 'static>(&mut self) -> Option<&mut S> {
        self.slot
            .as_mut()
            .map(|b| b.downcast_mut::<S>().expect(CHECKED))
    }

    /// The entry without its expired parts (dropped if nothing is left).
    fn live<S: Storage>(&mut self) -> Option<&mut S> {
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

    fn refresh_on_read(&self) -> bool {
        self.ttl.is_some_and(|t| t.refresh_on_read())
    }

    fn set<S: Storage>(&mut self, value: S) {
        *self.slot = Some(Box::new(value));
    }

    fn clear(&mut self) {
        *self.slot = None;
    }

    /// A value or reducing state's value, refreshed if reads count as access.
    fn read_stamped<T: StateData>(&mut self) -> Option<&T> {
        let (now, refresh) = (self.now, self.refresh_on_read());
        let s = self.live::<Stamped<T>>()?;
        if refresh {
            s.at = now;
        }
        Some(&s.value)
    }

    fn write_stamped<T: StateData>(&mut self, value: T) {
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

macro_rules! descriptor_common {
    () => {
        /// Entries of this state expire as `ttl` says (never returned once expired).
        pub fn enable_time_to_live(mut self, ttl: StateTtlConfig) -> Self {
            self.ttl = Some(ttl);
            self
        }
        pub fn name(&self) -> &str {
            &self.name
        }
    };
}

/// One value per key.
pub struct ValueStateDescriptor<T> {
    name: Arc<str>,
    ttl: Option<StateTtlConfig>,
    _t: PhantomData<fn() -> T>,
}

impl<T> ValueStateDescriptor<T> {
    pub fn new(name: &str) -> Self {
        ValueStateDescriptor {
            name: name.into(),
            ttl: None,
            _t: PhantomData,
        }
    }
    descriptor_common!();
}

impl<T: StateData> StateDescriptor for ValueStateDescriptor<T> {
    type Handle<'a> = ValueState<'a, T>;
    fn name(&self) -> &str {
        &self.name
    }
    fn declaration(&self) -> StateDeclaration {
        let t = type_name::<T>().to_string();
        StateDeclaration::of::<Stamped<T>>(&self.name, StateKind::Value, t, self.ttl)
    }
    fn identity(&self) -> (StateKind, TypeId) {
        (StateKind::Value, TypeId::of::<Stamped<T>>())
    }
    fn handle<'a>(&'a self, cell: StateCell<'a>) -> ValueState<'a, T> {
        ValueState {
            cell,
            _t: PhantomData,
        }
    }
}

/// The current key's value (Flink's `ValueState`).
pub struct ValueState<'a, T> {
    cell: StateCell<'a>,
    _t: PhantomData<fn() -> T>,
}

impl<T: StateData> ValueState<'_, T> {
    /// The key's value; `None` if it has none or it expired.
    pub fn value(&mut self) -> Option<&T> {
        self.cell.read_stamped()
    }
    pub fn update(&mut self, value: T) {
        self.cell.write_stamped(value)
    }
    pub fn clear(&mut self) {
        self.cell.clear()
    }
}

/// A list per key; with a TTL, each element expires on its own.
pub struct ListStateDescriptor<T> {
    name: Arc<str>,
    ttl: Option<StateTtlConfig>,
    _t: PhantomData<fn() -> T>,
}

impl<T> ListStateDescriptor<T> {
    pub fn new(name: &str) -> Self {
        ListStateDescriptor {
            name: name.into(),
            ttl: None,
            _t: PhantomData,
        }
    }
    descriptor_common!();
}

impl<T: StateData> StateDescriptor for ListStateDescriptor<T> {
    type Handle<'a> = ListState<'a, T>;
    fn name(&self) -> &str {
        &self.name
    }
    fn declaration(&self) -> StateDeclaration {
        let t = type_name::<T>().to_string();
        StateDeclaration::of::<Vec<Stamped<T>>>(&self.name, StateKind::List, t, self.ttl)
    }
    fn identity(&self) -> (StateKind, TypeId) {
        (StateKind::List, TypeId::of::<Vec<Stamped<T>>>())
    }
    fn handle<'a>(&'a self, cell: StateCell<'a>) -> ListState<'a, T> {
        ListState {
            cell,
            _t: PhantomData,
        }
    }
}

/// The current key's list (Flink's `ListState`).
pub struct ListState<'a, T> {
    cell: StateCell<'a>,
    _t: PhantomData<fn() -> T>,
}

impl<T: StateData> ListState<'_, T> {
    /// The live elements in the order they were added.
    pub fn get(&mut self) -> impl Iterator<Item = &T> + '_ {
        let (now, refresh) = (self.cell.now, self.cell.refresh_on_read());
        let list = match self.cell.live::<Vec<Stamped<T>>>() {
            Some(l) => {
                if refresh {
                    l.iter_mut().for_each(|s| s.at = now);
                }
                Some(&*l)
            }
            None => None,
        };
        list.into_iter().flatten().map(|s| &s.value)
    }
    pub fn add(&mut self, value: T) {
        self.add_all([value])
    }
    pub fn add_all(&mut self, values: impl IntoIterator<Item = T>) {
        let now = self.cell.now;
        let values = values.into_iter().map(|v| Stamped::new(now, v));
        match self.cell.get::<Vec<Stamped<T>>>() {
            Some(l) => l.extend(values),
            None => {
                let l: Vec<_> = values.collect();
                if !l.is_empty() {
                    self.cell.set(l)
                }
            }
        }
    }
    /// Replaces the list.
    pub fn update(&mut self, values: impl IntoIterator<Item = T>) {
        self.cell.clear();
        self.add_all(values)
    }
    pub fn clear(&mut self) {
        self.cell.clear()
    }
}

/// A map per key; with a TTL, each entry expires on its own.
pub struct MapStateDescriptor<K, V> {
    name: Arc<str>,
    ttl: Option<StateTtlConfig>,
    _t: PhantomData<fn() -> (K, V)>,
}

impl<K, V> MapStateDescriptor<K, V> {
    pub fn new(name: &str) -> Self {
        MapStateDescriptor {
            name: name.into(),
            ttl: None,
            _t: PhantomData,
        }
    }
    descriptor_common!();
}

type MapStore<K, V> = BTreeMap<K, Stamped<V>>;

impl<K: StateData + Ord, V: StateData> StateDescriptor for MapStateDescriptor<K, V> {
    type Handle<'a> = MapState<'a, K, V>;
    fn name(&self) -> &str {
        &self.name
    }
    fn declaration(&self) -> StateDeclaration {
        let t = format!("{} -> {}", type_name::<K>(), type_name::<V>());
        StateDeclaration::of::<MapStore<K, V>>(&self.name, StateKind::Map, t, self.ttl)
    }
    fn identity(&self) -> (StateKind, TypeId) {
        (StateKind::Map, TypeId::of::<MapStore<K, V>>())
    }
    fn handle<'a>(&'a self, cell: StateCell<'a>) -> MapState<'a, K, V> {
        MapState {
            cell,
            _t: PhantomData,
        }
    }
}

/// The current key's map (Flink's `MapState`), ordered by key.
pub struct MapState<'a, K, V> {
    cell: StateCell<'a>,
    _t: PhantomData<fn() -> (K, V)>,
}

impl<K: StateData + Ord, V: StateData> MapState<'_, K, V> {
    /// Drops `key`'s entry if it expired; the map if that left it empty.
    fn expire(&mut self, key: &K) {
        let (now, ttl) = (self.cell.now, self.cell.ttl);
        let Some(map) = self.cell.get::<MapStore<K, V>>() else {
            return;
        };
        if map
            .get(key)
            .is_some_and(|s| is_expired(ttl.as_ref(), s.at, now))
        {
            map.remove(key);
            if map.is_empty() {
                self.cell.clear();
            }
        }
    }

    pub fn get(&mut self, key: &K) -> Option<&V> {
        self.expire(key);
        let (now, refresh) = (self.cell.now, self.cell.refresh_on_read());
        let s = self.cell.get::<MapStore<K, V>>()?.get_mut(key)?;
        if refresh {
            s.at = now;
        }
        Some(&s.value)
    }

    pub fn contains(&mut self, key: &K) -> bool {
        self.get(key).is_some()
    }

    pub fn put(&mut self, key: K, value: V) {
        let now = self.cell.now;
        match self.cell.get::<MapStore<K, V>>() {
            Some(m) => {
                m.insert(key, Stamped::new(now, value));
            }
            None => self
                .cell
                .set(MapStore::from([(key, Stamped::new(now, value))])),
        }
    }

    /// Removes `key`'s entry, returning its value if it was live.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.expire(key);
        let map = self.cell.get::<MapStore<K, V>>()?;
        let v = map.remove(key)?.value;
        if map.is_empty() {
            self.cell.clear();
        }
        Some(v)
    }

    /// The live entries in key order.
    pub fn entries(&mut self) -> impl Iterator<Item = (&K, &V)> + '_ {
        let (now, refresh) = (self.cell.now, self.cell.refresh_on_read());
        let map = match self.cell.live::<MapStore<K, V>>() {
            Some(m) => {
                if refresh {
                    m.values_mut().for_each(|s| s.at = now);
                }
                Some(&*m)
            }
            None => None,
        };
        map.into_iter().flatten().map(|(k, s)| (k, &s.value))
    }

    pub fn keys(&mut self) -> impl Iterator<Item = &K> + '_ {
        self.entries().map(|(k, _)| k)
    }

    pub fn values(&mut self) -> impl Iterator<Item = &V> + '_ {
        self.entries().map(|(_, v)| v)
    }

    pub fn is_empty(&mut self) -> bool {
        self.cell.live::<MapStore<K, V>>().is_none()
    }

    pub fn clear(&mut self) {
        self.cell.clear()
    }
}

type ReduceFn<T> = Arc<dyn Fn(T, T) -> T + Send + Sync>;

/// One value per key that every `add` folds into with a reduce function.
pub struct ReducingStateDescriptor<T> {
    name: Arc<str>,
    ttl: Option<StateTtlConfig>,
    reduce: ReduceFn<T>,
}

impl<T> ReducingStateDescriptor<T> {
    pub fn new(name: &str, reduce: impl Fn(T, T) -> T + Send + Sync + 'static) -> Self {
        ReducingStateDescriptor {
            name: name.into(),
            ttl: None,
            reduce: Arc::new(reduce),
        }
    }
    descriptor_common!();
}

impl<T: StateData> StateDescriptor for ReducingStateDescriptor<T> {
    type Handle<'a> = ReducingState<'a, T>;
    fn name(&self) -> &str {
        &self.name
    }
    fn declaration(&self) -> StateDeclaration {
        let t = type_name::<T>().to_string();
        StateDeclaration::of::<Stamped<T>>(&self.name, StateKind::Reducing, t, self.ttl)
    }
    fn identity(&self) -> (StateKind, TypeId) {
        (StateKind::Reducing, TypeId::of::<Stamped<T>>())
    }
    fn handle<'a>(&'a self, cell: StateCell<'a>) -> ReducingState<'a, T> {
        ReducingState {
            cell,
            reduce: &*self.reduce,
        }
    }
}

/// The current key's reduced value (Flink's `ReducingState`).
pub struct ReducingState<'a, T> {
    cell: StateCell<'a>,
    reduce: &'a (dyn Fn(T, T) -> T + Send + Sync),
}

impl<T: StateData> ReducingState<'_, T> {
    /// The reduction of the values added since the state was last cleared (or expired).
    pub fn get(&mut self) -> Option<&T> {
        self.cell.read_stamped()
    }
    pub fn add(&mut self, value: T) {
        let value = match self.cell.live::<Stamped<T>>() {
            Some(_) => {
                let old = self.cell.slot.take().expect("live above");
                let old = old.downcast::<Stamped<T>>().expect(CHECKED);
                (self.reduce)(old.value, value)
            }
            None => value,
        };
        self.cell.write_stamped(value)
    }
    pub fn clear(&mut self) {
        self.cell.clear()
    }
}
