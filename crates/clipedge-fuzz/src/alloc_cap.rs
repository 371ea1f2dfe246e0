//! A global allocator that records the largest single allocation made while a check is armed,
//! so a decoder that sizes a buffer from a length field it has not checked against its input
//! is caught even when the allocation itself would succeed.
//!
//! Binaries opt in with `#[global_allocator] static A: CappedAllocator = CappedAllocator;`
//! (the fuzz targets and the replay test do); [`is_installed`] tells whether one did.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::io::Write as _;

/// Allocations above this are refused outright while armed (the process aborts with the size),
/// so a bogus length fails fast instead of taking the machine's memory.
const REFUSE_BYTES: usize = 256 << 20;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    /// Printed when an allocation is refused (the process aborts right after).
    static CONTEXT: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Names what runs on this thread, for the message of a refused allocation.
pub fn set_context(context: String) {
    CONTEXT.with(|slot| *slot.borrow_mut() = context);
}

pub struct CappedAllocator;

/// Records `size`; false when the allocation must be refused.
fn note(size: usize) -> bool {
    // `try_with`: thread-locals can be gone while a thread is torn down.
    let armed = ARMED.try_with(Cell::get).unwrap_or(false);
    if !armed {
        return true;
    }
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
    if size <= REFUSE_BYTES {
        return true;
    }
    // Unbuffered stderr and a borrowed string: nothing here allocates.
    let _ = CONTEXT.try_with(|context| {
        let mut stderr = std::io::stderr();
        let _ = stderr.write_all(b"allocation cap: refusing a huge allocation while running ");
        let _ = stderr.write_all(context.borrow().as_bytes());
        let _ = stderr.write_all(b"\n");
    });
    false
}

unsafe impl GlobalAlloc for CappedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !note(new_size) {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Disarms on drop, so a panicking check leaves the thread unarmed.
struct Armed;

impl Drop for Armed {
    fn drop(&mut self) {
        ARMED.with(|armed| armed.set(false));
    }
}

/// Runs `f` armed and returns its result with the largest single allocation it made (0 when
/// no [`CappedAllocator`] is installed).
pub fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|largest| largest.set(0));
    ARMED.with(|armed| armed.set(true));
    let guard = Armed;
    let result = f();
    drop(guard);
    (result, LARGEST.with(Cell::get))
}

/// Whether the running binary's global allocator is a [`CappedAllocator`].
pub fn is_installed() -> bool {
    let (_, largest) = largest_allocation(|| std::hint::black_box(Vec::<u8>::with_capacity(4096)));
    largest >= 4096
}

/// What a decoder may allocate at once for an input of `input_len` bytes: `per_byte` times the
/// input plus `constant`. Anything more came from a length the decoder did not check.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub per_byte: usize,
    pub constant: usize,
}

impl Budget {
    /// Decoders that only parse what is there (JSON, checked binary tables).
    pub const PROPORTIONAL: Budget = Budget {
        per_byte: 64,
        constant: 64 << 10,
    };

    pub fn limit(self, input_len: usize) -> usize {
        input_len
            .saturating_mul(self.per_byte)
            .saturating_add(self.constant)
    }
}

/// Runs the decoder `f` on an input of `input_len` bytes and panics when one of its
/// allocations exceeded `budget`.
pub fn within_budget<R>(what: &str, input_len: usize, budget: Budget, f: impl FnOnce() -> R) -> R {
    let (result, largest) = largest_allocation(f);
    let limit = budget.limit(input_len);
    assert!(
        largest <= limit,
        "{what}: one allocation of {largest} bytes for {input_len} input bytes (limit {limit})"
    );
    result
}
