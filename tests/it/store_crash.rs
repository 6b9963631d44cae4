//! The store under concurrent commands and kill -9.
