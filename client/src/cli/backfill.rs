//! `sluice backfill`: submit a backfill to the cluster and follow it; `watch`,
//! `status`, `cancel`, `list`.

use clap::Subcommand;
use std::path::PathBuf;

use sluice_client::{Error, Target};
use sluice_proto::HostPort;

use super::args::{CatalogArgs, EtcdArgs};
use super::to_json;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BackfillArgs {
    #[command(subcommand)]
    pub what: Option<BackfillCommand>,
    /// The job spec (YAML), e.g. sql/jobs/churn.yaml.
    #[arg(required = true)]
    pub spec: Option<PathBuf>,
    /// First feature date, YYYY-MM-DD.
    #[arg(long, value_name = "YYYY-MM-DD", required = true)]
    pub from: Option<String>,
    /// Last feature date (inclusive), YYYY-MM-DD.
    #[arg(long, value_name = "YYYY-MM-DD", required = true)]
    pub to: Option<String>,
    /// Submit the backfill to the cluster (--scheduler or --etcd-endpoints), print its id
    /// and return (follow: `sluice backfill watch ID`, stop: `sluice backfill cancel ID`).
    #[arg(long)]
    pub detach: bool,
    /// The scheduler to submit to.
    #[arg(long, env = "SLUICE_SCHEDULER", value_name = "HOST:PORT", conflicts_with = "standalone")]
    pub scheduler: Option<HostPort>,
    /// Start an embedded cluster in this process (the default without --scheduler).
    #[arg(long)]
    pub standalone: bool,
    /// Run on plain single-process DataFusion (no cluster): the reference engine.
    #[arg(long, conflicts_with_all = ["scheduler", "standalone"])]
    pub local: bool,
    /// Print the first chunk's SQL and plan instead of running the backfill.
    #[arg(long)]
    pub explain: bool,
    /// With --explain: run the first chunk. On a cluster its write goes to a throwaway
    /// folder and the plan the scheduler executed is printed (with the broadcast joins
    /// its adaptive planner chose); with --local, EXPLAIN ANALYZE (plan and metrics).
    #[arg(long, requires = "explain")]
    pub analyze: bool,
    /// Folder or object-store prefix the spec's source paths are relative to (default:
    /// the spec's folder), e.g. s3://bucket/raw. Credentials: AWS_* variables or --set s3.*.
    #[arg(long, value_name = "DIR|URL")]
    pub data_dir: Option<PathBuf>,
    /// Output Delta table, a folder or s3://bucket/prefix (default: the spec's
    /// output.path, relative to the spec).
    #[arg(long, value_name = "DIR|URL")]
    pub output: Option<PathBuf>,
    /// Feature dates per distributed job. Default: the range split into a multiple of
    /// --parallel chunks of at most 183 dates (a year: 2 × 183; see benchmarks/README.md).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub chunk_days: Option<u32>,
    /// Chunks in flight at once.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub parallel: usize,
    /// Recompute every date of the range and replace the dates already in the output
    /// (after a spec change; earlier versions stay readable as TABLE@vN). Default: only
    /// the dates missing from the output.
    #[arg(long)]
    pub replace: bool,
    /// A session setting (KEY=VALUE), as for `sluice sql`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    /// Print a machine-readable JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Do not register the output in the catalog.
    #[arg(long)]
    pub no_register: bool,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

/// Where a backfill command finds the cluster's backfill service.
#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    /// The scheduler (leader) to ask.
    #[arg(long, env = "SLUICE_SCHEDULER", value_name = "HOST:PORT")]
    pub scheduler: Option<HostPort>,
    /// etcd endpoints of a high-availability cluster: ask its leader.
    #[arg(
        long,
        env = "SLUICE_ETCD_ENDPOINTS",
        value_name = "URL[,URL]",
        conflicts_with = "scheduler"
    )]
    pub etcd_endpoints: Option<String>,
    /// The cluster's name in etcd.
    #[arg(long, env = "SLUICE_CLUSTER", value_name = "NAME", default_value = "default")]
    pub cluster: String,
    /// A file holding the scheduler's bearer token.
    #[arg(long, env = "SLUICE_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

