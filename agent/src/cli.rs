//! Command-line conventions shared by every `zgate` subcommand.

/// A clap usage error as one line (its message and what it lists), without
/// the usage block that follows: bad input gets one clear line.
pub fn usage_error_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
        .collect();
    let line = lines.join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_owned()
}
