//! The push interface between chained operators.
//!
//! A chain is a stack of [`Output`]s: each operator implements `Output<In>` and owns the
//! `Box<dyn Output<Out>>` of the next one; the last link is a router that fills channel
//! batches (or a sink). A record therefore crosses a chain with one virtual call per operator
//! and no queue.

use crate::error::TaskError;
use crate::runtime::message::Signal;

pub trait Output<T>: Send {
    /// Process one record.
    fn emit(&mut self, item: T) -> Result<(), TaskError>;
    /// Process one record that arrived over a hash edge, with the stable hash of its key
    /// (`codec::key_hash::stable_hash` of what the edge's key selector returned), which the
    /// router computed to pick this subtask. Only the head of a chain gets it, and only
    /// from a hash edge, so a keyed operator there sees the hash of its own key and can
    /// look its state up by it instead of hashing the key again. Anything else ignores it.
    #[inline]
    fn emit_keyed(&mut self, item: T, key_hash: u64) -> Result<(), TaskError> {
        let _ = key_hash;
        self.emit(item)
    }
    /// Process a control signal and pass it on.
    fn signal(&mut self, signal: Signal) -> Result<(), TaskError>;
    /// Send partially filled batches now (latency bound); called when the task's input is
    /// idle and at least every buffer timeout.
    fn flush(&mut self) -> Result<(), TaskError>;
}

impl<T, O: Output<T> + ?Sized> Output<T> for Box<O> {
    #[inline]
    fn emit(&mut self, item: T) -> Result<(), TaskError> {
        (**self).emit(item)
    }
    #[inline]
    fn emit_keyed(&mut self, item: T, key_hash: u64) -> Result<(), TaskError> {
        (**self).emit_keyed(item, key_hash)
    }
    fn signal(&mut self, signal: Signal) -> Result<(), TaskError> {
        (**self).signal(signal)
    }
    fn flush(&mut self) -> Result<(), TaskError> {
        (**self).flush()
    }
}

/// Sends every record to several outputs (an operator with more than one consumer).
pub(crate) struct FanOut<T> {
    pub outputs: Vec<Box<dyn Output<T>>>,
}

impl<T: Clone + Send> Output<T> for FanOut<T> {
    fn emit(&mut self, item: T) -> Result<(), TaskError> {
        let (last, rest) = self.outputs.split_last_mut().expect("fan-out has outputs");
        for out in rest {
            out.emit(item.clone())?;
        }
        last.emit(item)
    }
    fn signal(&mut self, signal: Signal) -> Result<(), TaskError> {
        self.outputs.iter_mut().try_for_each(|o| o.signal(signal))
    }
    fn flush(&mut self) -> Result<(), TaskError> {
        self.outputs.iter_mut().try_for_each(|o| o.flush())
    }
}

/// Output of an operator nobody consumes.
pub(crate) struct Discard;

impl<T> Output<T> for Discard {
    fn emit(&mut self, _item: T) -> Result<(), TaskError> {
        Ok(())
    }
    fn signal(&mut self, _signal: Signal) -> Result<(), TaskError> {
        Ok(())
    }
    fn flush(&mut self) -> Result<(), TaskError> {
        Ok(())
    }
}
