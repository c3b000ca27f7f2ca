//! The `hongbao` binary: one command with subcommands.
//!
//! Owns: argument parsing and the process edge (signals, exit codes, the
//! start line and final summary). Must not: hold logic a test would want;
//! that lives in the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use hongbao::clock::micros_of_nanos;

#[derive(Parser)]
#[command(
    name = "hongbao",
    version,
    about = "Red-packet server for a million connections, and its load tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve wire v1: logins, shakes and claims, one pinned event loop per core.
    Server(Box<hongbao::server::ServerConfig>),
    /// Drive load at a server: connect users, log in, shake at a fixed rate.
    Flood(Box<hongbao::flood::FloodArgs>),
    /// Replay a server's ledger read-only and prove its books (and, with
    /// --ack-log, that nothing acknowledged is missing). Exits 1 on the first
    /// violation, naming it.
    Audit(hongbao::audit::AuditArgs),
    /// Collect per-second series from servers and flooders; charts, a live
    /// dashboard, a static report.
    Monitor(Box<hongbao::monitor::MonitorArgs>),
    /// The seed experiment on this machine in one command: a server, a
    /// monitor and flooders as children; connect, shake at 30k/s with
    /// envelopes and packets, shake at 60k/s; then the report and the audit.
    /// With --nodes N: across N nodes on a Redis Cluster it starts, one node
    /// and one Redis primary killed mid-run, then the fleet audit.
    Demo(Box<hongbao::demo::DemoArgs>),
    /// Signed logins: make a key file (`--new-key FILE`), or issue a token
    /// (`--key-file FILE --user ID --ttl SECS`), printed as the 64 hex digits
    /// a signed login (cmd 16) carries after its header.
    Token(hongbao::token::TokenArgs),
}

fn main() -> std::process::ExitCode {
    ignore_file_size_signal();
    let result = match parse_cli().command {
        Command::Server(config) => serve(&config),
        Command::Flood(args) => hongbao::flood::run(&args),
        Command::Audit(args) => hongbao::audit::run(&args).map(|_| ()),
        Command::Monitor(args) => monitor(&args),
        Command::Demo(args) => return demo(&args),
        Command::Token(args) => hongbao::token::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the step that failed, its cause, and the fix.
            eprintln!("hongbao: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The command line, each option of `server`, `flood` and `monitor` also
/// from its `HONGBAO_<SUBCOMMAND>_<OPTION>` variable: a flag beats the
/// environment, which beats the default (`hongbao::environment`).
fn parse_cli() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    match hongbao::environment::try_get_matches_from(Cli::command(), std::env::args_os())
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        // --help and --version: clap prints them and exits as `Cli::parse`
        // would.
        Err(e) if !e.use_stderr() => e.exit(),
        // A bad option: clap names the flag even when the value came from
        // a variable, so the variables set are named too.
        Err(e) => {
            let _ = e.print();
            let set: Vec<String> = hongbao::environment::option_vars()
                .map(|(k, v)| format!("{k}={}", v.to_string_lossy()))
                .collect();
            if !set.is_empty() {
                eprintln!(
                    "(options also come from the environment; set here: {})",
                    set.join(" ")
                );
            }
            std::process::exit(e.exit_code())
        }
    }
}

/// A write past the file-size limit (`RLIMIT_FSIZE`, `ulimit -f`) raises
/// SIGXFSZ, whose default action kills the process without a word. Ignored,
/// the write fails with EFBIG instead, and each writer says so: the ledger
/// aborts naming its file and the error (nothing unsynced was answered);
/// the logs and reports fail their step. Set before any thread starts, so
/// every thread inherits it.
fn ignore_file_size_signal() {
    // SAFETY: SIG_IGN is a valid disposition for SIGXFSZ, and no other
    // thread exists yet to race on the process's signal table.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

fn monitor(args: &hongbao::monitor::MonitorArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    // A signal asks the loop to stop at its next tick; the report is still
    // written.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .context("installing the SIGINT/SIGTERM handlers")?;
    }
    hongbao::monitor::run(args, &stop)
}

fn demo(args: &hongbao::demo::DemoArgs) -> std::process::ExitCode {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    // Ctrl-C reaches the demo alone (its children have their own process
    // groups); it then stops them in order and still writes what it has.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            eprintln!("hongbao: installing the SIGINT/SIGTERM handlers: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    match hongbao::demo::run(args, &stop) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("hongbao demo: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(config: &hongbao::server::ServerConfig) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    // Signals are taken before the threads start, so every thread inherits
    // the handler and none is killed by the default action.
    let signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("installing the SIGINT/SIGTERM handlers")?;
    let server = hongbao::server::start(config)?;
    print_start(&server, config);
    wait_for_signal(signals);
    print_summary(&server.shutdown());
    Ok(())
}

/// The start line, the start-up warnings and what the ledger replayed.
fn print_start(server: &hongbao::server::ServerHandle, config: &hongbao::server::ServerConfig) {
    for w in server.warnings() {
        eprintln!("{w}");
    }
    let http = server
        .http_addr()
        .map_or_else(|| "off".to_string(), |a| a.to_string());
    println!(
        "hongbao server listening on {} ({} {} thread(s), http {}, open-file limit {})",
        server.addr(),
        if config.reference {
            "reference"
        } else {
            "hongbao"
        },
        server.threads(),
        http,
        server.fd_limit().soft,
    );
    // An operator's line: whoever reads the server's output may predict the
    // run's amounts, as whoever reads its ledger knows them.
    let (seed, source) = server.seed();
    println!(
        "seed {seed} ({}; replay this run's amounts with --seed {seed})",
        match source {
            hongbao::server::SeedSource::Given => "from --seed",
            hongbao::server::SeedSource::Os => "drawn from the OS's randomness",
        }
    );
    if let (Some(urls), Some(node)) = (&config.cluster, config.node_id) {
        println!(
            "cluster mode: node {node} on the engine at {urls}; claims wait for {} replica(s) and this node's ledger; \
             shakes never wait for the engine (its state: GET /status, \"cluster\")",
            config.engine_replicas
        );
    }
    let r = server.replayed();
    if r.enabled {
        println!(
            "ledger: replayed {} records in {} group commits; {} envelopes outstanding ({} cents), \
             {} live packets ({} cents unclaimed)",
            r.records,
            r.batches,
            r.envelopes_outstanding,
            r.cents_outstanding,
            r.packets_live,
            r.cents_in_packets
        );
    }
}

/// Waits for SIGINT or SIGTERM, says what happens next, and arms a second
/// signal to exit at once.
fn wait_for_signal(mut signals: signal_hook::iterator::Signals) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let signal = signals.forever().next().unwrap_or(SIGTERM);
    eprintln!(
        "hongbao: {} received: stopping accepts, flushing answers (a second signal exits at once)",
        if signal == SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        }
    );
    // An operator who asks twice does not want to wait for the grace period.
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            eprintln!("hongbao: second signal: exiting without flushing");
            std::process::exit(130);
        }
    });
}

