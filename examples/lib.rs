//! Shared bits of the examples (none yet).
