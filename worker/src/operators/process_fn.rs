//! `KeyedProcessFunction` (Flink's): per record and per timer, with the key, the record's
//! timestamp, the watermark, the processing time, a timer service and per-key state.
//!
//! Per-key state comes two ways, both checkpointed by key group with the key's timers:
//! named state handles (value, list, map, reducing; optional TTL), declared in
//! `declare_state` and read with `ctx.get_state(&descriptor)` (see [`keyed_state`]), and one
//! value of a type the function chooses (`State`, `ctx.state()`). A key whose `State`
//! equals `State::default()`, with no named state and no timers, is dropped.
//!
//! `ctx.output(&tag, value)` sends a record to a side output, read with `get_side_output`.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::operators::keyed_state::{Slot, StateTable};
use crate::operators::side_output::SideBuffer;
use crate::operators::windows::OutputTag;
use crate::runtime::functions::Collector;

pub use crate::operators::keyed_state::{
    ListState, ListStateDescriptor, MapState, MapStateDescriptor, ReducingState,
    ReducingStateDescriptor, StateData, StateDeclarations, StateDescriptor, StateKind, ValueState,
    ValueStateDescriptor,
};
pub use crate::operators::state_ttl::{StateTtlConfig, UpdateType};

pub trait KeyedProcessFunction<K: ?Sized, T>: Send + Sync + 'static {
    type State: Default + PartialEq + Clone + Send + Serialize + DeserializeOwned + 'static;
    type Out;

    /// The named states the function uses (`states.add(&self.count)`). Only declared
    /// states can be used, and a restore checks a snapshot's states against them.
    fn declare_state(&self, _states: &mut StateDeclarations) {}

    fn process_element(
        &self,
        value: T,
        ctx: &mut KeyedContext<'_, K, Self::State>,
        out: &mut Collector<'_, Self::Out>,
    );

    /// A timer of the current key fired; `ctx.timer_domain()` says which kind.
    fn on_timer(
        &self,
        _timestamp: i64,
        _ctx: &mut KeyedContext<'_, K, Self::State>,
        _out: &mut Collector<'_, Self::Out>,
    ) {
    }
}

/// A key's timers (one per key, time and domain, as in Flink) and state.
#[derive(Default)]
pub(crate) struct KeyEntry<S> {
    pub state: S,
    pub event_timers: BTreeSet<i64>,
    pub processing_timers: BTreeSet<i64>,
    /// Named states by declaration index; `None` where the key has none.
    pub named: Vec<Option<Slot>>,
}

impl<S: Default + PartialEq> KeyEntry<S> {
    /// Nothing left to keep for the key.
    pub fn is_empty(&self) -> bool {
        self.event_timers.is_empty()
            && self.processing_timers.is_empty()
            && self.named.iter().all(Option::is_none)
            && self.state == S::default()
    }
}

/// Which clock a timer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerDomain {
    EventTime,
    ProcessingTime,
}

/// What a process function sees of the current key.
pub struct KeyedContext<'a, K: ?Sized, S> {
    pub(crate) key: &'a K,
    pub(crate) timestamp: Option<i64>,
    pub(crate) watermark: i64,
    pub(crate) processing_time: i64,
    pub(crate) domain: Option<TimerDomain>,
    pub(crate) entry: &'a mut KeyEntry<S>,
    pub(crate) states: &'a StateTable,
    pub(crate) side: &'a mut SideBuffer,
    /// Timers registered during this call, for the operator's queues.
    pub(crate) new_timers: Vec<(TimerDomain, i64)>,
}

