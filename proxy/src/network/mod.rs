//! Network (L4) filters.

pub mod filters;
