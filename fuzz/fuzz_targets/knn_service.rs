#![no_main]

use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOCATOR: clipedge_fuzz::CappedAllocator = clipedge_fuzz::CappedAllocator;

fuzz_target!(|data: &[u8]| clipedge_fuzz::targets::knn_service(data));
