//! The verbs of `kt`: dispatch from the parsed command line to one module
//! per verb family.

mod bench;
mod info;
mod list;
mod messages;
mod serve;
mod soak;
mod traffic;

use crate::cli::{Cli, Command};
use crate::error::Result;
use crate::open::Ctx;

/// Runs the verb the command line names.
pub fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx::from_cli(&cli);
    match cli.command {
        Command::Send(a) => messages::send(&ctx, a),
        Command::Recv(a) => messages::recv(&ctx, &a),
        Command::Listen(a) => messages::listen(&ctx, &a),
        Command::Connect(a) => messages::connect(&ctx, &a),
        Command::Serve(a) => serve::serve(&ctx, &a),
        Command::Gen(a) => traffic::gen(&ctx, &a),
        Command::Verify(a) => traffic::verify(&ctx, &a),
        Command::Bench(a) => bench::bench(&ctx, &a),
        Command::Soak(a) => soak::soak(&ctx, &a),
        Command::Stats(a) => crate::stats::run(&a),
        Command::Info(a) => info::info(&ctx, &a),
        Command::List(a) => list::list(&ctx, &a),
    }
}
