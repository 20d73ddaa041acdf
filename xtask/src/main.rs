//! `cargo xtask <task>`: everything a fresh machine needs to build, test and
//! run sonde, done by the repo itself.
mod apt;
mod bench;
mod demo;
mod docker;
mod fuzz;
mod image;
mod k8s_tools;
mod run;
mod toolchain;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need: rust-src for the nightly,
    /// bpf-linker built against the nightly's LLVM (cached), Debian packages.
    Setup {
        /// Skip the Debian packages (toolchain only).
        #[arg(long)]
        no_apt: bool,
    },
    /// Build the agent (debug) with its eBPF programs.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Unit tests, then the privileged integration suite on this kernel.
    Test {
        /// Only the unprivileged unit tests.
        #[arg(long, conflicts_with = "privileged")]
        unit: bool,
        /// Only the privileged integration suite.
        #[arg(long)]
        privileged: bool,
        /// Passed to the test binaries (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Start the demo system (demo/) with sonde watching it and a load on
    /// all flows; spans print on stdout, metrics on 127.0.0.1:9464.
    Demo {
        /// host: services as processes; docker: as containers behind published ports.
        #[arg(long, default_value = "host", value_parser = ["host", "docker"])]
        mode: String,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
        /// Arguments for `sonde run`, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build the container image `sonde:dev`: a static (musl) sonde in a
    /// FROM scratch image, with the local Docker engine (no registry).
    Image,
    /// The capture and HTTP suites inside qemu, per kernel, with a pass/fail
    /// table. Default matrix: Debian's 5.10 cloud, 6.1 and 6.12 kernels.
    VmTest {
        /// SUITE:PACKAGE (e.g. bookworm:linux-image-amd64) or a vmlinuz path; repeatable.
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Only this suite (capture, http, tls); repeatable.
        #[arg(long = "suite")]
        suites: Vec<String>,
        /// Only tests whose name contains this (the test binaries' filter).
        #[arg(long = "test")]
        test: Option<String>,
        /// Print the agent's debug log on the console after a failing suite.
        #[arg(long)]
        agent_log: bool,
        /// qemu's accelerator for the guests.
        #[arg(long, value_enum, default_value_t = vm::Accel::Auto)]
        accel: vm::Accel,
    },
    /// Run the libFuzzer targets in fuzz/ (nightly, cargo-fuzz, installed if
    /// missing), seeded from the recorded captures; fails on any crash.
    Fuzz {
        /// Only this target (ring_record, protocols, sql, amqp_table); repeatable.
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Stop each target after this many seconds (default 60 when --runs is not given).
        #[arg(long)]
        seconds: Option<u64>,
        /// Stop each target after this many executions.
        #[arg(long)]
        runs: Option<u64>,
    },
    /// What sonde costs the services it watches: wrk against nginx and a
    /// Python server, bare and under sonde (metrics only, OTLP export),
    /// alternated over rounds; prints one table per workload.
    Bench {
        /// Only this workload (nginx, nginx-tls, python, db, go, idle); repeatable.
        #[arg(long = "workload")]
        workloads: Vec<String>,
        /// Rounds of the three arms.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds of load per arm and round.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// wrk connections [default: 32 for nginx, 16 for python].
        #[arg(long)]
        connections: Option<u32>,
    },
    /// Build and run `sonde` (default: `sonde run`) as root.
    Run {
        #[arg(long)]
        release: bool,
        /// Arguments for sonde, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.task {
        Task::Setup { no_apt } => toolchain::setup(!no_apt),
        Task::Build { release } => toolchain::setup(false).and_then(|()| run::build(release)),
        Task::Test {
            unit,
            privileged,
            args,
        } => run::test(!privileged, !unit, &args),
        Task::Image => image::build(),
        Task::VmTest {
            kernels,
            suites,
            test,
            agent_log,
            accel,
        } => toolchain::setup(false).and_then(|()| {
            vm::vm_test(
                &kernels,
                &vm::Options {
                    suites,
                    test,
                    agent_log,
                    accel,
                },
            )
        }),
        Task::Demo {
            mode,
            duration,
            args,
        } => demo::demo(&mode, duration, &args),
        Task::Fuzz {
            targets,
            seconds,
            runs,
        } => fuzz::fuzz(&fuzz::Options {
            targets,
            seconds,
            runs,
        }),
        Task::Bench {
            workloads,
            rounds,
            seconds,
            connections,
        } => toolchain::setup(false).and_then(|()| {
            bench::bench(&bench::Options {
                workloads,
                rounds,
                seconds,
                connections,
            })
        }),
        Task::Run { release, args } => {
            toolchain::setup(false).and_then(|()| run::run(release, &args))
        }
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}
