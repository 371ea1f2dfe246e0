//! What an isolate keeps between requests, and how a request gets it without touching another
//! request's I/O.
//!
//! workerd forbids a request from using an I/O object (fetch promise, stream, timer) that another
//! request's handler created, and it cancels a request that only awaits a promise another request
//! will resolve ("the Worker's code had hung"). An async mutex held across a load does both. So
//! the first request to need a value *claims* the load and does every fetch itself; requests that
//! need the same value meanwhile wait on timers of their own and take the finished, plain value.
//! A claim older than [`STALE_CLAIM_MS`] is taken over: the request that made it may have been
//! cancelled mid-load, and a cancelled request's futures are never polled (nor dropped) again.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use crate::clock::unix_ms;

/// A load still claimed after this long is presumed abandoned and taken over.
pub const STALE_CLAIM_MS: u64 = 20_000;
/// How often a waiting request looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(15);

enum SlotState<T> {
    Idle,
    Loading {
        key: String,
        claim: u64,
        claimed_unix_ms: u64,
    },
    Ready {
        key: String,
        value: Rc<T>,
    },
}

/// One isolate-wide value, keyed (a generation name, a model prefix): loaded once by whichever
/// request first needs it.
pub struct LoadSlot<T> {
    state: RefCell<SlotState<T>>,
    next_claim: std::cell::Cell<u64>,
}

impl<T> Default for LoadSlot<T> {
    fn default() -> Self {
        LoadSlot {
            state: RefCell::new(SlotState::Idle),
            next_claim: std::cell::Cell::new(1),
        }
    }
}

/// What a request should do next.
enum Step<T> {
    Take(Rc<T>),
    Wait,
    Load(u64),
}

/// How a [`LoadSlot::get_or_load`] went, for `Server-Timing`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOutcome {
    /// This request ran the load.
    pub loaded: bool,
    /// This request waited for another request's load.
    pub waited: bool,
}

impl<T> LoadSlot<T> {
    /// The ready value, if it is the one for `key`.
    pub fn ready(&self, key: &str) -> Option<Rc<T>> {
        match &*self.state.borrow() {
            SlotState::Ready {
                key: ready_key,
                value,
            } if ready_key == key => Some(value.clone()),
            _ => None,
        }
    }

    /// The ready value, whatever its key.
    pub fn ready_any(&self) -> Option<Rc<T>> {
        match &*self.state.borrow() {
            SlotState::Ready { value, .. } => Some(value.clone()),
            _ => None,
        }
    }

    /// Whether any value is ready (for `/v1/health`'s `model_loaded`).
    pub fn is_ready(&self) -> bool {
        matches!(&*self.state.borrow(), SlotState::Ready { .. })
    }

    fn next_step(&self, key: &str, now_unix_ms: u64) -> Step<T> {
        let mut state = self.state.borrow_mut();
        match &*state {
            SlotState::Ready {
                key: ready_key,
                value,
            } if ready_key == key => return Step::Take(value.clone()),
            SlotState::Loading {
                key: loading_key,
                claimed_unix_ms,
                ..
            } if loading_key == key
                && now_unix_ms.saturating_sub(*claimed_unix_ms) < STALE_CLAIM_MS =>
            {
                return Step::Wait
            }
            _ => {}
        }
        let claim = self.next_claim.get();
        self.next_claim.set(claim + 1);
        // A ready value for another key is dropped here: the isolate holds one model and one
        // generation per index; requests already holding the old `Rc` keep it alive until they finish.
        *state = SlotState::Loading {
            key: key.to_string(),
            claim,
            claimed_unix_ms: now_unix_ms,
        };
        Step::Load(claim)
    }

    fn release(&self, claim: u64) {
        let mut state = self.state.borrow_mut();
        if matches!(&*state, SlotState::Loading { claim: held, .. } if *held == claim) {
            *state = SlotState::Idle;
        }
    }

    fn publish(&self, key: &str, value: Rc<T>) {
        *self.state.borrow_mut() = SlotState::Ready {
            key: key.to_string(),
            value,
        };
    }

    /// The value for `key`: ready, or loaded by this request with `load` (its own I/O), or
    /// taken from another request's load after waiting on this request's own timers.
    pub async fn get_or_load<E, F, Fut>(
        &self,
        key: &str,
        load: F,
    ) -> Result<(Rc<T>, LoadOutcome), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut outcome = LoadOutcome::default();
        let claim = loop {
            match self.next_step(key, unix_ms()) {
                Step::Take(value) => return Ok((value, outcome)),
                Step::Wait => {
                    outcome.waited = true;
                    sleep(POLL_INTERVAL).await;
                }
                Step::Load(claim) => break claim,
            }
        };
        let guard = ClaimGuard { slot: self, claim };
        let value = Rc::new(load().await?);
        self.publish(key, value.clone());
        std::mem::forget(guard);
        outcome.loaded = true;
        Ok((value, outcome))
    }
}

/// Gives a failed load's claim back so the next request loads at once instead of waiting for the
/// claim to go stale.
struct ClaimGuard<'a, T> {
    slot: &'a LoadSlot<T>,
    claim: u64,
}

impl<T> Drop for ClaimGuard<'_, T> {
    fn drop(&mut self) {
        self.slot.release(self.claim);
    }
}

/// A timer of this request's own (a `setTimeout` inside workerd).
async fn sleep(duration: Duration) {
    #[cfg(target_arch = "wasm32")]
    {
        worker::Delay::from(duration).await;
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        // The host only runs the unit tests below, on a single-threaded executor.
        let _ = duration;
        futures::pending!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_request_waits_for_the_first_claim_then_takes_the_value() {
        let slot: LoadSlot<u32> = LoadSlot::default();
        let Step::Load(claim) = slot.next_step("gen-1", 1_000) else {
            panic!("the first request must claim the load");
        };
        assert!(matches!(slot.next_step("gen-1", 1_500), Step::Wait));
        slot.publish("gen-1", Rc::new(7));
        let _ = claim;
        assert!(matches!(slot.next_step("gen-1", 1_600), Step::Take(value) if *value == 7));
        assert!(slot.is_ready());
    }

    #[test]
    fn a_stale_claim_is_taken_over() {
        let slot: LoadSlot<u32> = LoadSlot::default();
        assert!(matches!(slot.next_step("gen-1", 1_000), Step::Load(1)));
        let later = 1_000 + STALE_CLAIM_MS;
        assert!(matches!(slot.next_step("gen-1", later), Step::Load(2)));
        // The abandoned first claim cannot release the second.
        slot.release(1);
        assert!(matches!(slot.next_step("gen-1", later + 1), Step::Wait));
    }

    #[test]
    fn a_failed_load_frees_the_slot_and_another_key_replaces_the_value() {
        let slot: LoadSlot<u32> = LoadSlot::default();
        let result: Result<_, &str> =
            futures::executor::block_on(slot.get_or_load("gen-1", || async { Err("no") }));
        assert!(result.is_err());
        assert!(!slot.is_ready());
        let (value, outcome) =
            futures::executor::block_on(slot.get_or_load("gen-1", || async { Ok::<_, &str>(3) }))
                .unwrap();
        assert_eq!(*value, 3);
        assert!(outcome.loaded);
        assert!(slot.ready("gen-2").is_none());
        let (newer, _) =
            futures::executor::block_on(slot.get_or_load("gen-2", || async { Ok::<_, &str>(4) }))
                .unwrap();
        assert_eq!(*newer, 4);
        assert!(slot.ready("gen-1").is_none());
    }
}
