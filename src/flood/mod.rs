//! Placeholder: the load generator is being written (see issue 3).

/// Flooder options.
#[derive(Debug, clap::Args)]
pub struct FloodArgs {}

/// Runs the flooder.
pub fn run(_args: &FloodArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
