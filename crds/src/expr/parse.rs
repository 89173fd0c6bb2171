//! Expression text to the `cel` crate's AST.

use cel::common::ast::IdedExpr;

use super::ExprError;

/// Parses `source`; macros (`map`, `all`, `has`, ...) come back expanded.
pub(super) fn parse(source: &str) -> Result<IdedExpr, ExprError> {
    cel::parser::Parser::new().parse(source).map_err(|e| {
        let first = e.errors.first();
        ExprError {
            message: first.map_or_else(|| e.to_string(), |p| p.msg.clone()),
            position: first.map(|p| (p.pos.0.max(0) as u32, p.pos.1.max(0) as u32 + 1)),
        }
    })
}
