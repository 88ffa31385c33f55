//! `.txt` / `.csv` coordinates: `x y` or `x,y` per row, `#` comments, blank lines, optional
//! `x,y` header line. Rows may carry more columns (same count on every row); only the first two
//! are used.

use std::path::Path;

use crate::error::CoordError;

/// Parses one number token into an integer; accepts integral floats (`100.0`, `1e3`).
pub(crate) fn parse_int_token(tok: &str) -> Result<i64, String> {
    if let Ok(v) = tok.parse::<i64>() {
        return Ok(v);
    }
    match tok.parse::<f64>() {
        Ok(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        Ok(f) => Err(format!("value '{tok}' ({f}) is not an integer")),
        Err(_) => Err(format!("'{tok}' is not a number")),
    }
}

fn tokens(line: &str) -> Vec<&str> {
    line.split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .map(|t| t.trim_matches(|c| c == '"' || c == '\''))
        .filter(|t| !t.is_empty())
        .collect()
}

/// Parses text coordinates into (x, y).
pub(crate) fn parse_text(path: &Path, text: &str) -> Result<(Vec<i64>, Vec<i64>), CoordError> {
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    let mut ncols: Option<usize> = None;
    let mut seen_data_or_header = false;
    for (lineno, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let toks = tokens(line);
        if toks.is_empty() {
            continue;
        }
        let is_header = !seen_data_or_header
            && toks.len() >= 2
            && toks[0].eq_ignore_ascii_case("x")
            && toks[1].eq_ignore_ascii_case("y");
        seen_data_or_header = true;
        if is_header {
            ncols = Some(toks.len());
            continue;
        }
        if toks.len() < 2 {
            return Err(CoordError::format(
                path,
                format!(
                    "line {}: expected at least 2 values (x y), found {}",
                    lineno + 1,
                    toks.len()
                ),
            ));
        }
        match ncols {
            Some(n) if n != toks.len() => {
                return Err(CoordError::format(
                    path,
                    format!(
                        "line {}: found {} values but earlier rows have {n}",
                        lineno + 1,
                        toks.len()
                    ),
                ));
            }
            _ => ncols = Some(toks.len()),
        }
        let x = parse_int_token(toks[0])
            .map_err(|e| CoordError::format(path, format!("line {}: {e}", lineno + 1)))?;
        let y = parse_int_token(toks[1])
            .map_err(|e| CoordError::format(path, format!("line {}: {e}", lineno + 1)))?;
        xs.push(x);
        ys.push(y);
    }
    Ok((xs, ys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_variants() {
        let p = Path::new("t.txt");
        let (x, y) = parse_text(p, "# c\n\nx,y\n1,2\n3 , 4 # tail\n5.0 6\n").unwrap();
        assert_eq!(x, vec![1, 3, 5]);
        assert_eq!(y, vec![2, 4, 6]);
        assert!(parse_text(p, "1 2\n3\n").is_err());
        assert!(parse_text(p, "1 2\n3 4 5\n").is_err());
        assert!(parse_text(p, "1.5 2\n").is_err());
        assert!(parse_text(p, "a b\n").is_err());
        assert!(parse_text(p, "1 2\nx y\n").is_err());
        let (x, _) = parse_text(p, "").unwrap();
        assert!(x.is_empty());
    }
}
