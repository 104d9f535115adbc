//! `berth completion SHELL` and `berth man`: shell completions and the man page, generated
//! from the same clap definition that parses the command line, so they cannot drift from it.

use std::io::Write as _;

use anyhow::Context as _;

/// The shells `berth completion` writes for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// `berth completion`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  berth completion bash > /etc/bash_completion.d/berth
  berth completion zsh > \"${fpath[1]}/_berth\"
  berth completion fish > ~/.config/fish/completions/berth.fish")]
pub struct Completion {
    /// The shell.
    pub shell: Shell,
}

/// `berth man`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:
  berth man > /usr/local/share/man/man1/berth.1 && man berth")]
pub struct Man {}

/// Writes the completion script for `shell` to stdout.
pub fn completion(args: &Completion, mut command: clap::Command) {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut command, "berth", &mut std::io::stdout());
}

/// Writes the man page (roff, section 1) to stdout.
///
/// # Errors
///
/// stdout cannot be written.
pub fn man(command: clap::Command) -> anyhow::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command)
        .render(&mut page)
        .context("rendering the man page")?;
    std::io::stdout()
        .write_all(&page)
        .context("writing the man page")
}
