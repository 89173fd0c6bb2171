//! `KeyedProcessFunction` (Flink's): per record and per timer, with the key, the record's
//! timestamp, the watermark, the processing time, a timer service and per-key state.
//!
//! Per-key state is one value of a type the function chooses (`State`: a struct, an
//! `Option<V>` for a value state, a `Vec<V>` for a list state, a `BTreeMap` for a map
//! state), checkpointed by key group with the key's timers. A key whose state equals
//! `State::default()` and that has no timers is dropped.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::runtime::functions::Collector;

pub trait KeyedProcessFunction<K: ?Sized, T>: Send + Sync + 'static {
    type State: Default + PartialEq + Clone + Send + Serialize + DeserializeOwned + 'static;
    type Out;

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
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct KeyEntry<S> {
    pub state: S,
    pub event_timers: BTreeSet<i64>,
    pub processing_timers: BTreeSet<i64>,
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
    /// This key's state.
    pub fn state(&mut self) -> &mut S {
        &mut self.entry.state
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