/// The run's totals, one line, as the server stops.
fn print_summary(summary: &hongbao::server::Summary) {
    let t = &summary.total;
    let s = summary.service_ns;
    let (p50, p99, p999, max) = (s.p50_ns, s.p99_ns, s.p999_ns, s.max_ns);
    println!(
        "summary: {} s, accepted {}, logins {}, shakes {} (got {}, none {}, gone {}, overload {}), \
         claims {} (paid {}, {} cents), packets {} ({} cents; expired {}, refunded {} cents), pushes {}, bad frames {}, evictions {}, login timeouts {}, fd-exhausted accepts {}, \
         envelopes recorded {} ({} cents) = granted {} ({} cents) + returned {} ({} cents) + in rings {} + ahead {}, \
         into rings {} ({} cents), \
         service time p50 {:.1} us p99 {:.1} us p99.9 {:.1} us max {:.1} us",
        summary.seconds,
        t.server.accepted,
        t.server.logins,
        t.server.shakes,
        t.server.got,
        t.server.none,
        t.server.gone,
        t.server.overload,
        t.server.claims,
        t.server.claims_paid,
        t.server.cents_claimed,
        t.generator.packets_created,
        t.generator.cents_packets,
        t.server.packets_expired,
        t.server.cents_refunded,
        t.server.pushes,
        t.server.bad_frames(),
        t.server.evictions,
        t.server.login_timeouts,
        t.server.accept_fd_exhausted,
        t.generator.recorded,
        t.generator.cents_recorded,
        t.server.got,
        t.server.cents_granted,
        t.server.envelopes_returned,
        t.server.cents_returned,
        summary.envelopes_in_rings,
        t.envelopes_ahead,
        t.generator.generated,
        t.generator.cents_generated,
        micros_of_nanos(p50),
        micros_of_nanos(p99),
        micros_of_nanos(p999),
        micros_of_nanos(max),
    );
}
