//! Progress bars of the stages: one look (`=> ` bar characters, a `{prefix}` label), shown only
//! when the run asks for progress ([`crate::RunOptions::progress`]; indicatif itself draws nothing
//! when stderr is not a terminal).

use std::borrow::Cow;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// A bar of `len` steps drawn on stderr with the indicatif `template`, labelled `prefix` (the
/// template's `{prefix}`); hidden when `show` is false.
pub fn progress_bar(
    show: bool,
    len: u64,
    template: &str,
    prefix: impl Into<Cow<'static, str>>,
) -> ProgressBar {
    let bar = if show {
        ProgressBar::new(len)
    } else {
        ProgressBar::hidden()
    };
    styled(bar, template, prefix)
}

/// A bar like [`progress_bar`], drawn as one line of `multi`; hidden when `multi` is `None`.
pub fn multi_progress_bar(
    multi: Option<&MultiProgress>,
    len: u64,
    template: &str,
    prefix: impl Into<Cow<'static, str>>,
) -> ProgressBar {
    let bar = match multi {
        Some(mp) => mp.add(ProgressBar::new(len)),
        None => ProgressBar::hidden(),
    };
    styled(bar, template, prefix)
}

fn styled(bar: ProgressBar, template: &str, prefix: impl Into<Cow<'static, str>>) -> ProgressBar {
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(prefix);
    bar
}
