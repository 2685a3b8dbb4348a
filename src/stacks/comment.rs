//! Values in the user data script: quoted for the shell and for Fn::Sub,
//! and in comment lines also stripped of control characters.

use crate::tasks::shell;

/// A value as the user data script holds it: quoted for the shell, then
/// kept from CloudFormation reading "${" in it.
pub(super) fn user_data_escape(s: &str) -> String {
    shell::quote(s).replace("${", "${!")
}

/// `{{comment v}}`: a value in a comment line, where quoting does not help
/// (a newline would end the comment and run the next line as root): the
/// escaped value with every control character replaced by `?`.
pub(super) fn comment_helper(
    h: &handlebars::Helper,
    _: &handlebars::Handlebars,
    _: &handlebars::Context,
    _: &mut handlebars::RenderContext,
    out: &mut dyn handlebars::Output,
) -> handlebars::HelperResult {
    let v = h.param(0).map(|p| p.value().clone()).unwrap_or_default();
    let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
    let safe: String = user_data_escape(&text)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    out.write(&safe)?;
    Ok(())
}
