//! `sluice cluster`: a high-availability cluster's state.

use clap::Subcommand;
use sluice_client::Error;

use super::args::ClusterArgs;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, standbys, executors (slots, last keep-alive) and backfills with progress.
    #[command(
        after_help = "Examples:\n  sluice cluster status --etcd-endpoints http://127.0.0.1:2379 --cluster prod\n  sluice cluster status --etcd-endpoints http://127.0.0.1:2379 --json"
    )]
    Status {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(what: ClusterCommand) -> Result<(), Error> {
    match what {
        ClusterCommand::Status { cluster, json } => {
            let target =
                sluice_proto::etcd::EtcdTarget::parse(&cluster.etcd_endpoints, &cluster.cluster)?;
            let status = sluice_client::status::read(&target).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status)
                        .map_err(|e| Error::Io { path: "stdout".into(), reason: e.to_string() })?
                );
            } else {
                print!("{}", sluice_client::status::render(&status));
            }
            Ok(())
        }
    }
}
