//! The `zgate` command line. Each subcommand's logic lives in the library;
//! this file only parses arguments, prints, and maps errors to exit status
//! 2 with one line on stderr.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use zgate::{agent, check, run};

#[derive(Debug, Parser)]
#[command(
    name = "zgate",
    version,
    about = "Istio ambient L4 policy, enforced with eBPF"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decide one connection as ztunnel would, and say why.
    Check(Box<check::CheckArgs>),
    /// Show each AuthorizationPolicy's status and each workload's effective mTLS.
    Policies(check::PoliciesArgs),
    /// Run the node daemon: load and attach the eBPF programs and enforce
    /// the config (default: the embedded ambient-demo example). Ctrl-C
    /// detaches everything; SIGTERM keeps the last policy enforced.
    Agent(Box<agent::AgentOptions>),
    /// Run a command as an enrolled workload of the running agent.
    Run(run::RunArgs),
    /// Remove every program, link, map and cgroup zgate created.
    Uninstall(agent::NodeOptions),
    /// What the running agent is doing: workloads, programs, policies, maps,
    /// verdict counters.
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// The agent's admin socket.
    #[arg(long, default_value = "/run/zgate/admin.sock")]
    admin_socket: std::path::PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print as usual; a usage error is one line.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let message = zgate::cli::usage_error_line(&e);
            eprintln!("zgate: error: {message} (see `zgate --help`)");
            return ExitCode::from(2);
        }
    };
    // Warnings (skipped kinds, ignored fields) go to stderr; RUST_LOG overrides.
    let default = if matches!(cli.command, Command::Agent(_)) {
        "info"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let json = matches!(&cli.command, Command::Agent(o) if o.log_format == agent::LogFormat::Json);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Only fails if a subscriber is already set, which is then used instead.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            // Module errors already say what caused them; the chain would repeat it.
            eprintln!("zgate: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let out = match cli.command {
        Command::Check(args) if args.agent => {
            // The agent decides with the same arguments, minus the socket.
            let mut forwarded = Vec::new();
            let mut argv = std::env::args().skip_while(|a| a != "check").skip(1);
            while let Some(a) = argv.next() {
                match a.as_str() {
                    "--admin-socket" => {
                        argv.next();
                    }
                    _ if a.starts_with("--admin-socket=") => {}
                    _ => forwarded.push(a),
                }
            }
            let client = zgate::client::AdminClient::connect(&args.admin_socket)?;
            match client.request(&agent::Request::Check { args: forwarded })? {
                agent::Response::Checked { report } => report,
                other => anyhow::bail!("unexpected reply from the agent: {other:?}"),
            }
        }
        Command::Check(args) => check::run_check(&args)?.render(args.json)?,
        Command::Policies(args) => check::run_policies(&args)?.render(args.json)?,
        Command::Agent(opts) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(agent::run(*opts))?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Run(args) => return Ok(exit_code(run::run(&args)?)),
        Command::Status(args) => {
            let status = zgate::client::AdminClient::connect(&args.admin_socket)?.status()?;
            if args.json {
                format!("{}\n", serde_json::to_string_pretty(&status)?)
            } else {
                status.to_string()
            }
        }
        Command::Uninstall(node) => {
            agent::uninstall(&node)?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// The workload's exit status, shell-style (128 + signal when killed).
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt as _;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(code.clamp(0, 255) as u8)
}
