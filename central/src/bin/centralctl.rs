//! centralctl: the operator's command line for Backroom's central plane.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use backroom_central::profile_report;
use backroom_profiles::{Diagnostic, Invalid, Rendered, Severity, render_file, render_fleet};
use clap::{Parser, Subcommand};

/// Backroom's operator CLI.
#[derive(Parser)]
#[command(name = "centralctl", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with store profiles and fleet folders (no server needed).
    #[command(subcommand)]
    Profile(ProfileCommand),
}

#[derive(Subcommand)]
enum ProfileCommand {
    /// Check profiles: files, or fleet folders (every file under stores/ with its layers).
    ///
    /// Prints every error and warning as FILE:LINE:COLUMN: SEVERITY: MESSAGE and one line per
    /// valid store. Exits 0 when all are valid, 1 when any is not.
    Validate {
        /// Store profile files or fleet folders.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Show a few lines per valid store (segments, workloads) instead of one.
        #[arg(long)]
        summary: bool,
        /// Only print errors.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print the rendered profile (layers merged, values substituted, canonical) and its
    /// revision id.
    Render {
        file: PathBuf,
        /// Print JSON (the exact text the revision id is the sha256 of) instead of YAML.
        #[arg(long)]
        json: bool,
    },
    /// Show what would change in a store going from OLD to NEW (both rendered first).
    ///
    /// Exits 0 whether or not they differ; 1 when either does not validate.
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// Print the diff as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("centralctl: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Profile(ProfileCommand::Validate { paths, summary, quiet }) => {
            validate(&paths, summary, quiet)
        }
        Command::Profile(ProfileCommand::Render { file, json }) => {
            let Some(r) = render_or_report(&file) else { return Ok(ExitCode::FAILURE) };
            print_warnings_to_stderr(&r.warnings);
            if json {
                println!("{}", r.to_json());
            } else {
                println!("# rendered from {}\n# revision {}", r.source, r.revision);
                print!("{}", r.to_yaml());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Profile(ProfileCommand::Diff { old, new, json }) => {
            let (Some(a), Some(b)) = (render_or_report(&old), render_or_report(&new)) else {
                return Ok(ExitCode::FAILURE);
            };
            let d = backroom_profiles::diff(&a.profile, &b.profile);
            if json {
                let v = serde_json::json!({
                    "old": {"file": a.source, "revision": a.revision},
                    "new": {"file": b.source, "revision": b.revision},
                    "diff": d,
                });
                println!("{}", serde_json::to_string_pretty(&v).context("encoding the diff")?);
            } else {
                println!(
                    "{} (rev {}) → {} (rev {})",
                    a.source,
                    a.revision.short(),
                    b.source,
                    b.revision.short()
                );
                print!("{d}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn render_or_report(path: &std::path::Path) -> Option<Rendered> {
    match render_file(path) {
        Ok(r) => Some(r),
        Err(Invalid { diagnostics }) => {
            eprint!("{}", profile_report::diagnostics(&diagnostics));
            None
        }
    }
}

fn print_warnings_to_stderr(w: &[Diagnostic]) {
    eprint!("{}", profile_report::diagnostics(w));
}

fn validate(paths: &[PathBuf], summary: bool, quiet: bool) -> anyhow::Result<ExitCode> {
    let (mut ok, mut bad, mut warnings) = (0usize, 0usize, 0usize);
    let mut show = |id: &str, result: &Result<Rendered, Invalid>| {
        let diags = match result {
            Ok(r) => &r.warnings,
            Err(i) => &i.diagnostics,
        };
        let shown: Vec<Diagnostic> =
            diags.iter().filter(|d| !quiet || d.severity == Severity::Error).cloned().collect();
        print!("{}", profile_report::diagnostics(&shown));
        warnings += diags.iter().filter(|d| d.severity == Severity::Warning).count();
        match result {
            Ok(r) => {
                ok += 1;
                if summary {
                    print!("{}", profile_report::block(id, r));
                } else if !quiet {
                    println!("ok  {id}  {}", profile_report::one_line(r));
                }
            }
            Err(_) => {
                bad += 1;
                println!("INVALID  {id}");
            }
        }
    };
    for path in paths {
        if path.is_dir() {
            for store in
                render_fleet(path).with_context(|| format!("reading fleet {}", path.display()))?
            {
                show(&store.path.display().to_string(), &store.result);
            }
        } else {
            show(&path.display().to_string(), &render_file(path));
        }
    }
    println!("{} valid, {} invalid, {} warnings", plural(ok, "profile"), bad, warnings);
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}
