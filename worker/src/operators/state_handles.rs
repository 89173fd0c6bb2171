//! The typed descriptors and per-key handles of keyed state (Flink's `ValueState`,
//! `ListState`, `MapState`, `ReducingState`), over the cells of `keyed_state`.

use std::any::{TypeId, type_name};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::operators::keyed_state::{
    CHECKED, Stamped, StateCell, StateData, StateDeclaration, StateDescriptor, StateKind,
};
use crate::operators::state_ttl::{StateTtlConfig, is_expired};

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
