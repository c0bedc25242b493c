//! `sluice cluster`: a high-availability cluster's state, and development
//! certificates for its mutual TLS.

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
    /// Mint a development CA and cluster certificates (mutual TLS between
    /// scheduler, executors and operators' clients).
    ///
    /// Writes ca.pem; scheduler.pem/.key; executor-1..N.pem/.key; client.pem/.key
    /// (for the `sluice` CLI: SLUICE_CLUSTER_CA/CERT/KEY); etcd.pem/.key
    /// (etcd's server certificate). Keys are mode 0600. For production, issue
    /// certificates from your own CA with the same role URI
    /// (urn:sluice:role:scheduler|executor|client) and DNS name sluice-cluster.
    #[command(after_help = "Examples:
  sluice cluster certs --out ./certs
  sluice cluster certs --out ./certs --executors 8 --host 10.0.0.5 --host sched.internal
  sluice-scheduler --cluster-ca certs/ca.pem --cluster-cert certs/scheduler.pem --cluster-key certs/scheduler.key
  sluice-executor --scheduler 10.0.0.5:50050 --cluster-ca certs/ca.pem --cluster-cert certs/executor-1.pem --cluster-key certs/executor-1.key")]
    Certs {
        /// Folder to write the files into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
        /// Executor certificates to mint (one per executor: an executor's id
        /// is bound to its certificate).
        #[arg(long, value_name = "N", default_value_t = 3)]
        executors: usize,
        /// Extra host name or IP address put in every certificate (repeatable).
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExecutorCommand {
    /// Drain an executor (scale-in): it takes no new task, finishes its
    /// running ones, moves its finished shuffle output to live peers (the
    /// scheduler points readers at them) and exits 0 within its
    /// --drain-deadline, as on a spot notice (SIGTERM).
    #[command(after_help = "Examples:
  sluice executor drain 3f2c9a7e-… --scheduler 127.0.0.1:50050
  sluice executor drain 3f2c9a7e-… --etcd-endpoints http://127.0.0.1:2379

Executor ids: `sluice cluster status` (etcd) or the scheduler's /api/executors.
The executor sees the request within 2 s.")]
    Drain {
        /// The executor's id.
        id: String,
        #[command(flatten)]
        at: super::backfill::ServiceArgs,
    },
}

pub async fn run_executor(what: ExecutorCommand) -> Result<(), Error> {
    match what {
        ExecutorCommand::Drain { id, at } => {
            let already =
                sluice_client::backfill::drain_executor(&at.target()?, at.token()?.as_deref(), &id)
                    .await?;
            if already {
                println!("executor {id} is draining already");
            } else {
                println!("executor {id} asked to drain");
            }
            Ok(())
        }
    }
}

pub async fn run(what: ClusterCommand) -> Result<(), Error> {
    match what {
        ClusterCommand::Certs { out, executors, hosts } => {
            if executors == 0 {
                return Err(Error::Usage("--executors must be at least 1".into()));
            }
            let minted = sluice_proto::tls::mint(&out, &hosts, executors)
                .map_err(|e| Error::Usage(e.to_string()))?;
            println!("wrote {} (the cluster CA)", minted.ca.display());
            for m in &minted.members {
                println!(
                    "wrote {} and {} ({})",
                    m.cert.display(),
                    m.key.display(),
                    m.identity.role
                );
            }
            println!(
                "wrote {} and {} (etcd's server certificate)",
                out.join("etcd.pem").display(),
                out.join("etcd.key").display()
            );
            Ok(())
        }
        ClusterCommand::Status { cluster, json } => {
            let target =
                sluice_client::connect::etcd_target(&cluster.etcd_endpoints, &cluster.cluster)?;
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
