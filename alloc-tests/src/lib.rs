//! Nothing but a home for tests/: herald's allocations counted by the fuzz targets' allocator (fuzz/src/tracking.rs).