impl<K: ?Sized, S> KeyedContext<'_, K, S> {
    pub fn get_current_key(&self) -> &K {
        self.key
    }
    /// The record's event timestamp (or the timer's time in `on_timer` for event timers).
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }
    pub fn current_watermark(&self) -> i64 {
        self.watermark
    }
    pub fn current_processing_time(&self) -> i64 {
        self.processing_time
    }
    /// In `on_timer`: the domain of the timer that fired.
    pub fn timer_domain(&self) -> Option<TimerDomain> {
        self.domain
    }
    /// This key's `State` value.
    pub fn state(&mut self) -> &mut S {
        &mut self.entry.state
    }
    /// This key's entry of a named state declared in `declare_state`, e.g.
    /// `ctx.get_state(&self.count).value()`. With a TTL, expired entries are never returned;
    /// the TTL follows the operator's processing-time clock.
    pub fn get_state<'s, D: StateDescriptor>(&'s mut self, descriptor: &'s D) -> D::Handle<'s> {
        let cell = self
            .states
            .cell(descriptor, &mut self.entry.named, self.processing_time);
        descriptor.handle(cell)
    }
    /// Emits `value` to the side output `tag` (read it with `get_side_output(&tag)` on the
    /// stream `process` returned).
    pub fn output<X: Serialize>(&mut self, tag: &OutputTag<X>, value: X) {
        self.side.push(&tag.id, &value)
    }
    /// Fires `on_timer` once the watermark reaches `time` (once per key and time).
    pub fn register_event_time_timer(&mut self, time: i64) {
        if self.entry.event_timers.insert(time) {
            self.new_timers.push((TimerDomain::EventTime, time));
        }
    }
    pub fn delete_event_time_timer(&mut self, time: i64) {
        self.entry.event_timers.remove(&time);
    }
    /// Fires `on_timer` once the operator's clock reaches `time`.
    pub fn register_processing_time_timer(&mut self, time: i64) {
        if self.entry.processing_timers.insert(time) {
            self.new_timers.push((TimerDomain::ProcessingTime, time));
        }
    }
    pub fn delete_processing_time_timer(&mut self, time: i64) {
        self.entry.processing_timers.remove(&time);
    }
}

/// A record of one of two connected streams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TwoInput<A, B> {
    First(A),
    Second(B),
}

/// Flink's `KeyedCoProcessFunction`: two inputs keyed alike (e.g. records and a control or
/// enrichment stream) sharing per-key state and timers. Window and interval joins fit the
/// same shape: both sides buffered in the key's state, timers to emit and clean up.
pub trait KeyedCoProcessFunction<K: ?Sized, A, B>: Send + Sync + 'static {
    type State: Default + PartialEq + Clone + Send + Serialize + DeserializeOwned + 'static;
    type Out;

    /// As [`KeyedProcessFunction::declare_state`]: both inputs share these states.
    fn declare_state(&self, _states: &mut StateDeclarations) {}

    fn process_element1(
        &self,
        value: A,
        ctx: &mut KeyedContext<'_, K, Self::State>,
        out: &mut Collector<'_, Self::Out>,
    );

    fn process_element2(
        &self,
        value: B,
        ctx: &mut KeyedContext<'_, K, Self::State>,
        out: &mut Collector<'_, Self::Out>,
    );

    fn on_timer(
        &self,
        _timestamp: i64,
        _ctx: &mut KeyedContext<'_, K, Self::State>,
        _out: &mut Collector<'_, Self::Out>,
    ) {
    }
}

/// A co-process function as a process function over [`TwoInput`] records.
pub(crate) struct CoProcess<F>(pub F);

impl<K: ?Sized, A, B, F> KeyedProcessFunction<K, TwoInput<A, B>> for CoProcess<F>
where
    F: KeyedCoProcessFunction<K, A, B>,
{
    type State = F::State;
    type Out = F::Out;

    fn declare_state(&self, states: &mut StateDeclarations) {
        self.0.declare_state(states)
    }

    fn process_element(
        &self,
        value: TwoInput<A, B>,
        ctx: &mut KeyedContext<'_, K, Self::State>,
        out: &mut Collector<'_, Self::Out>,
    ) {
        match value {
            TwoInput::First(a) => self.0.process_element1(a, ctx, out),
            TwoInput::Second(b) => self.0.process_element2(b, ctx, out),
        }
    }

    fn on_timer(
        &self,
        timestamp: i64,
        ctx: &mut KeyedContext<'_, K, Self::State>,
        out: &mut Collector<'_, Self::Out>,
    ) {
        self.0.on_timer(timestamp, ctx, out)
    }
}
