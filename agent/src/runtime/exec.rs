//! The exec runtime (filled in next).
