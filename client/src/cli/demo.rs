//! `sluice demo`.

use std::path::PathBuf;

use sluice_client::Error;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Users in the generated churn data.
    #[arg(long, default_value_t = 1000)]
    pub users: u64,
    /// TPC-H scale factor of the generated data.
    #[arg(long, default_value_t = 0.05)]
    pub scale_factor: f64,
    /// Keep the generated data here (default: a temp folder, removed afterwards).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

pub async fn run(args: DemoArgs) -> Result<(), Error> {
    match args {
        DemoArgs { users, scale_factor, data_dir } => {
            let temp;
            let dir = match data_dir {
                Some(d) => d,
                None => {
                    temp =
                        tempfile::Builder::new().prefix("sluice-demo-").tempdir().map_err(|e| {
                            Error::Io {
                                path: std::env::temp_dir().display().to_string(),
                                reason: e.to_string(),
                            }
                        })?;
                    temp.path().to_path_buf()
                }
            };
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            sluice_client::demo::run(&mut lock, users, scale_factor, &dir).await
        }
    }
}
