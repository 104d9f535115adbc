//! `berth cluster status`: the cluster's nodes and what they own, read from its PostgreSQL.

use anyhow::Context;

/// `berth cluster …`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The cluster's nodes (alive or not, what each owns), its objects and the size of its
    /// commit log and snapshots, as PostgreSQL holds them.
    #[command(after_help = "Examples:
  berth cluster status --cluster postgres://berth@db.internal/berth
  BERTH_CLUSTER_URL=postgres://berth@db.internal/berth berth cluster status --json")]
    Status(StatusArgs),
}

/// The flags of `berth cluster status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The cluster's PostgreSQL database (as given to `berth serve --cluster`).
    #[arg(long = "cluster", env = "BERTH_CLUSTER_URL", hide_env_values = true)]
    cluster_url: String,
    /// Print the status as one JSON document.
    #[arg(long)]
    json: bool,
}

/// Runs a `berth cluster` command.
pub fn run(command: Command) -> anyhow::Result<()> {
    let Command::Status(args) = command;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let status = runtime
        .block_on(broker::objects::cluster::status::status(&args.cluster_url))
        .context("reading the cluster's status from PostgreSQL")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<6} {:>8} {:>9}  {:<32} url",
        "node", "state", "objects", "log rows", "incarnation"
    );
    for node in &status.nodes {
        println!(
            "{:<16} {:<6} {:>8} {:>9}  {:<32} {}",
            node.name,
            if node.alive { "alive" } else { "lapsed" },
            node.objects,
            node.log_rows,
            node.incarnation,
            node.url
        );
    }
    println!(
        "{} objects ({} owned by no live node); log {} rows, {} bytes; {} snapshots, {} bytes",
        status.objects,
        status.unowned_objects,
        status.log_rows,
        status.log_bytes,
        status.snapshots,
        status.snapshot_bytes
    );
    Ok(())
}
