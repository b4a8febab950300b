//! Log set-up: text on a terminal or JSON, an `EnvFilter` chosen from
//! RUST_LOG or the config, and a handle that swaps the filter live.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Changes the log filter of a running process.
#[derive(Clone)]
pub struct LogControl {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
    current: std::sync::Arc<std::sync::Mutex<String>>,
}

impl LogControl {
    /// A control that changes nothing (for embedding without logging).
    pub fn detached() -> LogControl {
        LogControl {
            handle: None,
            current: Default::default(),
        }
    }

    /// The filter in force, as text.
    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies `filter`; on a bad filter the old one stays.
    pub fn set(&self, filter: &str) -> Result<(), String> {
        let f = EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
        if let Some(h) = &self.handle {
            h.reload(f).map_err(|e| e.to_string())?;
        }
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = filter.to_string();
        Ok(())
    }
}

/// The filter text at start-up: RUST_LOG, else the config, else `info`.
pub fn initial_filter(config_level: Option<&str>) -> String {
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() && EnvFilter::try_new(&v).is_ok() => v,
        _ => config_level.unwrap_or("info").to_string(),
    }
}

/// Installs the global subscriber; `json` picks JSON lines.
pub fn init(json: bool, filter: &str) -> LogControl {
    let f = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(f);
    let registry = tracing_subscriber::registry().with(layer);
    // Colours only on a terminal; journald and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let fmt = tracing_subscriber::fmt::layer().with_ansi(ansi);
    let installed = if json {
        registry.with(fmt.json()).try_init()
    } else {
        registry.with(fmt).try_init()
    };
    if let Err(e) = installed {
        eprintln!("blockd: logging not set up: {e}");
    }
    LogControl {
        handle: Some(handle),
        current: std::sync::Arc::new(std::sync::Mutex::new(filter.to_string())),
    }
}
