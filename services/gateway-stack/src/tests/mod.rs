//! Tests of the assembled stack: layers in their order, through [`crate::source_stack`] and
//! [`crate::stack`].

mod resilience;
mod stack;
