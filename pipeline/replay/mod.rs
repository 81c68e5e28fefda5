//! Replay of real intake traffic (being written).
