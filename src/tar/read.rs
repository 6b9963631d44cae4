//! Tar reader (pending).
