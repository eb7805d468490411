//! Writing to stdout the way a pipeline expects: `tetherctl ... | head` ends quietly when the
//! reader goes away, instead of the panic `println!` gives on a closed pipe.

use clap::ValueEnum;
use std::io::Write;
use tether_hub::util::now_ms;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Table,
    /// The table with more columns (where a command has them).
    Wide,
    Json,
    Yaml,
}

/// Write to stdout. A closed pipe ends the process with success (the reader has what it
/// wanted); any other write error ends it with a message and failure.
pub(crate) fn emit(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("tetherctl: writing to stdout: {e}");
        std::process::exit(1);
    }
}

macro_rules! out {
    ($($t:tt)*) => { $crate::out::emit(format_args!($($t)*)) };
}

macro_rules! outln {
    () => { $crate::out::emit(format_args!("\n")) };
    ($($t:tt)*) => { $crate::out::emit(format_args!("{}\n", format_args!($($t)*))) };
}

pub(crate) use {out, outln};

/// `value` as JSON or YAML, or `table()` for the table formats.
pub(crate) fn print<T: serde::Serialize>(
    output: Output,
    value: &T,
    table: impl FnOnce(),
) -> anyhow::Result<()> {
    match output {
        Output::Table | Output::Wide => table(),
        Output::Json => outln!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => out!("{}", serde_yaml_ng::to_string(value)?),
    }
    Ok(())
}

pub(crate) fn ago(ms: Option<u64>) -> String {
    match ms {
        None => "never".into(),
        Some(t) => {
            let secs = now_ms().saturating_sub(t) / 1000;
            match secs {
                0..=119 => format!("{secs}s ago"),
                120..=7199 => format!("{}m ago", secs / 60),
                _ => format!("{}h ago", secs / 3600),
            }
        }
    }
}
