//! Log set-up shared by both binaries: `env_logger`, info by default, `RUST_LOG` or `-v`/`-q`.

use std::io::Write;

use log::LevelFilter;

/// Starts logging to stderr. `verbosity` counts `-v` minus `-q`; when it is zero `RUST_LOG`
/// decides, and without `RUST_LOG` the level is info.
pub fn init(verbosity: i32) {
    let mut b = env_logger::Builder::new();
    b.filter_level(LevelFilter::Info);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    if verbosity != 0 {
        b.filter_level(match verbosity {
            i32::MIN..=-2 => LevelFilter::Error,
            -1 => LevelFilter::Warn,
            1 => LevelFilter::Debug,
            _ => LevelFilter::Trace,
        });
    }
    b.format(|buf, record| {
        writeln!(
            buf,
            "{} {:<5} {}",
            buf.timestamp_millis(),
            record.level(),
            record.args()
        )
    });
    let _ = b.try_init();
}
