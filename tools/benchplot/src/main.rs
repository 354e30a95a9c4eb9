//! `kt-benchplot`: reads the CSV `scripts/bench-peers.sh` writes (and,
//! optionally, its environment sidecar) and writes an SVG bar chart, via a
//! temporary file renamed into place. Owns the command line and file I/O;
//! `csv.rs` parses, `chart.rs` draws.

mod chart;
mod csv;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

/// Draw scripts/bench-peers.sh results as an SVG bar chart (one panel per
/// metric, one bar per transport).
#[derive(Debug, Parser)]
#[command(name = "kt-benchplot", version)]
struct Cli {
    /// The CSV (row,unit,kerntransport,vsock,virtio_serial,better).
    #[arg(value_name = "CSV")]
    input: PathBuf,
    /// The SVG to write.
    #[arg(value_name = "SVG")]
    output: PathBuf,
    /// Environment sidecar (key=value lines), shown under the title.
    #[arg(long, value_name = "FILE")]
    env: Option<PathBuf>,
    /// Chart title.
    #[arg(
        long,
        default_value = "kerntransport, vsock and virtio-serial in one guest"
    )]
    title: String,
}

/// What can go wrong, each keeping its cause.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Csv {
        path: PathBuf,
        source: csv::CsvError,
    },
    #[error(transparent)]
    Draw(#[from] chart::DrawError),
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

/// The environment as note lines: `key: value`, in file order.
fn notes(env: &[(String, String)]) -> Vec<String> {
    env.iter().map(|(k, v)| format!("{k}: {v}")).collect()
}

fn run(cli: &Cli) -> Result<(), Error> {
    let rows = csv::parse(&read(&cli.input)?).map_err(|source| Error::Csv {
        path: cli.input.clone(),
        source,
    })?;
    let env = match &cli.env {
        Some(p) => csv::parse_env(&read(p)?).map_err(|source| Error::Csv {
            path: p.clone(),
            source,
        })?,
        None => Vec::new(),
    };
    let svg = chart::svg(&rows, &cli.title, &notes(&env))?;
    let mut tmp = cli.output.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    std::fs::write(&tmp, svg).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &cli.output).map_err(io(&cli.output))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kt-benchplot: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tempdir(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("kt-benchplot-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    #[test]
    fn writes_the_svg_for_a_sample_csv() {
        let t = tempdir("ok");
        let input = t.0.join("peers.csv");
        let env = t.0.join("peers.env");
        let output = t.0.join("peers.svg");
        std::fs::write(
            &input,
            "row,unit,kerntransport,vsock,virtio_serial,better\n\
             \"latency p50, 64 B\",us,151.6,193.2,136.8,lower\n\
             \"message rate, 16 B msgs\",msgs/s,61785,n/a,58803,higher\n",
        )
        .unwrap();
        std::fs::write(&env, "date=2025-01-02\ngit_commit=abc1234\n").unwrap();
        let cli = Cli::parse_from([
            "kt-benchplot",
            input.to_str().unwrap(),
            output.to_str().unwrap(),
            "--env",
            env.to_str().unwrap(),
        ]);
        run(&cli).unwrap();
        let svg = std::fs::read_to_string(&output).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for want in [
            "date: 2025-01-02",
            "git_commit: abc1234",
            "61785 msgs/s",
            "n/a",
        ] {
            assert!(svg.contains(want), "SVG lacks {want:?}");
        }
        assert!(!t.0.join("peers.svg.tmp").exists());
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let t = tempdir("bad");
        let input = t.0.join("bad.csv");
        std::fs::write(
            &input,
            "row,unit,kerntransport,vsock,virtio_serial,better\nx,us,1\n",
        )
        .unwrap();
        let output = t.0.join("out.svg");
        let cli = Cli::parse_from([
            "kt-benchplot",
            input.to_str().unwrap(),
            output.to_str().unwrap(),
        ]);
        let e = run(&cli).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("{}: line 2: 3 fields, expected 6", input.display())
        );
        assert!(!output.exists());
        let cli = Cli::parse_from(["kt-benchplot", "/nonexistent.csv", output.to_str().unwrap()]);
        assert!(run(&cli)
            .unwrap_err()
            .to_string()
            .starts_with("/nonexistent.csv: "));
    }
}
