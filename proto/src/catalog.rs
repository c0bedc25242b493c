//! The catalog's Flight actions (`proto/sluice/v1/catalog.proto`): their
//! type names, defined once for the scheduler that serves them and the
//! client that calls them.

use crate::pb::CatalogAction;

/// The `Action.type` of `action` (`sluice.table.list`, …).
pub fn action_type(action: CatalogAction) -> &'static str {
    match action {
        CatalogAction::List => "sluice.table.list",
        CatalogAction::Register => "sluice.table.register",
        CatalogAction::Drop => "sluice.table.drop",
        CatalogAction::Unspecified => "sluice.table.unspecified",
    }
}

/// The action an `Action.type` names, if it is a catalog action.
pub fn parse_action_type(kind: &str) -> Option<CatalogAction> {
    [CatalogAction::List, CatalogAction::Register, CatalogAction::Drop]
        .into_iter()
        .find(|a| action_type(*a) == kind)
}

/// Every catalog action with what it does (`ListActions`).
pub const ACTIONS: [(CatalogAction, &str); 3] = [
    (CatalogAction::List, "list the catalog's tables (sluice.v1.ListTables → ListTablesResult)"),
    (CatalogAction::Register, "register a table (admin; RegisterTable → RegisterTableResult)"),
    (CatalogAction::Drop, "drop a table (admin; DropTable → DropTableResult)"),
];
