//! Deterministic simulator (filled in below).
