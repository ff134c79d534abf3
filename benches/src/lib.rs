//! Load tool support.
