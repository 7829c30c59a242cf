//! The `guardian` binary: parses the command line and hands over to the library.

fn main() -> std::process::ExitCode {
    agent_guardian::cli::main()
}