impl ServiceArgs {
    pub fn target(&self) -> Result<Target, Error> {
        match (&self.scheduler, &self.etcd_endpoints) {
            (Some(addr), _) => Ok(Target::Scheduler(addr.clone())),
            (None, Some(endpoints)) => {
                Ok(Target::Cluster(sluice_client::connect::etcd_target(endpoints, &self.cluster)?))
            }
            (None, None) => Err(Error::Usage(
                "which cluster? pass --scheduler HOST:PORT or --etcd-endpoints URL[,URL]".into(),
            )),
        }
    }

    pub fn token(&self) -> Result<Option<String>, Error> {
        sluice_client::catalog::read_token(self.token_file.as_deref())
    }
}

#[derive(Debug, Subcommand)]
pub enum BackfillCommand {
    /// A backfill's state, owner, dates committed and every chunk's state.
    Status {
        /// The backfill id (printed on submit, listed by `sluice backfill list`).
        id: sluice_client::backfill::BackfillId,
        #[command(flatten)]
        at: ServiceArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Follow a running backfill's progress until it ends (Ctrl-C detaches again).
    Watch {
        id: sluice_client::backfill::BackfillId,
        #[command(flatten)]
        at: ServiceArgs,
        /// Print the final summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a running backfill: its chunk jobs are cancelled, its staging removed,
    /// committed dates stay.
    Cancel {
        id: sluice_client::backfill::BackfillId,
        #[command(flatten)]
        at: ServiceArgs,
    },
    /// Every backfill the cluster has recorded, newest first.
    List {
        #[command(flatten)]
        at: ServiceArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Prints a finished backfill's summary (and its quality report).
fn print_report(report: &sluice_client::backfill::BackfillReport, json: bool) -> Result<(), Error> {
    if json {
        println!("{}", to_json(report)?);
    } else {
        eprint!("{}", sluice_client::backfill::quality_report(report));
        eprintln!(
            "{} of {} dates committed ({} already there), {} rows in {} chunk(s), {:.1} s -> {}",
            report.dates_committed,
            report.dates_total,
            report.dates_already_committed,
            report.rows,
            report.chunks,
            report.seconds,
            report.output
        );
    }
    Ok(())
}

fn quality_failed(report: &sluice_client::backfill::BackfillReport) -> Error {
    let text = sluice_client::backfill::quality_report(report);
    Error::Query {
        message: format!(
            "a quality expectation failed; the failing chunk was not committed.\n{text}"
        ),
        class: sluice_proto::ErrorClass::User,
    }
}

async fn run_command(what: BackfillCommand) -> Result<(), Error> {
    use sluice_client::backfill::{BackfillView, Service};
    match what {
        BackfillCommand::Status { id, at, json } => {
            let mut service = Service::of(&at.target()?, at.token()?.as_deref()).await?;
            let view = BackfillView::of(&service.get(&id).await?, true);
            if json {
                println!("{}", to_json(&view)?);
            } else {
                print!("{}", view.render());
            }
            Ok(())
        }
        BackfillCommand::Watch { id, at, json } => {
            let target = at.target()?;
            let started = std::time::Instant::now();
            let record =
                sluice_client::backfill::watch(&target, at.token()?.as_deref(), &id, !json).await?;
            let report =
                sluice_client::backfill::outcome(&record, started.elapsed().as_secs_f64())?;
            print_report(&report, json)?;
            if !report.ok {
                return Err(quality_failed(&report));
            }
            Ok(())
        }
        BackfillCommand::Cancel { id, at } => {
            let mut service = Service::of(&at.target()?, at.token()?.as_deref()).await?;
            let record = service.cancel(&id).await?;
            println!(
                "backfill {id} cancelled; {} dates committed stay in {}",
                record.dates_committed + record.dates_already_committed,
                record.request.as_ref().map(|r| r.output.as_str()).unwrap_or_default()
            );
            Ok(())
        }
        BackfillCommand::List { at, json } => {
            let mut service = Service::of(&at.target()?, at.token()?.as_deref()).await?;
            let views: Vec<BackfillView> =
                service.list().await?.iter().map(|b| BackfillView::of(b, true)).collect();
            if json {
                println!("{}", to_json(&views)?);
            } else {
                for v in &views {
                    println!(
                        "{}  {:<14} {}..{}  {}/{} dates  {}",
                        v.id,
                        v.state,
                        v.from,
                        v.to,
                        v.dates_committed + v.dates_already_committed,
                        v.dates_total,
                        v.output
                    );
                }
            }
            Ok(())
        }
    }
}

pub async fn run(args: BackfillArgs) -> Result<(), Error> {
    match args {
        BackfillArgs { what: Some(what), .. } => run_command(what).await,
        BackfillArgs { spec: None, .. }
        | BackfillArgs { from: None, .. }
        | BackfillArgs { to: None, .. } => {
            Err(Error::Usage("backfill needs SPEC, --from and --to".into()))
        }
        BackfillArgs {
            what: None,
            spec: Some(spec),
            from: Some(from),
            to: Some(to),
            detach,
            scheduler,
            standalone: _,
            local,
            explain,
            analyze,
            data_dir,
            output,
            chunk_days,
            parallel,
            replace,
            settings,
            json,
            no_register,
            catalog,
            etcd,
        } => {
            let catalog_target = if no_register || local { None } else { Some(catalog.target()?) };
            let opts = sluice_client::backfill::BackfillOptions {
                spec,
                from: sluice_client::backfill::parse_date("--from", &from)?,
                to: sluice_client::backfill::parse_date("--to", &to)?,
                target: match (scheduler, local, etcd.target()?) {
                    (Some(addr), _, _) => Target::Scheduler(addr),
                    (None, true, _) => Target::Local,
                    (None, false, Some(cluster)) => Target::Cluster(cluster),
                    (None, false, None) => Target::Standalone,
                },
                data_dir,
                output,
                chunk_days: chunk_days.unwrap_or(sluice_client::backfill::AUTO_CHUNK_DAYS),
                parallel,
                replace,
                settings: settings
                    .iter()
                    .map(|s| sluice_sql::session::parse_setting(s))
                    .collect::<Result<Vec<_>, _>>()?,
                progress: !json,
                token: if local {
                    None
                } else {
                    sluice_client::catalog::read_token(catalog.token_file.as_deref())?
                },
            };
            if detach {
                if !matches!(opts.target, Target::Scheduler(_) | Target::Cluster(_)) {
                    return Err(Error::Usage(
                        "--detach needs a cluster to run the backfill: pass --scheduler HOST:PORT or --etcd-endpoints URL (an embedded cluster ends with this command)".into(),
                    ));
                }
                let (record, scheduler) = sluice_client::backfill::submit(&opts).await?;
                println!("{}", record.id);
                eprintln!(
                    "backfill {} submitted to {scheduler}: {} chunk(s), {} of {} dates to compute.\n  follow it:  sluice backfill watch {id}{at}\n  stop it:    sluice backfill cancel {id}{at}",
                    record.id,
                    record.chunks.len(),
                    record.dates_total - record.dates_already_committed,
                    record.dates_total,
                    id = record.id,
                    at = match &opts.target {
                        Target::Cluster(c) => format!(
                            " --etcd-endpoints {} --cluster {}",
                            c.endpoints_label(),
                            c.cluster
                        ),
                        _ => format!(" --scheduler {scheduler}"),
                    }
                );
                return Ok(());
            }
            if explain {
                print!("{}", sluice_client::backfill::explain(&opts, analyze).await?);
                return Ok(());
            }
            let report = sluice_client::backfill::run(&opts).await?;
            print_report(&report, json)?;
            if report.ok
                && let Some(target) = &catalog_target
            {
                let spec = sluice_sql::job::spec::JobSpec::from_file(&opts.spec)
                    .map_err(|e| Error::Usage(format!("{}: {e}", opts.spec.display())))?;
                let entry = sluice_sql::catalog::CatalogEntry {
                    name: spec.name.clone(),
                    path: sluice_client::catalog::absolute(&report.output),
                    format: "delta".into(),
                    partitioned_by: vec![],
                };
                sluice_client::catalog::register(target, entry).await?;
                if !json {
                    eprintln!("registered table {} -> {}", spec.name, report.output);
                }
            }
            if !report.ok {
                return Err(quality_failed(&report));
            }
            Ok(())
        }
    }
}
