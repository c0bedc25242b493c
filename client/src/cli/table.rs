//! `sluice table`: the persistent catalog.

use clap::Subcommand;
use sluice_client::Error;

use super::args::CatalogArgs;

#[derive(Debug, Subcommand)]
pub enum TableCommand {
    /// Register (or replace) a table: every session and Flight SQL client sees it.
    #[command(
        after_help = "Examples:\n  sluice table register churn_features out/churn --format delta\n  sluice table register features s3://lake/features --format delta   # AWS_* variables give the credentials\n  sluice sql \"SELECT count(*) FROM \\\"churn_features@v3\\\"\"       # a Delta table's version 3 (or @2026-12-03T10:00:00Z)\n  sluice table register events data/churn/events --flight-sql 127.0.0.1:50051 --token-file admin.token"
    )]
    Register {
        /// Table name (letters, digits, '_').
        name: String,
        /// A folder or file (made absolute), or a URL.
        path: String,
        /// parquet, csv, json or delta (a Delta Lake table: readable as NAME@vN or
        /// NAME@TIMESTAMP too).
        #[arg(long, default_value = "parquet")]
        format: String,
        /// Hive partition column (`COL=VALUE/` folders); repeatable.
        #[arg(long = "partitioned-by", value_name = "COL")]
        partitioned_by: Vec<String>,
        #[command(flatten)]
        catalog: CatalogArgs,
    },
    /// List the catalog's tables.
    List {
        #[command(flatten)]
        catalog: CatalogArgs,
    },
    /// Remove a table from the catalog (its data stays).
    Drop {
        name: String,
        #[command(flatten)]
        catalog: CatalogArgs,
    },
}

pub async fn run(what: TableCommand) -> Result<(), Error> {
    use sluice_client::catalog;
    match what {
        TableCommand::Register { name, path, format, partitioned_by, catalog: args } => {
            let entry = sluice_sql::catalog::CatalogEntry {
                name,
                path: catalog::absolute(&path),
                format,
                partitioned_by,
            };
            let replaced = catalog::register(&args.target()?, entry.clone()).await?;
            let verb = if replaced.is_some() { "replaced" } else { "registered" };
            println!("{verb} table {} -> {} ({})", entry.name, entry.path, entry.format);
        }
        TableCommand::List { catalog: args } => {
            for t in catalog::list(&args.target()?).await? {
                let parts = if t.partitioned_by.is_empty() {
                    String::new()
                } else {
                    format!("  partitioned by {}", t.partitioned_by.join(", "))
                };
                println!("{:<24} {:<8} {}{parts}", t.name, t.format, t.path);
            }
        }
        TableCommand::Drop { name, catalog: args } => {
            let old = catalog::drop_table(&args.target()?, &name).await?;
            println!("dropped table {} (data left at {})", old.name, old.path);
        }
    }
    Ok(())
}
